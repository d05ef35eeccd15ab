#include "classify.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "commands.h"
#include "config_fields.h"
#include "codec.h"
#include "metrics_log.h"
#include "progress.h"
#include "qkv/bert.h"
#include "qkv/checkpoint.h"
#include "qkv/classifier.h"
#include "qkv/error.h"
#include "qkv/file.h"
#include "qkv/layers.h"
#include "qkv/optim.h"
#include "qkv/safetensors.h"
#include "qkv/threads.h"
#include "qkv/trainer.h"
#include "qkv/wordpiece.h"
#include "stop_signals.h"

namespace qkv::cli {
namespace {

namespace fs = std::filesystem;
using autograd::Variable;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kRunConfig = "config.json";
constexpr const char* kCheckpoint = "checkpoint.safetensors";
constexpr const char* kLog = "log.csv";
constexpr const char* kModelDir = "model";
// config.json's architecture of a saved attention-pooling classifier.
constexpr const char* kAttentionPooling = "AttentionPoolingClassifier";

json read_json(const std::string& path, const char* what) {
  const std::string text = read_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(qkv::detail::str(what, " '", path, "' is not valid JSON: ", e.what()));
  }
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

// ---- data ----------------------------------------------------------------------

struct Examples {
  std::vector<std::string> texts;
  std::vector<int32_t> labels;  // empty for unlabelled text
};

// A .tsv file: a header line, then "label<TAB>sentence" (GLUE's SST-2); any
// other file (allowed for mlm): one sentence a line, blank lines skipped.
Examples read_examples(const std::string& path, const char* flag, bool labelled) {
  QKV_CHECK(!path.empty(), "no ", flag, " given");
  const std::vector<std::string> lines = split_lines(read_file(path, flag));
  Examples out;
  if (!path.ends_with(".tsv")) {
    QKV_CHECK(!labelled, flag, " '", path,
              "' must be a .tsv file (a header, then label<TAB>sentence lines)");
    for (const auto& line : lines)
      if (line.find_first_not_of(" \t") != std::string::npos) out.texts.push_back(line);
  } else {
    for (size_t i = 1; i < lines.size(); ++i) {
      const std::string& line = lines[i];
      if (line.empty()) continue;
      const size_t tab = line.find('\t');
      QKV_CHECK(tab != std::string::npos, flag, " '", path, "' line ", i + 1,
                ": expected label<TAB>sentence, got \"", line.substr(0, 60), "\"");
      const std::string label = line.substr(0, tab);
      int32_t value = -1;
      try {
        size_t used = 0;
        const long v = std::stol(label, &used);
        if (used == label.size() && v >= 0 && v < 1000) value = static_cast<int32_t>(v);
      } catch (const std::exception&) {
      }
      QKV_CHECK(value >= 0, flag, " '", path, "' line ", i + 1,
                ": the label must be an integer 0, 1, ..., got \"", label, "\"");
      out.texts.push_back(line.substr(tab + 1));
      out.labels.push_back(value);
    }
    if (!labelled) out.labels.clear();
  }
  QKV_CHECK(!out.texts.empty(), flag, " '", path, "' holds no sentences");
  return out;
}

// The WordPiece of `source`: a directory (tokenizer.json or vocab.txt), a
// tokenizer.json or a vocab.txt file.
text::WordPiece load_tokenizer(const std::string& source) {
  std::error_code ec;
  QKV_CHECK(fs::exists(source, ec), "tokenizer '", source, "' does not exist");
  if (fs::is_directory(source, ec)) return text::WordPiece::load(source);
  if (source.ends_with(".json")) return text::WordPiece::from_tokenizer_json(source);
  return text::WordPiece::from_vocab_file(source);
}

// The tokenizer files of `source` (as load_tokenizer reads it) copied into
// `dir`, so that WordPiece::load(dir) gives the same tokenizer.
void copy_tokenizer_files(const std::string& source, const std::string& dir) {
  std::error_code ec;
  auto copy = [&](const std::string& from, const std::string& name) {
    write_file_atomically((fs::path(dir) / name).string(), read_file(from, "tokenizer file"));
  };
  if (fs::is_directory(source, ec)) {
    for (const char* name :
         {"tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"})
      if (fs::is_regular_file(fs::path(source) / name, ec))
        copy((fs::path(source) / name).string(), name);
  } else {
    copy(source, source.ends_with(".json") ? "tokenizer.json" : "vocab.txt");
  }
}

// Each text as ids ([CLS] ... [SEP], cut at max_length), encoded on the thread team.
std::vector<std::vector<int32_t>> encode_all(const text::WordPiece& tokenizer,
                                             const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> out;
  out.reserve(texts.size());
  for (auto& e : tokenizer.encode_batch(texts)) out.push_back(std::move(e.ids));
  return out;
}

// Batches of rows of similar length: the rows in a random order, cut into
// chunks of 50 batches, each chunk sorted by length and cut into batches, the
// batches shuffled. A function of (seed, epoch) alone, so a resumed run
// continues the same order.
std::vector<std::vector<int64_t>> epoch_batches(const std::vector<std::vector<int32_t>>& ids,
                                                int64_t batch, uint64_t seed, int64_t epoch) {
  Generator generator(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
  auto shuffle = [&](auto& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[generator.next_u64() % i]);
  };
  std::vector<int64_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  shuffle(order);
  const size_t chunk = static_cast<size_t>(batch) * 50;
  std::vector<std::vector<int64_t>> batches;
  for (size_t first = 0; first < order.size(); first += chunk) {
    const auto begin = order.begin() + static_cast<std::ptrdiff_t>(first);
    const auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), first + chunk));
    std::stable_sort(begin, end, [&](int64_t a, int64_t b) { return ids[a].size() < ids[b].size(); });
    for (auto it = begin; it < end; it += std::min<std::ptrdiff_t>(batch, end - it))
      batches.emplace_back(it, it + std::min<std::ptrdiff_t>(batch, end - it));
  }
  shuffle(batches);
  return batches;
}

// Rows in batches of `batch` after sorting by length (evaluation, inference).
std::vector<std::vector<int64_t>> sorted_batches(const std::vector<std::vector<int32_t>>& ids,
                                                 int64_t batch) {
  std::vector<int64_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return ids[a].size() < ids[b].size(); });
  std::vector<std::vector<int64_t>> batches;
  for (size_t first = 0; first < order.size(); first += batch)
    batches.emplace_back(order.begin() + first,
                         order.begin() + std::min(order.size(), first + static_cast<size_t>(batch)));
  return batches;
}

struct Batch {
  Tensor ids;   // i32 [B, L], padded with the pad id
  Tensor mask;  // i32 [B, L], 1 = token
};

Batch pad_batch(const std::vector<std::vector<int32_t>>& ids, const std::vector<int64_t>& rows,
                int32_t pad_id) {
  size_t length = 1;
  for (int64_t r : rows) length = std::max(length, ids[r].size());
  const auto b = static_cast<int64_t>(rows.size()), l = static_cast<int64_t>(length);
  Batch out{Tensor::full({b, l}, pad_id, DType::i32), Tensor::zeros({b, l}, DType::i32)};
  for (int64_t i = 0; i < b; ++i) {
    const auto& row = ids[rows[i]];
    std::copy(row.begin(), row.end(), out.ids.data<int32_t>() + i * l);
    std::fill_n(out.mask.data<int32_t>() + i * l, row.size(), 1);
  }
  return out;
}

Tensor labels_of(const std::vector<int32_t>& labels, const std::vector<int64_t>& rows) {
  Tensor out = Tensor::empty({static_cast<int64_t>(rows.size())}, DType::i32);
  for (size_t i = 0; i < rows.size(); ++i) out.data<int32_t>()[i] = labels[rows[i]];
  return out;
}

// Devlin et al. 2019 §3.1: mask_prob of the tokens (never [CLS], [SEP] or
// padding; at least one a batch) are predicted; of those 80% become [MASK],
// 10% a random token, 10% stay. Returns the input with the replacements, the
// flat positions and their original ids.
struct MaskedBatch {
  Tensor ids, mask, positions, targets;
};

MaskedBatch mask_tokens(const Batch& batch, double mask_prob, int32_t mask_id,
                        const std::vector<int32_t>& special, int64_t vocab, Generator& generator) {
  MaskedBatch out{batch.ids.clone(), batch.mask, Tensor(), Tensor()};
  const int64_t n = batch.ids.numel();
  int32_t* ids = out.ids.data<int32_t>();
  const int32_t* mask = batch.mask.data<int32_t>();
  auto candidate = [&](int64_t i) {
    return mask[i] != 0 && std::find(special.begin(), special.end(), ids[i]) == special.end();
  };
  std::vector<int32_t> positions, targets;
  for (int64_t i = 0; i < n; ++i)
    if (candidate(i) && generator.uniform() < mask_prob) positions.push_back(static_cast<int32_t>(i));
  if (positions.empty())
    for (int64_t i = 0; i < n; ++i)
      if (candidate(i)) {
        positions.push_back(static_cast<int32_t>(i));
        break;
      }
  QKV_CHECK(!positions.empty(), "mlm: a batch holds no tokens to mask (only special tokens)");
  for (int32_t p : positions) {
    targets.push_back(ids[p]);
    const double u = generator.uniform();
    if (u < 0.8)
      ids[p] = mask_id;
    else if (u < 0.9)
      ids[p] = static_cast<int32_t>(generator.next_u64() % static_cast<uint64_t>(vocab));
  }
  const auto count = static_cast<int64_t>(positions.size());
  out.positions = Tensor::empty({count}, DType::i32);
  out.targets = Tensor::empty({count}, DType::i32);
  std::copy(positions.begin(), positions.end(), out.positions.data<int32_t>());
  std::copy(targets.begin(), targets.end(), out.targets.data<int32_t>());
  return out;
}

std::vector<std::string> split_labels(const std::string& names) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(names);
  while (std::getline(in, item, ',')) out.push_back(item);
  return out;
}

// ---- the models ------------------------------------------------------------------

// A model the loop trains: the module, and its loss / predictions on a batch.
struct TaskModel {
  std::shared_ptr<nn::Module> module;
  std::shared_ptr<nn::BertForSequenceClassification> bert_classifier;
  std::shared_ptr<nn::AttentionPoolingClassifier> pooling_classifier;
  std::vector<std::string> labels;
  std::shared_ptr<nn::BertForMaskedLM> mlm;

  Variable logits(const Batch& batch) const {
    if (bert_classifier) return bert_classifier->forward(batch.ids, batch.mask);
    Tensor padding = Tensor::empty(batch.mask.shape(), DType::boolean);
    for (int64_t i = 0; i < padding.numel(); ++i)
      padding.data<bool>()[i] = batch.mask.data<int32_t>()[i] == 0;
    return autograd::to(pooling_classifier->forward(batch.ids, padding), DType::f32);
  }
  std::string describe() const;
};

std::string TaskModel::describe() const {
  char text[256];
  if (mlm || bert_classifier) {
    const nn::BertConfig& c = mlm ? mlm->bert().config() : bert_classifier->bert().config();
    std::snprintf(text, sizeof text, "a %lld-layer BERT (hidden %lld, %lld heads, vocabulary %lld)%s",
                  static_cast<long long>(c.num_hidden_layers), static_cast<long long>(c.hidden_size),
                  static_cast<long long>(c.num_attention_heads), static_cast<long long>(c.vocab_size),
                  mlm ? " with the masked-LM head" : " with a classification head");
  } else {
    const auto& c = pooling_classifier->config();
    std::snprintf(text, sizeof text,
                  "the attention-pooling classifier (d_model %lld, vocabulary %lld, max length %lld)",
                  static_cast<long long>(c.d_model), static_cast<long long>(c.vocab_size),
                  static_cast<long long>(c.max_len));
  }
  return text;
}

int64_t count_parameters(const nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.value().numel();
  return n;
}

// <dir>/config.json of a saved attention-pooling classifier.
json pooling_config_json(const nn::AttentionPoolingClassifierConfig& c,
                         const std::vector<std::string>& labels) {
  json id2label = json::object(), label2id = json::object();
  for (size_t i = 0; i < labels.size(); ++i) {
    id2label[std::to_string(i)] = labels[i];
    label2id[labels[i]] = i;
  }
  return {{"architectures", {kAttentionPooling}},
          {"model_type", "qkv-attention-pooling"},
          {"vocab_size", c.vocab_size},
          {"d_model", c.d_model},
          {"max_len", c.max_len},
          {"num_classes", c.num_classes},
          {"positional", c.positional == nn::PositionalEncoding::learned ? "learned" : "sinusoidal"},
          {"padding_idx", c.padding_idx ? json(*c.padding_idx) : json(nullptr)},
          {"id2label", id2label},
          {"label2id", label2id}};
}

std::vector<std::string> labels_from_config(const json& config, const std::string& path) {
  const auto it = config.find("id2label");
  QKV_CHECK(it != config.end() && it->is_object() && !it->empty(), "'", path,
            "' has no \"id2label\" object");
  std::vector<std::string> labels(it->size());
  for (const auto& [key, name] : it->items()) {
    size_t id = labels.size();
    try {
      id = std::stoul(key);
    } catch (const std::exception&) {
    }
    QKV_CHECK(id < labels.size() && name.is_string(), "'", path,
              "': \"id2label\" must map the ids 0 .. ", labels.size() - 1, " to names");
    labels[id] = name.get<std::string>();
  }
  return labels;
}

std::shared_ptr<nn::AttentionPoolingClassifier> load_pooling_classifier(
    const std::string& dir, const json& config, std::vector<std::string>& labels) {
  const std::string path = (fs::path(dir) / "config.json").string();
  nn::AttentionPoolingClassifierConfig c;
  try {
    c.vocab_size = config.at("vocab_size").get<int64_t>();
    c.d_model = config.at("d_model").get<int64_t>();
    c.max_len = config.at("max_len").get<int64_t>();
    c.num_classes = config.at("num_classes").get<int64_t>();
    c.positional = config.at("positional").get<std::string>() == "learned"
                       ? nn::PositionalEncoding::learned
                       : nn::PositionalEncoding::sinusoidal;
    if (!config.at("padding_idx").is_null()) c.padding_idx = config.at("padding_idx").get<int64_t>();
  } catch (const json::exception& e) {
    throw Error(qkv::detail::str("'", path, "' is not an attention-pooling classifier's config: ",
                            e.what()));
  }
  labels = labels_from_config(config, path);
  QKV_CHECK(static_cast<int64_t>(labels.size()) == c.num_classes, "'", path, "' names ",
            labels.size(), " labels for ", c.num_classes, " classes");
  Generator generator(0);
  auto model = std::make_shared<nn::AttentionPoolingClassifier>(c, generator);
  load_model((fs::path(dir) / "model.safetensors").string(), *model);
  model->eval();
  return model;
}

// The classifier in a model directory (or a run directory's model/).
struct LoadedClassifier {
  std::string dir;
  TaskModel model;
  text::WordPiece tokenizer;
  int64_t max_length = 512;
};

LoadedClassifier load_classifier(const std::string& path) {
  std::error_code ec;
  QKV_CHECK(fs::is_directory(path, ec), "model directory '", path,
            "' does not exist or is not a directory");
  std::string dir = path;
  if (!fs::exists(fs::path(path) / "config.json", ec) &&
      fs::is_regular_file(fs::path(path) / kModelDir / "config.json", ec))
    dir = (fs::path(path) / kModelDir).string();
  else if (fs::is_regular_file(fs::path(path) / kCheckpoint, ec)) {
    // A run directory: its config.json holds the run's settings.
    QKV_CHECK(fs::is_regular_file(fs::path(path) / kModelDir / "config.json", ec), "'", path,
              "' is a training run without its model directory yet (qkv train --resume ", path,
              " finishes it)");
    dir = (fs::path(path) / kModelDir).string();
  }
  const std::string config_path = (fs::path(dir) / "config.json").string();
  const json config = read_json(config_path, "model config");
  std::string architecture;
  if (auto it = config.find("architectures");
      it != config.end() && it->is_array() && !it->empty() && (*it)[0].is_string())
    architecture = (*it)[0].get<std::string>();
  LoadedClassifier out{dir, {}, text::WordPiece(), 512};
  if (architecture == "BertForSequenceClassification") {
    out.model.bert_classifier = nn::BertForSequenceClassification::from_pretrained(dir);
    out.model.module = out.model.bert_classifier;
    out.model.labels = out.model.bert_classifier->labels();
    out.max_length = out.model.bert_classifier->bert().config().max_position_embeddings;
  } else if (architecture == kAttentionPooling) {
    out.model.pooling_classifier = load_pooling_classifier(dir, config, out.model.labels);
    out.model.module = out.model.pooling_classifier;
    out.max_length = out.model.pooling_classifier->config().max_len;
  } else {
    throw Error(qkv::detail::str("'", config_path, "': architecture ",
                            architecture.empty() ? std::string("(none)") : "\"" + architecture + "\"",
                            " is not a classifier qkv classify runs (BertForSequenceClassification, ",
                            kAttentionPooling, ")"));
  }
  out.tokenizer = text::WordPiece::load(dir);
  out.tokenizer.set_truncation(text::Truncation{.max_length = static_cast<size_t>(out.max_length)});
  out.tokenizer.set_padding(std::nullopt);
  return out;
}

// softmax of each row of logits [B, K] (f32).
std::vector<std::vector<double>> softmax_rows(const Tensor& logits) {
  const Tensor l = logits.to(DType::f32).contiguous();
  const int64_t b = l.size(0), k = l.size(1);
  std::vector<std::vector<double>> out(b, std::vector<double>(k));
  for (int64_t i = 0; i < b; ++i) {
    const float* row = l.data<float>() + i * k;
    const double top = *std::max_element(row, row + k);
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += out[i][j] = std::exp(row[j] - top);
    for (auto& p : out[i]) p /= sum;
  }
  return out;
}

// ---- evaluation -----------------------------------------------------------------

struct DevResult {
  double loss = NAN, accuracy = NAN;
};

DevResult evaluate_classifier(const TaskModel& model, const std::vector<std::vector<int32_t>>& ids,
                              const std::vector<int32_t>& labels, int64_t batch, int32_t pad_id,
                              bool bf16) {
  const bool was_training = model.module->training();
  model.module->eval();
  autograd::NoGradGuard no_grad;
  autograd::AutocastGuard autocast(bf16);
  double loss = 0;
  int64_t correct = 0;
  for (const auto& rows : sorted_batches(ids, batch)) {
    const Batch b = pad_batch(ids, rows, pad_id);
    const Tensor targets = labels_of(labels, rows);
    const Variable logits = model.logits(b);
    loss += autograd::cross_entropy(logits, targets).value().item() * static_cast<double>(rows.size());
    const auto probs = softmax_rows(logits.value());
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto best = std::max_element(probs[i].begin(), probs[i].end()) - probs[i].begin();
      correct += best == targets.data<int32_t>()[i];
    }
  }
  model.module->train(was_training);
  const auto n = static_cast<double>(ids.size());
  return {loss / n, static_cast<double>(correct) / n};
}

// Masked-token loss and top-1 accuracy on `ids`, masked the same way every time.
DevResult evaluate_mlm(nn::BertForMaskedLM& model, const std::vector<std::vector<int32_t>>& ids,
                       int64_t batch, int32_t pad_id, const ClassifyConfig& c, int32_t mask_id,
                       const std::vector<int32_t>& special) {
  const bool was_training = model.training();
  model.eval();
  autograd::NoGradGuard no_grad;
  autograd::AutocastGuard autocast(c.bf16);
  Generator generator(c.seed + 77);
  double loss = 0;
  int64_t correct = 0, count = 0;
  for (const auto& rows : sorted_batches(ids, batch)) {
    const MaskedBatch m = mask_tokens(pad_batch(ids, rows, pad_id), c.mask_prob, mask_id, special,
                                      model.bert().config().vocab_size, generator);
    const Variable logits = model.forward(m.ids, m.mask, m.positions);
    const int64_t n = m.positions.numel(), v = logits.size(1);
    loss += autograd::cross_entropy(logits, m.targets).value().item() * static_cast<double>(n);
    const Tensor l = logits.value().contiguous();
    for (int64_t i = 0; i < n; ++i) {
      const float* row = l.data<float>() + i * v;
      correct += std::max_element(row, row + v) - row == m.targets.data<int32_t>()[i];
    }
    count += n;
  }
  model.train(was_training);
  return {loss / static_cast<double>(count), static_cast<double>(correct) / static_cast<double>(count)};
}

// ---- the run's files -----------------------------------------------------------


Schedule make_schedule(const ClassifyConfig& c) {
  if (c.schedule == "linear") return Schedule::linear_with_warmup(c.warmup, c.steps);
  if (c.schedule == "cosine") return Schedule::cosine_with_warmup(c.warmup, c.steps);
  return Schedule::constant();
}

// The model directory written whole: into a temporary directory beside it,
// then renamed into place.
template <class Write>
void write_model_dir(const std::string& dir, Write&& write) {
  const fs::path target(dir), partial = fs::path(dir + ".partial");
  std::error_code ec;
  fs::remove_all(partial, ec);
  write(partial.string());
  fs::remove_all(target, ec);
  fs::rename(partial, target, ec);
  QKV_CHECK(!ec, "cannot move the model directory into '", dir, "': ", ec.message());
}

}  // namespace

// ---- ClassifyConfig ---------------------------------------------------------------

json ClassifyConfig::to_json() const { return fields_to_json(*this); }

void ClassifyConfig::update_from_json(const json& j, const std::string& source) {
  update_fields_from_json(*this, j, source);
}

void ClassifyConfig::validate() const {
  QKV_CHECK(task == "classify" || task == "mlm", "--task must be lm, classify or mlm, got '", task,
            "'");
  QKV_CHECK(arch == "bert" || arch == "attention-pooling",
            "--arch must be bert or attention-pooling, got '", arch, "'");
  if (task == "classify" && arch == "bert")
    QKV_CHECK(!model.empty(),
              "--task classify needs --model (a BERT directory to fine-tune), or --arch "
              "attention-pooling");
  if (model.empty()) QKV_CHECK(!tokenizer.empty(), "a model from scratch needs --tokenizer (a vocabulary)");
  QKV_CHECK(!train_data.empty(), "no --train-data given");
  QKV_CHECK(!dev_data.empty(), "no --dev-data given");
  QKV_CHECK(max_length >= 3, "--max-length must be at least 3, got ", max_length);
  QKV_CHECK(layers > 0 && hidden > 0 && heads > 0 && intermediate > 0,
            "--layers, --hidden, --heads and --intermediate must be positive");
  QKV_CHECK(hidden % heads == 0, "--hidden ", hidden, " is not a multiple of --heads ", heads);
  QKV_CHECK(dropout >= 0 && dropout < 1, "--dropout must be in [0, 1), got ", dropout);
  QKV_CHECK(mask_prob > 0 && mask_prob < 1, "--mask-prob must be in (0, 1), got ", mask_prob);
  QKV_CHECK(steps > 0, "--steps must be positive, got ", steps);
  QKV_CHECK(batch > 0, "--batch must be positive, got ", batch);
  QKV_CHECK(grad_accum > 0, "--grad-accum must be positive, got ", grad_accum);
  QKV_CHECK(lr > 0 && std::isfinite(lr), "--lr must be positive, got ", lr);
  QKV_CHECK(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  QKV_CHECK(schedule == "cosine" || schedule == "linear" || schedule == "constant",
            "--schedule must be linear, cosine or constant, got '", schedule, "'");
  QKV_CHECK(weight_decay >= 0, "--weight-decay must be >= 0, got ", weight_decay);
  QKV_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
            "--beta1 and --beta2 must be in [0, 1), got ", beta1, " and ", beta2);
  QKV_CHECK(clip >= 0, "--clip must be >= 0 (0: off), got ", clip);
  QKV_CHECK(eval_interval > 0, "--eval-interval must be positive, got ", eval_interval);
  QKV_CHECK(eval_batch > 0, "--eval-batch must be positive, got ", eval_batch);
  QKV_CHECK(checkpoint_interval > 0, "--checkpoint-interval must be positive, got ",
            checkpoint_interval);
  QKV_CHECK(time_limit >= 0, "--time-limit must be >= 0, got ", time_limit);
}

// ---- qkv train --task classify / mlm ------------------------------------------------

json run_classify_train(const ClassifyConfig& config, const ClassifyRun& run) {
  std::FILE* log = run.log;
  config.validate();
  QKV_CHECK(!run.out.empty(), "no run directory given (--out)");
  const bool mlm = config.task == "mlm";
  const std::string checkpoint_path = (fs::path(run.out) / kCheckpoint).string();
  std::error_code ec;
  if (run.resume) {
    QKV_CHECK(fs::is_regular_file(checkpoint_path, ec), "--resume: '", run.out,
              "' holds no checkpoint (", kCheckpoint, ")");
  } else if (!run.overwrite) {
    QKV_CHECK(!fs::exists(checkpoint_path, ec) && !fs::exists(fs::path(run.out) / kModelDir, ec),
              "'", run.out,
              "' already holds a run; pass --resume to continue it or --overwrite to start over");
  }

  // ---- data and tokenizer (all checked before the run directory is touched) ----
  if (!config.model.empty())
    QKV_CHECK(fs::is_directory(config.model, ec), "--model '", config.model,
              "' does not exist or is not a directory");
  const std::string tokenizer_source = config.tokenizer.empty() ? config.model : config.tokenizer;
  text::WordPiece tokenizer = load_tokenizer(tokenizer_source);
  tokenizer.set_truncation(text::Truncation{.max_length = static_cast<size_t>(config.max_length)});
  tokenizer.set_padding(std::nullopt);
  const int32_t pad_id = tokenizer.pad_id().value_or(0);
  const Examples train = read_examples(config.train_data, "--train-data", !mlm);
  const Examples dev = read_examples(config.dev_data, "--dev-data", !mlm);
  const auto train_ids = encode_all(tokenizer, train.texts);
  const auto dev_ids = encode_all(tokenizer, dev.texts);

  std::vector<std::string> labels;
  std::vector<int32_t> special;  // mlm: never masked
  int32_t mask_id = 0;
  if (mlm) {
    QKV_CHECK(tokenizer.mask_id().has_value(), "--task mlm: the vocabulary of '", tokenizer_source,
              "' has no mask token (", tokenizer.config().mask_token, ")");
    mask_id = *tokenizer.mask_id();
    for (auto id : {tokenizer.cls_id(), tokenizer.sep_id(), tokenizer.pad_id()})
      if (id) special.push_back(*id);
  } else {
    const int32_t classes = *std::max_element(train.labels.begin(), train.labels.end()) + 1;
    QKV_CHECK(classes >= 2, "--train-data '", config.train_data,
              "' has a single label (0); classification needs at least two");
    const int32_t dev_max = *std::max_element(dev.labels.begin(), dev.labels.end());
    QKV_CHECK(dev_max < classes, "--dev-data '", config.dev_data, "' has label ", dev_max,
              "; the training data has labels 0 .. ", classes - 1);
    if (!config.label_names.empty()) {
      labels = split_labels(config.label_names);
      QKV_CHECK(static_cast<int32_t>(labels.size()) == classes, "--label-names names ",
                labels.size(), " labels; the training data has ", classes);
    } else {
      for (int32_t i = 0; i < classes; ++i) labels.push_back("LABEL_" + std::to_string(i));
    }
  }

  // ---- the model ----
  Generator init(config.seed);
  TaskModel model;
  model.labels = labels;
  if (mlm) {
    if (!config.model.empty()) {
      model.mlm = nn::BertForMaskedLM::from_pretrained(config.model);
    } else {
      nn::BertConfig c;
      c.vocab_size = static_cast<int64_t>(tokenizer.vocab_size());
      c.hidden_size = config.hidden;
      c.num_hidden_layers = config.layers;
      c.num_attention_heads = config.heads;
      c.intermediate_size = config.intermediate;
      c.max_position_embeddings = std::max<int64_t>(config.max_length, 128);
      c.hidden_dropout_prob = c.attention_probs_dropout_prob = config.dropout;
      c.pad_token_id = pad_id;
      model.mlm = std::make_shared<nn::BertForMaskedLM>(c, init);
    }
    model.module = model.mlm;
  } else if (config.arch == "bert") {
    model.bert_classifier = nn::BertForSequenceClassification::from_encoder(config.model, labels, init);
    model.module = model.bert_classifier;
  } else {
    model.pooling_classifier = std::make_shared<nn::AttentionPoolingClassifier>(
        nn::AttentionPoolingClassifierConfig{.vocab_size = static_cast<int64_t>(tokenizer.vocab_size()),
                                             .d_model = config.hidden,
                                             .max_len = config.max_length,
                                             .num_classes = static_cast<int64_t>(labels.size()),
                                             .positional = nn::PositionalEncoding::sinusoidal,
                                             .padding_idx = pad_id},
        init);
    model.module = model.pooling_classifier;
  }
  const int64_t vocab = mlm ? model.mlm->bert().config().vocab_size : 0;
  if (mlm)
    QKV_CHECK(static_cast<int64_t>(tokenizer.vocab_size()) <= vocab, "the tokenizer's vocabulary (",
              tokenizer.vocab_size(), " tokens) is larger than the model's (", vocab, ")");
  model.module->train();
  AdamW optimizer(optimizer_parameters(*model.module), {.lr = config.lr,
                                                        .beta1 = config.beta1,
                                                        .beta2 = config.beta2,
                                                        .weight_decay = config.weight_decay});
  Trainer trainer(*model.module, optimizer, config.lr, make_schedule(config),
                  {.grad_accumulation_steps = config.grad_accum, .clip_norm = config.clip});

  double elapsed_before = 0;
  MetricsLog rows({"train_loss", "dev_loss", "dev_accuracy", "lr", "sentences_per_s", "elapsed_s"});
  if (run.resume) {
    const TrainingState state = read_training_state(checkpoint_path);
    trainer.resume(checkpoint_path);
    if (auto it = state.extra.find("elapsed_s"); it != state.extra.end())
      elapsed_before = std::stod(it->second);
    rows.load((fs::path(run.out) / kLog).string(), trainer.steps());
    std::fprintf(log, "resuming '%s' at step %lld of %lld\n", run.out.c_str(),
                 static_cast<long long>(trainer.steps()), static_cast<long long>(config.steps));
  } else {
    fs::create_directories(run.out, ec);
    QKV_CHECK(!ec, "cannot create the run directory '", run.out, "': ", ec.message());
    fs::remove(checkpoint_path, ec);
    fs::remove_all(fs::path(run.out) / kModelDir, ec);
  }
  write_file_atomically((fs::path(run.out) / kRunConfig).string(), config.to_json().dump(2) + "\n");

  std::fprintf(log,
               "%s %s (%s parameters) on '%s': %zu sentences, %zu dev sentences%s; max length "
               "%lld; batch %lld; threads: %d%s\n",
               mlm ? "pretraining" : "training", model.describe().c_str(),
               format_count(static_cast<double>(count_parameters(*model.module))).c_str(),
               config.train_data.c_str(), train_ids.size(), dev_ids.size(),
               mlm ? "" : (", " + std::to_string(labels.size()) + " labels").c_str(),
               static_cast<long long>(config.max_length),
               static_cast<long long>(config.batch * config.grad_accum), num_threads(),
               config.bf16 ? ", bf16 autocast" : "");
  std::fflush(log);

  // ---- the loop ----
  auto save = [&](double elapsed) {
    TrainingState state = trainer.state();
    state.extra["elapsed_s"] = std::to_string(elapsed);
    state.extra["task"] = config.task;
    save_checkpoint(checkpoint_path, *model.module, optimizer, state);
    write_file_atomically((fs::path(run.out) / kLog).string(), rows.csv());
  };
  auto evaluate = [&] {
    return mlm ? evaluate_mlm(*model.mlm, dev_ids, config.eval_batch, pad_id, config, mask_id, special)
               : evaluate_classifier(model, dev_ids, dev.labels, config.eval_batch, pad_id,
                                     config.bf16);
  };
  StopSignals signals;
  Progress progress(mlm ? "pretrain" : "train", config.steps, trainer.steps(), run.quiet);
  const auto began = Clock::now();
  auto elapsed = [&] {
    return elapsed_before + std::chrono::duration<double>(Clock::now() - began).count();
  };
  // Every epoch has as many batches (the chunks' sizes do not change).
  const auto per_epoch = static_cast<int64_t>(epoch_batches(train_ids, config.batch, config.seed, 0).size());
  int64_t epoch = -1;
  std::vector<std::vector<int64_t>> batches;
  int64_t sentences_this_run = 0;
  double loop_seconds = 0, train_loss_sum = 0, last_train_loss = NAN;
  int64_t train_loss_count = 0;
  DevResult last_dev;
  bool interrupted = false, timed_out = false;
  while (trainer.steps() < config.steps) {
    if (signals.raised()) {
      interrupted = true;
      break;
    }
    if (config.time_limit > 0 && elapsed() >= config.time_limit) {
      timed_out = true;
      break;
    }
    const auto step_began = Clock::now();
    int64_t micro = trainer.steps() * config.grad_accum;  // micro-batches drawn before this step
    const double loss = trainer.step([&] {
      if (micro / per_epoch != epoch) {
        epoch = micro / per_epoch;
        batches = epoch_batches(train_ids, config.batch, config.seed, epoch);
      }
      const auto& batch_rows = batches[micro % per_epoch];
      ++micro;
      sentences_this_run += static_cast<int64_t>(batch_rows.size());
      const Batch b = pad_batch(train_ids, batch_rows, pad_id);
      autograd::AutocastGuard autocast(config.bf16);
      if (mlm) {
        Generator mask_generator(config.seed * 0xD1B54A32D192ED03ull + static_cast<uint64_t>(micro));
        const MaskedBatch m = mask_tokens(b, config.mask_prob, mask_id, special, vocab, mask_generator);
        return autograd::cross_entropy(model.mlm->forward(m.ids, m.mask, m.positions), m.targets);
      }
      return autograd::cross_entropy(model.logits(b), labels_of(train.labels, batch_rows));
    });
    loop_seconds += std::chrono::duration<double>(Clock::now() - step_began).count();
    train_loss_sum += loss;
    ++train_loss_count;
    const double sentences_per_s = static_cast<double>(sentences_this_run) / loop_seconds;
    const int64_t step = trainer.steps();
    char loss_text[32];
    std::snprintf(loss_text, sizeof loss_text, "%.4f", loss);
    progress.update(step, {{"loss", loss_text}, {"sent/s", format_count(sentences_per_s)}});
    const bool last = step == config.steps;
    if (step % config.eval_interval == 0 || last) {
      last_train_loss = train_loss_sum / static_cast<double>(train_loss_count);
      train_loss_sum = 0;
      train_loss_count = 0;
      last_dev = evaluate();
      rows.add(step, {last_train_loss, last_dev.loss, last_dev.accuracy, optimizer.lr(),
                      sentences_per_s, elapsed()});
      char line[200];
      std::snprintf(line, sizeof line, "step %lld: train loss %.4f, dev loss %.4f, dev %s %.2f%%, lr %.3g, %s",
                    static_cast<long long>(step), last_train_loss, last_dev.loss,
                    mlm ? "masked-token accuracy" : "accuracy", 100 * last_dev.accuracy,
                    optimizer.lr(), format_duration(elapsed()).c_str());
      progress.message(line);
    }
    if (step % config.checkpoint_interval == 0 || last) save(elapsed());
  }
  progress.finish();
  if (interrupted || timed_out) {
    save(elapsed());
    std::fprintf(log, "%s at step %lld; checkpoint saved in '%s' (qkv train --resume %s continues)\n",
                 interrupted ? "interrupted" : "time limit reached",
                 static_cast<long long>(trainer.steps()), run.out.c_str(), run.out.c_str());
  }
  json result = {{"run", run.out},
                 {"task", config.task},
                 {"steps", trainer.steps()},
                 {"interrupted", interrupted},
                 {"time_limit_reached", timed_out},
                 {"elapsed_s", elapsed()},
                 {"sentences_per_s", loop_seconds > 0 ? static_cast<double>(sentences_this_run) / loop_seconds : 0.0},
                 {"parameters", count_parameters(*model.module)},
                 {"config", config.to_json()}};
  if (interrupted) return result;

  // ---- the final evaluation and the model directory ----
  if (rows.last_step() != trainer.steps()) last_dev = evaluate();
  const std::string model_dir = (fs::path(run.out) / kModelDir).string();
  write_model_dir(model_dir, [&](const std::string& dir) {
    if (model.mlm)
      model.mlm->save_pretrained(dir);
    else if (model.bert_classifier)
      model.bert_classifier->save_pretrained(dir);
    else {
      fs::create_directories(dir);
      write_file_atomically((fs::path(dir) / "config.json").string(),
                            pooling_config_json(model.pooling_classifier->config(), labels).dump(2) + "\n");
      save_model((fs::path(dir) / "model.safetensors").string(), *model.pooling_classifier);
    }
    copy_tokenizer_files(tokenizer_source, dir);
  });
  std::fprintf(log, "\ndev %s %.2f%% (loss %.4f) on %zu sentences after %lld steps, %s; model in '%s'\n",
               mlm ? "masked-token accuracy" : "accuracy", 100 * last_dev.accuracy, last_dev.loss,
               dev_ids.size(), static_cast<long long>(trainer.steps()),
               format_duration(elapsed()).c_str(), model_dir.c_str());
  result["dev_loss"] = last_dev.loss;
  result[mlm ? "dev_masked_accuracy" : "dev_accuracy"] = last_dev.accuracy;
  result["train_loss"] = last_train_loss;
  result["model"] = model_dir;
  return result;
}

// ---- qkv classify ------------------------------------------------------------------

std::vector<std::string> gather_texts(const std::vector<std::string>& texts, const std::string& input) {
  std::vector<std::string> out;
  for (const auto& t : texts) {
    QKV_CHECK(t.find_first_not_of(" \t\r\n") != std::string::npos, "a --text is empty");
    out.push_back(t);
  }
  if (!input.empty())
    for (auto& line : split_lines(read_file(input, "input file")))
      if (line.find_first_not_of(" \t") != std::string::npos) out.push_back(std::move(line));
  QKV_CHECK(!out.empty(), input.empty() ? std::string("no text given (--text or --input)")
                                        : "input file '" + input + "' holds no text");
  return out;
}

json run_classify(const ClassifyOptions& options, std::FILE* log) {
  QKV_CHECK(options.batch > 0, "--batch must be positive, got ", options.batch);
  const std::vector<std::string> texts = gather_texts(options.texts, options.input);
  LoadedClassifier loaded = load_classifier(options.model);
  const auto ids = encode_all(loaded.tokenizer, texts);
  const int32_t pad_id = loaded.tokenizer.pad_id().value_or(0);
  const auto began = Clock::now();
  std::vector<std::vector<double>> probabilities(texts.size());
  {
    autograd::NoGradGuard no_grad;
    for (const auto& rows : sorted_batches(ids, options.batch)) {
      const auto p = softmax_rows(loaded.model.logits(pad_batch(ids, rows, pad_id)).value());
      for (size_t i = 0; i < rows.size(); ++i) probabilities[rows[i]] = p[i];
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - began).count();
  const auto& labels = loaded.model.labels;
  json predictions = json::array();
  for (size_t t = 0; t < texts.size(); ++t) {
    const auto& p = probabilities[t];
    const auto best = static_cast<size_t>(std::max_element(p.begin(), p.end()) - p.begin());
    json probs = json::object();
    std::string others;
    for (size_t k = 0; k < labels.size(); ++k) {
      probs[labels[k]] = p[k];
      if (k == best) continue;
      char item[96];
      std::snprintf(item, sizeof item, "%s%s %.3f", others.empty() ? "" : ", ", labels[k].c_str(), p[k]);
      others += item;
    }
    std::fprintf(log, "%s %.3f (%s)  %s\n", labels[best].c_str(), p[best], others.c_str(),
                 valid_utf8(texts[t]).c_str());
    predictions.push_back({{"text", valid_utf8(texts[t])},
                           {"label", labels[best]},
                           {"label_id", best},
                           {"probabilities", probs}});
  }
  return {{"model", loaded.dir}, {"labels", labels}, {"predictions", predictions}, {"seconds", seconds}};
}

// ---- qkv info ------------------------------------------------------------------------

std::optional<json> encoder_run_info(const std::string& path, std::FILE* log) {
  std::error_code ec;
  const fs::path dir(path), config_path = dir / kRunConfig;
  if (!fs::is_directory(dir, ec) || !fs::is_regular_file(dir / kCheckpoint, ec) ||
      !fs::is_regular_file(config_path, ec))
    return std::nullopt;
  const json config = json::parse(read_file(config_path.string(), "run config"), nullptr, false);
  if (!config.is_object() || !config.contains("task") ||
      (config["task"] != "classify" && config["task"] != "mlm"))
    return std::nullopt;
  std::fprintf(log, "qkv train --task %s run %s\n", config["task"].get<std::string>().c_str(),
               path.c_str());
  json out = run_info((dir / kCheckpoint).string(), log);
  out["run"] = path;
  out["config"] = config;
  if (fs::is_directory(dir / kModelDir, ec)) out["model"] = run_info((dir / kModelDir).string(), log);
  return out;
}

}  // namespace qkv::cli
