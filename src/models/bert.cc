// BERT encoders as transformers' models/bert/modeling_bert.py computes them
// (BertEmbeddings, BertSelfAttention, BertSelfOutput, BertIntermediate,
// BertOutput, BertPooler), on qkv autograd, with the fused attention and a
// key-padding mask in place of transformers' [B, 1, L, L] additive mask.
#include "qkv/bert.h"

#include <cmath>
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

constexpr const char* kFromPretrained = "BertModel.from_pretrained";

// The BERT encoders this model reproduces (config.json's "architectures").
// BertLMHeadModel and BertGeneration are decoders.
const std::set<std::string>& bert_architectures() {
  static const std::set<std::string> names = {"BertModel",
                                              "BertForMaskedLM",
                                              "BertForPreTraining",
                                              "BertForSequenceClassification",
                                              "BertForTokenClassification",
                                              "BertForQuestionAnswering",
                                              "BertForMultipleChoice",
                                              "BertForNextSentencePrediction"};
  return names;
}

// hidden_act names (transformers' ACT2FN) and the op each is.
enum class Act { gelu, gelu_tanh, relu, silu };

std::optional<Act> activation_of(const std::string& name) {
  if (name == "gelu") return Act::gelu;
  // NewGELUActivation, GELUTanh and FastGELUActivation are all Hendrycks &
  // Gimpel's tanh approximation.
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return Act::gelu_tanh;
  if (name == "relu") return Act::relu;
  if (name == "silu" || name == "swish") return Act::silu;
  return std::nullopt;
}

Variable activate(Act a, const Variable& x) {
  switch (a) {
    case Act::gelu: return autograd::gelu(x);
    case Act::gelu_tanh: return autograd::gelu(x, GeluApproximation::tanh);
    case Act::relu: return autograd::relu(x);
    case Act::silu: return autograd::silu(x);
  }
  return x;
}

// tanh with d tanh(x) / dx = 1 - tanh(x)^2 (the pooler's activation; [B, H]),
// in f32, or in f64 (T = double) for an f64 x.
template <class T>
Variable tanh_as(const Variable& x) {
  constexpr DType kType = dtype_of<T>::value;
  const Tensor in = x.value().to(kType).contiguous();
  Tensor y = Tensor::empty(in.shape(), kType);
  const T* src = in.data<T>();
  T* dst = y.data<T>();
  for (int64_t i = 0; i < in.numel(); ++i) dst[i] = std::tanh(src[i]);
  return autograd::record("tanh", y, {x}, [y](const Tensor& g) {
    const Tensor gc = g.to(kType).contiguous();
    Tensor dx = Tensor::empty(gc.shape(), kType);
    const T *gp = gc.data<T>(), *yp = y.data<T>();
    T* out = dx.data<T>();
    for (int64_t i = 0; i < gc.numel(); ++i) out[i] = gp[i] * (T(1) - yp[i] * yp[i]);
    return std::vector<Tensor>{dx};
  });
}

Variable tanh(const Variable& x) {
  return x.dtype() == DType::f64 ? tanh_as<double>(x) : tanh_as<float>(x);
}

// attention_mask [B, L] (nonzero = token) -> the fused kernel's key-padding
// mask (bool, true = padding), or undefined when nothing is padding.
Tensor key_padding_mask(const Tensor& attention_mask) {
  const Tensor m = attention_mask.to(DType::f32).contiguous();
  Tensor padding = Tensor::empty(m.shape(), DType::boolean);
  const float* src = m.data<float>();
  bool* dst = padding.data<bool>();
  bool any = false;
  for (int64_t i = 0; i < m.numel(); ++i) {
    dst[i] = src[i] == 0.0f;
    any = any || dst[i];
  }
  return any ? padding : Tensor();
}

// A [B, L] companion of input_ids: same shape, else qkv::Error naming it.
void check_like_ids(const char* argument, const Tensor& t, const Tensor& ids) {
  if (!t.defined()) return;
  QKV_CHECK(t.shape() == ids.shape(), "BertModel.forward: ", argument, " has shape ",
            shape_string(t.shape()), "; expected input_ids' shape ", shape_string(ids.shape()));
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// ---- config.json fields --------------------------------------------------------

struct ConfigReader {
  const json& j;
  const std::string& source;

  const json* find(const char* key) const {
    const auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }
  void integer(const char* key, int64_t& out) const {
    if (const json* v = find(key)) {
      QKV_CHECK(v->is_number_integer(), source, ": \"", key, "\" must be an integer, got ",
                v->dump());
      out = v->get<int64_t>();
    }
  }
  void number(const char* key, double& out) const {
    if (const json* v = find(key)) {
      QKV_CHECK(v->is_number(), source, ": \"", key, "\" must be a number, got ", v->dump());
      out = v->get<double>();
    }
  }
  void string(const char* key, std::string& out) const {
    if (const json* v = find(key)) {
      QKV_CHECK(v->is_string(), source, ": \"", key, "\" must be a string, got ", v->dump());
      out = v->get<std::string>();
    }
  }
  bool flag(const char* key) const {
    const json* v = find(key);
    if (!v) return false;
    QKV_CHECK(v->is_boolean(), source, ": \"", key, "\" must be true or false, got ", v->dump());
    return v->get<bool>();
  }
};

// ---- initialisation ------------------------------------------------------------

// transformers' _init_weights for BERT: Linear and Embedding weights
// N(0, initializer_range), biases 0, LayerNorm 1 / 0, the padding row 0.
void init_bert_weights(Module& model, const BertConfig& c, Generator& generator) {
  for (const auto& [name, p] : model.named_parameters()) {
    Tensor value = p.value();
    const bool norm = name.find("LayerNorm.") != std::string::npos;
    const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (norm && !bias)
      value.copy_(Tensor::ones(value.shape()));
    else if (bias)
      value.copy_(Tensor::zeros(value.shape()));
    else
      value.copy_(scale(randn(value.shape(), generator), c.initializer_range));
  }
}

}  // namespace

// ---- BertConfig ----------------------------------------------------------------

BertConfig BertConfig::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(qkv::detail::str(source, ": not valid JSON: ", e.what()));
  }
  QKV_CHECK(j.is_object(), source, ": expected a JSON object, got ", j.type_name());
  const ConfigReader r{j, source};

  std::string model_type = "bert";
  r.string("model_type", model_type);
  QKV_CHECK(model_type == "bert", source, ": model_type \"", model_type,
            "\" is not supported (qkv's BERT loader reads model_type \"bert\": BERT, MiniLM)");
  if (const json* arch = r.find("architectures"); arch && !arch->is_null()) {
    QKV_CHECK(arch->is_array(), source, ": \"architectures\" must be a list, got ", arch->dump());
    for (const json& a : *arch) {
      QKV_CHECK(a.is_string(), source, ": \"architectures\" holds ", a.dump(), ", not a name");
      const std::string name = a.get<std::string>();
      QKV_CHECK(bert_architectures().count(name), source, ": architecture \"", name,
                "\" is not supported (qkv loads BERT encoders: BertModel and the BertFor* "
                "heads' encoders)");
    }
  }
  QKV_CHECK(!r.flag("is_decoder"), source,
            ": \"is_decoder\" is true; qkv's BertModel is a bidirectional encoder only");
  QKV_CHECK(!r.flag("add_cross_attention"), source,
            ": \"add_cross_attention\" is true; cross-attention BERT layers are not supported");
  std::string positions = "absolute";
  r.string("position_embedding_type", positions);
  QKV_CHECK(positions == "absolute", source, ": position_embedding_type \"", positions,
            "\" is not supported (only \"absolute\")");

  BertConfig c;
  r.integer("vocab_size", c.vocab_size);
  r.integer("hidden_size", c.hidden_size);
  r.integer("num_hidden_layers", c.num_hidden_layers);
  r.integer("num_attention_heads", c.num_attention_heads);
  r.integer("intermediate_size", c.intermediate_size);
  r.string("hidden_act", c.hidden_act);
  r.integer("max_position_embeddings", c.max_position_embeddings);
  r.integer("type_vocab_size", c.type_vocab_size);
  r.number("layer_norm_eps", c.layer_norm_eps);
  r.number("hidden_dropout_prob", c.hidden_dropout_prob);
  r.number("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  r.number("initializer_range", c.initializer_range);
  if (const json* pad = r.find("pad_token_id")) {
    QKV_CHECK(pad->is_null() || pad->is_number_integer(), source,
              ": \"pad_token_id\" must be an integer or null, got ", pad->dump());
    c.pad_token_id = pad->is_null() ? std::nullopt : std::optional<int64_t>(pad->get<int64_t>());
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(qkv::detail::str(source, ": ", e.what()));
  }
  return c;
}

std::string BertConfig::to_json() const {
  json j = {{"architectures", {"BertModel"}},
            {"model_type", "bert"},
            {"vocab_size", vocab_size},
            {"hidden_size", hidden_size},
            {"num_hidden_layers", num_hidden_layers},
            {"num_attention_heads", num_attention_heads},
            {"intermediate_size", intermediate_size},
            {"hidden_act", hidden_act},
            {"max_position_embeddings", max_position_embeddings},
            {"type_vocab_size", type_vocab_size},
            {"layer_norm_eps", layer_norm_eps},
            {"hidden_dropout_prob", hidden_dropout_prob},
            {"attention_probs_dropout_prob", attention_probs_dropout_prob},
            {"initializer_range", initializer_range},
            {"position_embedding_type", "absolute"}};
  j["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  return j.dump(2);
}

void BertConfig::validate() const {
  auto positive = [](const char* name, int64_t v) {
    QKV_CHECK(v > 0, "BertConfig: ", name, " must be positive, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("intermediate_size", intermediate_size);
  positive("max_position_embeddings", max_position_embeddings);
  positive("type_vocab_size", type_vocab_size);
  // A hostile or mistyped config.json is refused before anything is allocated:
  // no size past 2^24, no model past 2^34 parameters (64 GiB in f32).
  constexpr int64_t kSizeLimit = int64_t{1} << 24;
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"intermediate_size", intermediate_size},
      {"max_position_embeddings", max_position_embeddings},
      {"type_vocab_size", type_vocab_size}};
  for (const auto& [name, value] : sizes)
    QKV_CHECK(value <= kSizeLimit, "BertConfig: ", name, " ", value, " is more than ",
              kSizeLimit);
  const double h = static_cast<double>(hidden_size), ff = static_cast<double>(intermediate_size);
  const double parameters =
      h * static_cast<double>(vocab_size + max_position_embeddings + type_vocab_size) +
      static_cast<double>(num_hidden_layers) * (4 * h * h + 2 * h * ff) + h * h;
  QKV_CHECK(parameters <= std::ldexp(1.0, 34), "BertConfig: about ", parameters,
            " parameters (", parameters * 4 / std::ldexp(1.0, 30),
            " GiB in f32) are more than qkv allocates for one model (2^34)");
  QKV_CHECK(hidden_size % num_attention_heads == 0, "BertConfig: hidden_size ", hidden_size,
            " is not a multiple of num_attention_heads ", num_attention_heads);
  QKV_CHECK(activation_of(hidden_act).has_value(), "BertConfig: hidden_act \"", hidden_act,
            "\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, "
            "swish)");
  QKV_CHECK(layer_norm_eps > 0, "BertConfig: layer_norm_eps must be positive, got ",
            layer_norm_eps);
  QKV_CHECK(hidden_dropout_prob >= 0 && hidden_dropout_prob < 1,
            "BertConfig: hidden_dropout_prob must be in [0, 1), got ", hidden_dropout_prob);
  QKV_CHECK(attention_probs_dropout_prob >= 0 && attention_probs_dropout_prob < 1,
            "BertConfig: attention_probs_dropout_prob must be in [0, 1), got ",
            attention_probs_dropout_prob);
  QKV_CHECK(initializer_range >= 0, "BertConfig: initializer_range must be >= 0, got ",
            initializer_range);
  if (pad_token_id)
    QKV_CHECK(*pad_token_id >= 0 && *pad_token_id < vocab_size, "BertConfig: pad_token_id ",
              *pad_token_id, " is outside the vocabulary [0, ", vocab_size, ")");
}

// ---- parameters and one encoder layer ---------------------------------------------

class BertModel::Layer : public Module {
 public:
  Layer(const BertConfig& c, Generator& generator)
      : act_(*activation_of(c.hidden_act)),
        attention_dropout_p_(c.attention_probs_dropout_prob),
        attention_generator_(generator.next_u64()) {
    const int64_t h = c.hidden_size, ff = c.intermediate_size;
    auto linear = [&](const char* name, int64_t in, int64_t out) {
      return register_module(name, std::make_shared<Linear>(LinearConfig{in, out}));
    };
    auto norm = [&](const char* name) {
      return register_module(
          name, std::make_shared<LayerNorm>(LayerNormConfig{.dim = h, .eps = c.layer_norm_eps},
                                            generator));
    };
    auto dropout = [&](const char* name, double p) {
      return register_module(name, std::make_shared<Dropout>(DropoutConfig{p}, generator));
    };
    // BertAttention: self.{query,key,value} and output.dense; its LayerNorm
    // and dropout are the layer's (registered beside it under its names).
    attention_ = register_module(
        "attention", std::make_shared<Attention>(
                         AttentionConfig{.embed_dim = h,
                                         .num_heads = c.num_attention_heads,
                                         .dropout = c.attention_probs_dropout_prob,
                                         .batch_first = true,
                                         .names = AttentionNames::bert(),
                                         .init = AttentionInit::none},
                         generator));
    attention_norm_ = norm("attention.output.LayerNorm");
    attention_dropout_ = dropout("attention.output.dropout", c.hidden_dropout_prob);
    intermediate_ = linear("intermediate.dense", h, ff);
    output_dense_ = linear("output.dense", ff, h);
    output_norm_ = norm("output.LayerNorm");
    output_dropout_ = dropout("output.dropout", c.hidden_dropout_prob);
  }

  // x [B, L, H]; padding [B, L] bool (true = padding) or undefined. With
  // `weights`, the attention weights [B, heads, L, L] are written there.
  Variable forward(const Variable& x, const Tensor& padding, Tensor* weights) {
    AttentionCall call{.masks = {.key_padding_mask = padding}, .weights = weights};
    if (training() && attention_dropout_p_ > 0)
      call.dropout_seed = attention_generator_.next_u64();
    // BertSelfOutput, BertIntermediate, BertOutput: LN(dropout(dense(y)) + residual).
    const Variable a = attention_norm_->forward(
        autograd::add(attention_dropout_->forward(attention_->forward(x, call)), x));
    const Variable inner = activate(act_, intermediate_->forward(a));
    return output_norm_->forward(
        autograd::add(output_dropout_->forward(output_dense_->forward(inner)), a));
  }

  const char* type_name() const override { return "BertLayer"; }

 private:
  Act act_;
  double attention_dropout_p_;
  Generator attention_generator_;
  std::shared_ptr<Attention> attention_;
  std::shared_ptr<Linear> intermediate_, output_dense_;
  std::shared_ptr<LayerNorm> attention_norm_, output_norm_;
  std::shared_ptr<Dropout> attention_dropout_, output_dropout_;
};

// ---- BertModel -----------------------------------------------------------------

BertModel::BertModel(const BertConfig& config, Generator& generator)
    : BertModel(config, generator, /*initialise=*/true) {}

BertModel::BertModel(const BertConfig& config, Generator& generator, bool initialise)
    : config_(config) {
  config_.validate();
  const int64_t h = config_.hidden_size;
  auto table = [&](const char* name, int64_t rows, std::optional<int64_t> padding_idx) {
    return register_module(name,
                           std::make_shared<Embedding>(EmbeddingConfig{rows, h, padding_idx}));
  };
  word_embeddings_ = table("embeddings.word_embeddings", config_.vocab_size, config_.pad_token_id);
  position_embeddings_ =
      table("embeddings.position_embeddings", config_.max_position_embeddings, std::nullopt);
  token_type_embeddings_ =
      table("embeddings.token_type_embeddings", config_.type_vocab_size, std::nullopt);
  embeddings_norm_ =
      register_module("embeddings.LayerNorm",
                      std::make_shared<LayerNorm>(
                          LayerNormConfig{.dim = h, .eps = config_.layer_norm_eps}, generator));
  embeddings_dropout_ = register_module(
      "embeddings.dropout",
      std::make_shared<Dropout>(DropoutConfig{config_.hidden_dropout_prob}, generator));
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i)
    layers_.push_back(register_module("encoder.layer." + std::to_string(i),
                                      std::make_shared<Layer>(config_, generator)));
  if (config_.add_pooling_layer)
    pooler_ = register_module("pooler.dense", std::make_shared<Linear>(LinearConfig{h, h}));
  if (!initialise) return;
  init_bert_weights(*this, config_, generator);
  if (config_.pad_token_id)
    word_embeddings_->weight().value().select(0, *config_.pad_token_id).copy_(Tensor::zeros({h}));
}

const Variable& BertModel::word_embeddings() const {
  return word_embeddings_->weight();
}

BertOutput BertModel::forward(const Tensor& input_ids, const Tensor& attention_mask,
                              const Tensor& token_type_ids, const BertForwardOptions& options) {
  QKV_CHECK(input_ids.defined() && input_ids.dim() == 2 &&
                (input_ids.dtype() == DType::i32 || input_ids.dtype() == DType::i64),
            "BertModel.forward: input_ids must be i32 / i64 [B, L], got ",
            input_ids.defined() ? qkv::detail::str(dtype_name(input_ids.dtype()), " ",
                                                   shape_string(input_ids.shape()))
                                : std::string("undefined"));
  const int64_t b = input_ids.size(0), l = input_ids.size(1);
  QKV_CHECK(b > 0 && l > 0, "BertModel.forward: input_ids ", shape_string(input_ids.shape()),
            " is empty");
  QKV_CHECK(l <= config_.max_position_embeddings, "BertModel.forward: sequence length ", l,
            " exceeds max_position_embeddings ", config_.max_position_embeddings);
  check_like_ids("attention_mask", attention_mask, input_ids);
  check_like_ids("token_type_ids", token_type_ids, input_ids);
  if (token_type_ids.defined())
    QKV_CHECK(token_type_ids.dtype() == DType::i32 || token_type_ids.dtype() == DType::i64,
              "BertModel.forward: token_type_ids must be i32 / i64, got ",
              dtype_name(token_type_ids.dtype()));
  const Tensor padding = attention_mask.defined() ? key_padding_mask(attention_mask) : Tensor();

  // BertEmbeddings: (words + token types) + positions, LayerNorm, dropout.
  // Without token_type_ids every position is type 0, and positions are
  // 0 .. L - 1: rows of the tables broadcast over the batch, no gather.
  Variable x = word_embeddings_->forward(input_ids);
  x = autograd::add(x, token_type_ids.defined()
                          ? token_type_embeddings_->forward(token_type_ids)
                          : autograd::narrow(token_type_embeddings_->weight(), 0, 0, 1));
  x = autograd::add(x, autograd::narrow(position_embeddings_->weight(), 0, 0, l));
  x = embeddings_dropout_->forward(embeddings_norm_->forward(x));

  BertOutput out;
  for (auto& layer : layers_) {
    Tensor weights;
    x = layer->forward(x, padding, options.output_attentions ? &weights : nullptr);
    if (options.output_attentions) out.attentions.push_back(std::move(weights));
  }
  out.last_hidden_state = x;
  // BertPooler: tanh(dense(hidden state of the first token)).
  if (pooler_ && options.pooler)
    out.pooler_output = tanh(pooler_->forward(autograd::select(x, 1, 0)));
  return out;
}

// ---- Hugging Face directories ----------------------------------------------------

std::map<std::string, Tensor> load_pretrained_weights(const std::string& dir) {
  return models::detail::load_weights(dir, "load_pretrained_weights");
}

std::map<std::string, Tensor> load_bert_weights(const std::string& dir) {
  std::map<std::string, Tensor> raw = models::detail::load_weights(dir, kFromPretrained);
  // BertFor* checkpoints keep the encoder under "bert." beside their head.
  bool prefixed = false;
  for (const auto& [name, t] : raw) prefixed = prefixed || starts_with(name, "bert.");
  std::map<std::string, Tensor> out;
  for (auto& [name, t] : raw) {
    if (prefixed && !starts_with(name, "bert.")) continue;
    std::string key = prefixed ? name.substr(5) : name;
    // Buffers older transformers saved (non-persistent since 4.31).
    if (key == "embeddings.position_ids" || key == "embeddings.token_type_ids") continue;
    out.emplace(std::move(key), std::move(t));
  }
  return out;
}

namespace {

BertConfig read_bert_config(const std::string& dir) {
  std::error_code ec;
  QKV_CHECK(std::filesystem::is_directory(dir, ec), kFromPretrained, ": '", dir,
            "' is not a directory");
  const std::string path = models::detail::join_path(dir, "config.json");
  const json j = models::detail::read_json(path, kFromPretrained);
  return BertConfig::from_json(j.dump(), qkv::detail::str(kFromPretrained, ": '", path, "'"));
}

bool has_pooler(const std::map<std::string, Tensor>& weights) {
  for (const auto& [name, t] : weights)
    if (starts_with(name, "pooler.")) return true;
  return false;
}

}  // namespace

BertConfig load_bert_config(const std::string& dir) {
  BertConfig c = read_bert_config(dir);
  c.add_pooling_layer = has_pooler(load_bert_weights(dir));
  return c;
}

std::shared_ptr<BertModel> BertModel::from_pretrained(const std::string& dir) {
  BertConfig c = read_bert_config(dir);
  const std::map<std::string, Tensor> weights = load_bert_weights(dir);
  c.add_pooling_layer = has_pooler(weights);
  Generator generator(0);  // dropout streams only: the weights are loaded
  std::shared_ptr<BertModel> model(new BertModel(c, generator, /*initialise=*/false));
  try {
    model->load_state_dict(weights, /*strict=*/true);
  } catch (const Error& e) {
    throw Error(qkv::detail::str(kFromPretrained, ": the weights in '", dir,
                                 "' do not fit its config.json: ", e.what()));
  }
  model->eval();  // as transformers' from_pretrained
  return model;
}

void BertModel::save_pretrained(const std::string& dir) const {
  std::map<std::string, Tensor> weights;
  for (const auto& [name, t] : state_dict()) weights.emplace(name, t.contiguous());
  models::detail::save_directory(dir, json::parse(config_.to_json()), weights,
                                 "BertModel.save_pretrained");
}

}  // namespace qkv::nn
