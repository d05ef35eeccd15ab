// transformers' BertForSequenceClassification and BertForMaskedLM
// (models/bert/modeling_bert.py: BertForSequenceClassification,
// BertOnlyMLMHead / BertLMPredictionHead / BertPredictionHeadTransform) on
// qkv's BertModel.
#include "qkv/classifier.h"

#include <filesystem>
#include <set>
#include <utility>

#include "models/hf_directory.h"
#include "qkv/error.h"
#include "qkv/ops.h"

namespace qkv::nn {

using autograd::Variable;
using json = nlohmann::json;

namespace {

// Logits as the heads return them: f32 (bf16 under autocast converted), or
// f64 for a model converted to f64 (gradcheck).
autograd::Variable logits_result(const autograd::Variable& logits) {
  return logits.dtype() == DType::f64 ? logits : autograd::to(logits, DType::f32);
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// transformers' _init_weights for a Linear: N(0, initializer_range), bias 0.
void init_linear(Linear& linear, double std, Generator& generator) {
  Tensor weight = linear.weight().value();  // shares the parameter's storage
  weight.copy_(scale(randn(weight.shape(), generator), std));
  if (linear.bias().defined()) {
    Tensor bias = linear.bias().value();
    bias.copy_(Tensor::zeros(bias.shape()));
  }
}

// config.json of `dir` and whether its "architectures" names `architecture`.
json read_config(const std::string& dir, const char* what) {
  std::error_code ec;
  QKV_CHECK(std::filesystem::is_directory(dir, ec), what, ": '", dir, "' is not a directory");
  return models::detail::read_json(models::detail::join_path(dir, "config.json"), what);
}

void check_architecture(const json& config, const std::string& dir,
                        const std::set<std::string>& accepted, const char* what) {
  const auto it = config.find("architectures");
  std::string names;
  if (it != config.end() && it->is_array())
    for (const json& a : *it) {
      if (a.is_string() && accepted.count(a.get<std::string>())) return;
      names += (names.empty() ? "" : ", ") + a.dump();
    }
  std::string wanted;
  for (const auto& a : accepted) wanted += (wanted.empty() ? "" : " or ") + a;
  throw Error(qkv::detail::str(what, ": '", models::detail::join_path(dir, "config.json"),
                               "' holds architecture ", names.empty() ? "(none)" : names,
                               ", not ", wanted));
}

// hidden_act -> the activation of the MLM head's transform (as BertModel's).
Variable activate(const std::string& act, const Variable& x) {
  if (act == "gelu") return autograd::gelu(x);
  if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast")
    return autograd::gelu(x, GeluApproximation::tanh);
  if (act == "relu") return autograd::relu(x);
  return autograd::silu(x);  // "silu" / "swish"; BertConfig::validate allows no other
}

// The tensors of `weights` named `prefix` + name, without the prefix;
// qkv::Error naming the directory when one of `names` is missing.
std::map<std::string, Tensor> head_weights(const std::map<std::string, Tensor>& weights,
                                           const std::string& prefix,
                                           const std::vector<std::string>& names,
                                           const std::string& dir, const char* what) {
  std::map<std::string, Tensor> out;
  for (const auto& name : names) {
    const auto it = weights.find(prefix + name);
    QKV_CHECK(it != weights.end(), what, ": the weights in '", dir, "' have no \"", prefix, name,
              "\"");
    out.emplace(name, it->second.to(DType::f32));
  }
  return out;
}

}  // namespace

// ---- BertForSequenceClassification ----------------------------------------------

BertForSequenceClassification::BertForSequenceClassification(std::shared_ptr<BertModel> bert,
                                                             std::vector<std::string> labels,
                                                             Generator& generator,
                                                             std::optional<double> classifier_dropout)
    : bert_(std::move(bert)), labels_(std::move(labels)) {
  QKV_CHECK(bert_ != nullptr, "BertForSequenceClassification: no encoder given");
  QKV_CHECK(bert_->config().add_pooling_layer,
            "BertForSequenceClassification: the encoder has no pooler (the head reads the pooled "
            "first token)");
  QKV_CHECK(labels_.size() >= 2, "BertForSequenceClassification: needs at least 2 labels, got ",
            labels_.size());
  classifier_dropout_ = classifier_dropout.value_or(bert_->config().hidden_dropout_prob);
  QKV_CHECK(classifier_dropout_ >= 0 && classifier_dropout_ < 1,
            "BertForSequenceClassification: classifier_dropout must be in [0, 1), got ",
            classifier_dropout_);
  register_module("bert", bert_);
  dropout_ = register_module(
      "dropout", std::make_shared<Dropout>(DropoutConfig{classifier_dropout_}, generator));
  const int64_t h = bert_->config().hidden_size;
  classifier_ = register_module(
      "classifier",
      std::make_shared<Linear>(LinearConfig{.in_features = h, .out_features = num_labels()},
                               generator));
  init_linear(*classifier_, bert_->config().initializer_range, generator);
}

std::shared_ptr<BertForSequenceClassification> BertForSequenceClassification::from_encoder(
    const std::string& dir, std::vector<std::string> labels, Generator& generator) {
  BertConfig config = load_bert_config(dir);
  std::shared_ptr<BertModel> bert;
  if (config.add_pooling_layer) {
    bert = BertModel::from_pretrained(dir);
  } else {
    // A pooler of its own, initialised; everything else from the directory.
    config.add_pooling_layer = true;
    bert = std::make_shared<BertModel>(config, generator);
    const auto result = bert->load_state_dict(load_bert_weights(dir), /*strict=*/false);
    std::string problems;
    for (const auto& name : result.missing)
      if (!starts_with(name, "pooler.")) problems += " missing \"" + name + "\";";
    for (const auto& name : result.unexpected) problems += " unexpected \"" + name + "\";";
    QKV_CHECK(problems.empty(), "BertForSequenceClassification.from_encoder: the weights in '",
              dir, "' do not fit its config.json:", problems);
  }
  return std::make_shared<BertForSequenceClassification>(std::move(bert), std::move(labels),
                                                         generator);
}

std::shared_ptr<BertForSequenceClassification> BertForSequenceClassification::from_pretrained(
    const std::string& dir) {
  constexpr const char* what = "BertForSequenceClassification.from_pretrained";
  const json config = read_config(dir, what);
  check_architecture(config, dir, {"BertForSequenceClassification"}, what);
  const std::string config_path = models::detail::join_path(dir, "config.json");
  std::vector<std::string> labels;
  if (const auto it = config.find("id2label"); it != config.end() && !it->is_null()) {
    QKV_CHECK(it->is_object() && !it->empty(), what, ": '", config_path,
              "': \"id2label\" must be an object of label names, got ", it->dump());
    labels.resize(it->size());
    for (const auto& [key, name] : it->items()) {
      size_t id = labels.size();
      try {
        size_t used = 0;
        id = std::stoul(key, &used);
        if (used != key.size()) id = labels.size();
      } catch (const std::exception&) {
      }
      QKV_CHECK(id < labels.size() && name.is_string() && labels[id].empty(), what, ": '",
                config_path, "': \"id2label\" must map the ids 0 .. ", labels.size() - 1,
                " to names, got \"", key, "\": ", name.dump());
      labels[id] = name.get<std::string>();
    }
  } else {
    int64_t n = 2;
    if (const auto it = config.find("num_labels"); it != config.end()) {
      QKV_CHECK(it->is_number_integer(), what, ": '", config_path,
                "': \"num_labels\" must be an integer, got ", it->dump());
      n = it->get<int64_t>();
    }
    for (int64_t i = 0; i < n; ++i) labels.push_back("LABEL_" + std::to_string(i));
  }
  std::optional<double> classifier_dropout;
  if (const auto it = config.find("classifier_dropout"); it != config.end() && !it->is_null()) {
    QKV_CHECK(it->is_number(), what, ": '", config_path,
              "': \"classifier_dropout\" must be a number or null, got ", it->dump());
    classifier_dropout = it->get<double>();
  }

  std::shared_ptr<BertModel> bert = BertModel::from_pretrained(dir);
  QKV_CHECK(bert->config().add_pooling_layer, what, ": the weights in '", dir,
            "' have no pooler (\"bert.pooler.dense.*\")");
  Generator generator(0);  // the head's values are loaded below
  auto model = std::make_shared<BertForSequenceClassification>(bert, std::move(labels), generator,
                                                               classifier_dropout);
  const auto weights = load_pretrained_weights(dir);
  const auto head = head_weights(weights, "classifier.", {"weight", "bias"}, dir, what);
  try {
    model->classifier_->load_state_dict(head);
  } catch (const Error& e) {
    throw Error(qkv::detail::str(what, ": the classifier in '", dir, "' does not fit its ",
                                 model->num_labels(), " labels: ", e.what()));
  }
  model->eval();
  return model;
}

void BertForSequenceClassification::save_pretrained(const std::string& dir) const {
  json config = json::parse(bert_->config().to_json());
  config["architectures"] = {"BertForSequenceClassification"};
  json id2label = json::object(), label2id = json::object();
  for (size_t i = 0; i < labels_.size(); ++i) {
    id2label[std::to_string(i)] = labels_[i];
    label2id[labels_[i]] = i;
  }
  config["id2label"] = id2label;
  config["label2id"] = label2id;
  config["classifier_dropout"] = classifier_dropout_;
  std::map<std::string, Tensor> weights;
  for (const auto& [name, t] : state_dict()) weights.emplace(name, t.contiguous());
  models::detail::save_directory(dir, config, weights,
                                 "BertForSequenceClassification.save_pretrained");
}

Variable BertForSequenceClassification::forward(const Tensor& input_ids,
                                                const Tensor& attention_mask,
                                                const Tensor& token_type_ids) {
  const BertOutput out = bert_->forward(input_ids, attention_mask, token_type_ids);
  return logits_result(classifier_->forward(dropout_->forward(out.pooler_output)));
}

// ---- BertForMaskedLM ---------------------------------------------------------------

BertForMaskedLM::BertForMaskedLM(std::shared_ptr<BertModel> bert, Generator& generator,
                                 bool initialise)
    : bert_(std::move(bert)) {
  const BertConfig& c = bert_->config();
  const int64_t h = c.hidden_size;
  register_module("bert", bert_);
  transform_ = register_module(
      "cls.predictions.transform.dense",
      std::make_shared<Linear>(LinearConfig{.in_features = h, .out_features = h}, generator));
  transform_norm_ = register_module(
      "cls.predictions.transform.LayerNorm",
      std::make_shared<LayerNorm>(LayerNormConfig{.dim = h, .eps = c.layer_norm_eps}, generator));
  bias_ = register_parameter("cls.predictions.bias", Tensor::zeros({c.vocab_size}));
  if (initialise) init_linear(*transform_, c.initializer_range, generator);
}

BertForMaskedLM::BertForMaskedLM(const BertConfig& config, Generator& generator)
    : BertForMaskedLM(
          [&] {
            BertConfig c = config;
            c.add_pooling_layer = false;  // transformers' BertForMaskedLM has none
            return std::make_shared<BertModel>(c, generator);
          }(),
          generator, /*initialise=*/true) {}

std::shared_ptr<BertForMaskedLM> BertForMaskedLM::from_pretrained(const std::string& dir) {
  constexpr const char* what = "BertForMaskedLM.from_pretrained";
  const json config = read_config(dir, what);
  check_architecture(config, dir, {"BertForMaskedLM", "BertForPreTraining"}, what);
  Generator generator(0);  // the head's values are loaded below
  std::shared_ptr<BertForMaskedLM> model(
      new BertForMaskedLM(BertModel::from_pretrained(dir), generator, /*initialise=*/false));
  const auto weights = load_pretrained_weights(dir);
  const char* transform = "cls.predictions.transform.";
  model->transform_->load_state_dict(
      head_weights(weights, std::string(transform) + "dense.", {"weight", "bias"}, dir, what));
  model->transform_norm_->load_state_dict(
      head_weights(weights, std::string(transform) + "LayerNorm.", {"weight", "bias"}, dir, what));
  const Tensor bias = head_weights(weights, "cls.predictions.", {"bias"}, dir, what).at("bias");
  QKV_CHECK(bias.shape() == model->bias_.value().shape(), what, ": \"cls.predictions.bias\" in '",
            dir, "' has shape ", shape_string(bias.shape()), "; the vocabulary is ",
            model->bias_.value().size(0));
  Tensor stored = model->bias_.value();
  stored.copy_(bias);
  model->eval();
  return model;
}

void BertForMaskedLM::save_pretrained(const std::string& dir) const {
  json config = json::parse(bert_->config().to_json());
  config["architectures"] = {"BertForMaskedLM"};
  std::map<std::string, Tensor> weights;
  for (const auto& [name, t] : state_dict()) weights.emplace(name, t.contiguous());
  models::detail::save_directory(dir, config, weights, "BertForMaskedLM.save_pretrained");
}

Variable BertForMaskedLM::forward(const Tensor& input_ids, const Tensor& attention_mask,
                                  const Tensor& positions) {
  QKV_CHECK(positions.defined() && positions.dim() == 1 &&
                (positions.dtype() == DType::i32 || positions.dtype() == DType::i64),
            "BertForMaskedLM.forward: positions must be i32 / i64 [N]");
  BertForwardOptions options;
  options.pooler = false;
  const BertOutput out = bert_->forward(input_ids, attention_mask, Tensor(), options);
  const Variable& hidden = out.last_hidden_state;  // [B, L, H]
  const int64_t rows = hidden.size(0) * hidden.size(1), h = hidden.size(2);
  const Tensor p = positions.to(DType::i64).contiguous();
  for (int64_t i = 0; i < p.numel(); ++i)
    QKV_CHECK(p.data<int64_t>()[i] >= 0 && p.data<int64_t>()[i] < rows,
              "BertForMaskedLM.forward: position ", p.data<int64_t>()[i], " is outside [0, ",
              rows, ")");
  // The rows at the positions (a gather whose gradient scatters back).
  const Variable picked = autograd::embedding(autograd::reshape(hidden, {rows, h}), p);
  const Variable t = transform_norm_->forward(
      activate(bert_->config().hidden_act, transform_->forward(picked)));
  return logits_result(autograd::linear(t, bert_->word_embeddings(), bias_));
}

}  // namespace qkv::nn
