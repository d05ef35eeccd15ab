// Sentence embeddings as sentence-transformers computes them
// (sentence_transformers/models/Pooling.py and Normalize.py): token vectors of
// a BERT encoder pooled over the attention mask, then optionally L2-normalised.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "models/hf_directory.h"
#include "qkv/bert.h"
#include "qkv/error.h"

namespace qkv {

using json = nlohmann::json;

namespace {

constexpr const char* kLoad = "SentenceEncoder.load";

// A pooling mode's name in 1_Pooling/config.json (sentence-transformers'
// PoolingMode), or nullopt for the ones qkv does not compute.
std::optional<SentencePooling> pooling_named(const std::string& name) {
  return value_named(kSentencePoolingNames, name);
}

// 1_Pooling/config.json, either form sentence-transformers writes: "pooling_mode"
// (a name or a list of them, v6) or the older "pooling_mode_*" switches. One
// mode at a time (several are concatenated by sentence-transformers); none
// switched on means mean, as sentence-transformers reads it.
SentencePooling read_pooling(const std::string& path, int64_t hidden_size) {
  const json j = models::detail::read_json(path, kLoad);
  QKV_CHECK(j.is_object(), kLoad, ": '", path, "' is not a JSON object");
  for (const char* key : {"embedding_dimension", "word_embedding_dimension"})
    if (const auto dim = j.find(key); dim != j.end())
      QKV_CHECK(dim->is_number_integer() && dim->get<int64_t>() == hidden_size, kLoad, ": '", path,
                "': ", key, " ", dim->dump(), " differs from the model's hidden_size ",
                hidden_size);
  std::vector<std::string> modes;
  if (const auto mode = j.find("pooling_mode"); mode != j.end()) {
    for (const json& m : mode->is_array() ? *mode : json::array({*mode})) {
      QKV_CHECK(m.is_string(), kLoad, ": '", path, "': pooling_mode holds ", m.dump(),
                ", not a mode name");
      modes.push_back(m.get<std::string>());
    }
  } else {
    const std::pair<const char*, const char*> legacy[] = {
        {"pooling_mode_cls_token", "cls"},
        {"pooling_mode_max_tokens", "max"},
        {"pooling_mode_mean_tokens", "mean"},
        {"pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"},
        {"pooling_mode_weightedmean_tokens", "weightedmean"},
        {"pooling_mode_lasttoken", "lasttoken"}};
    for (const auto& [key, name] : legacy) {
      const auto it = j.find(key);
      if (it == j.end()) continue;
      QKV_CHECK(it->is_boolean(), kLoad, ": '", path, "': \"", key,
                "\" must be true or false, got ", it->dump());
      if (it->get<bool>()) modes.push_back(name);
    }
    if (modes.empty()) modes.push_back("mean");
  }
  QKV_CHECK(modes.size() == 1, kLoad, ": '", path, "' asks for ", modes.size(),
            " pooling modes at once (", j.dump(), "); qkv pools one way at a time");
  const std::optional<SentencePooling> p = pooling_named(modes[0]);
  QKV_CHECK(p, kLoad, ": '", path, "': pooling mode \"", modes[0],
            "\" is not supported (mean, cls, max, mean_sqrt_len_tokens)");
  return *p;
}

// The [B, L] attention mask as f32 weights (nonzero -> 1).
std::vector<float> mask_weights(const Tensor& mask, int64_t b, int64_t l) {
  std::vector<float> w(static_cast<size_t>(b * l), 1.0f);
  if (!mask.defined()) return w;
  QKV_CHECK(mask.dim() == 2 && mask.size(0) == b && mask.size(1) == l,
            "pool_tokens: attention_mask has shape ", shape_string(mask.shape()), "; expected [", b,
            ", ", l, "]");
  const Tensor m = mask.to(DType::f32).contiguous();
  for (int64_t i = 0; i < b * l; ++i) w[i] = m.data<float>()[i] != 0.0f ? 1.0f : 0.0f;
  return w;
}

}  // namespace

Tensor pool_tokens(const Tensor& hidden, const Tensor& attention_mask, SentencePooling pooling) {
  QKV_CHECK(hidden.defined() && hidden.dim() == 3, "pool_tokens: hidden must be [B, L, H], got ",
            hidden.defined() ? shape_string(hidden.shape()) : "undefined");
  const int64_t b = hidden.size(0), l = hidden.size(1), h = hidden.size(2);
  const std::vector<float> keep = mask_weights(attention_mask, b, l);
  const Tensor x = hidden.to(DType::f32).contiguous();
  Tensor out = Tensor::zeros({b, h});
  std::vector<double> acc(static_cast<size_t>(h));
  for (int64_t i = 0; i < b; ++i) {
    const float* rows = x.data<float>() + i * l * h;
    float* dst = out.data<float>() + i * h;
    if (pooling == SentencePooling::cls) {
      // The first token the mask keeps (left padding allowed), as
      // sentence-transformers gathers it.
      int64_t first = 0;
      while (first < l - 1 && keep[i * l + first] == 0) ++first;
      std::copy(rows + first * h, rows + (first + 1) * h, dst);
      continue;
    }
    double count = 0;
    if (pooling == SentencePooling::max) {
      // Over the kept tokens (sentence-transformers fills padding with -inf).
      std::fill(acc.begin(), acc.end(), -std::numeric_limits<double>::infinity());
      for (int64_t t = 0; t < l; ++t)
        if (keep[i * l + t] != 0)
          for (int64_t j = 0; j < h; ++j) acc[j] = std::max(acc[j], double{rows[t * h + j]});
      for (int64_t j = 0; j < h; ++j) dst[j] = static_cast<float>(acc[j]);
      continue;
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t t = 0; t < l; ++t) {
      if (keep[i * l + t] == 0) continue;
      count += 1;
      for (int64_t j = 0; j < h; ++j) acc[j] += rows[t * h + j];
    }
    // The count clamped at 1e-9, as sentence-transformers does (a row of only
    // padding pools to 0).
    const double divisor =
        pooling == SentencePooling::mean ? std::max(count, 1e-9) : std::sqrt(std::max(count, 1e-9));
    for (int64_t j = 0; j < h; ++j) dst[j] = static_cast<float>(acc[j] / divisor);
  }
  return out;
}

Tensor l2_normalize_rows(const Tensor& x) {
  QKV_CHECK(x.defined() && x.dim() == 2, "l2_normalize_rows: x must be [B, H], got ",
            x.defined() ? shape_string(x.shape()) : "undefined");
  Tensor out = x.to(DType::f32).contiguous().clone();
  const int64_t b = out.size(0), h = out.size(1);
  for (int64_t i = 0; i < b; ++i) {
    float* row = out.data<float>() + i * h;
    double norm = 0;
    for (int64_t j = 0; j < h; ++j) norm += double{row[j]} * row[j];
    const double inv = 1.0 / std::max(std::sqrt(norm), 1e-12);
    for (int64_t j = 0; j < h; ++j) row[j] = static_cast<float>(row[j] * inv);
  }
  return out;
}

SentenceEncoder SentenceEncoder::load(const std::string& dir,
                                      const SentenceEncoderOptions& options) {
  using models::detail::file_exists;
  using models::detail::join_path;
  QKV_CHECK(options.dtype == DType::f32 || options.dtype == DType::bf16, kLoad,
            ": dtype must be f32 or bf16, got ", dtype_name(options.dtype));
  SentenceEncoder e;
  e.dtype_ = options.dtype;
  std::string model_dir = dir, pooling_config;
  bool normalize = false;
  const std::string modules_path = join_path(dir, "modules.json");
  if (file_exists(modules_path)) {
    // [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    // ...]
    const json modules = models::detail::read_json(modules_path, kLoad);
    QKV_CHECK(modules.is_array(), kLoad, ": '", modules_path, "' is not a list of modules");
    bool transformer = false;
    for (const json& m : modules) {
      QKV_CHECK(m.is_object() && m.contains("type") && m["type"].is_string() &&
                    (!m.contains("path") || m["path"].is_string()),
                kLoad, ": '", modules_path, "': module ", m.dump(),
                " has no \"type\" and \"path\" strings");
      const std::string type = m["type"].get<std::string>();
      const std::string path = m.value("path", std::string());
      const std::string kind = type.substr(type.rfind('.') + 1);
      if (kind == "Transformer") {
        QKV_CHECK(!transformer, kLoad, ": '", modules_path, "' lists two Transformer modules");
        transformer = true;
        model_dir = path.empty() ? dir : join_path(dir, path);
      } else if (kind == "Pooling") {
        pooling_config = join_path(join_path(dir, path), "config.json");
      } else if (kind == "Normalize") {
        normalize = true;
      } else {
        throw Error(qkv::detail::str(kLoad, ": '", modules_path, "': module type \"", type,
                                     "\" is not supported (Transformer, Pooling, Normalize)"));
      }
    }
    QKV_CHECK(transformer, kLoad, ": '", modules_path, "' lists no Transformer module");
    QKV_CHECK(!pooling_config.empty(), kLoad, ": '", modules_path,
              "' lists no Pooling module (token embeddings are not sentence embeddings)");
  }
  e.model_ = nn::BertModel::from_pretrained(model_dir);
  const int64_t hidden = e.model_->config().hidden_size;
  e.pooling_ =
      pooling_config.empty() ? SentencePooling::mean : read_pooling(pooling_config, hidden);
  e.normalize_ = options.normalize.value_or(normalize);
  e.max_seq_length_ = e.model_->config().max_position_embeddings;
  // The tokenizer beside the weights (sentence-transformers' Transformer
  // module), else in the top directory.
  for (const std::string& where : {model_dir, dir}) {
    if (!file_exists(join_path(where, "tokenizer.json")) &&
        !file_exists(join_path(where, "vocab.txt")))
      continue;
    try {
      e.tokenizer_ = std::make_shared<const text::WordPiece>(text::WordPiece::load(where));
    } catch (const Error& err) {
      throw Error(qkv::detail::str(kLoad, ": ", err.what()));
    }
    break;
  }
  e.dir_ = dir;
  for (const std::string& where : {model_dir, dir}) {
    const std::string path = join_path(where, "sentence_bert_config.json");
    if (!file_exists(path)) continue;
    const json j = models::detail::read_json(path, kLoad);
    if (const auto it = j.find("max_seq_length"); it != j.end() && !it->is_null()) {
      QKV_CHECK(it->is_number_integer() && it->get<int64_t>() > 0, kLoad, ": '", path,
                "': max_seq_length must be a positive integer, got ", it->dump());
      e.max_seq_length_ = std::min(it->get<int64_t>(), e.max_seq_length_);
    }
    break;
  }
  if (e.tokenizer_) {
    // sentence-transformers truncates at max_seq_length ("longest_first");
    // embed() pads each batch itself.
    auto tokenizer = std::make_shared<text::WordPiece>(*e.tokenizer_);
    tokenizer->set_truncation(
        text::Truncation{.max_length = static_cast<size_t>(e.max_seq_length_)});
    tokenizer->set_padding(std::nullopt);
    e.tokenizer_ = std::move(tokenizer);
  }
  return e;
}

Tensor SentenceEncoder::embed(const std::vector<std::string>& texts, int64_t batch_size) const {
  QKV_CHECK(tokenizer_, "SentenceEncoder.embed: '", dir_,
            "' has no tokenizer (tokenizer.json or vocab.txt); pass token ids instead");
  QKV_CHECK(batch_size > 0, "SentenceEncoder.embed: batch_size must be positive, got ", batch_size);
  const int64_t n = static_cast<int64_t>(texts.size()), h = dimension();
  Tensor out = Tensor::empty({n, h});
  if (n == 0) return out;
  const std::vector<text::Encoding> encoded = tokenizer_->encode_batch(texts);
  // Batches of similar lengths waste little on padding (sentence-transformers
  // sorts by length too); each batch is padded to its longest text.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return encoded[a].size() > encoded[b].size(); });
  const int64_t pad = tokenizer_->pad_id().value_or(0);
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t count = std::min(batch_size, n - start);
    const int64_t l = static_cast<int64_t>(encoded[order[start]].size());
    Tensor ids = Tensor::full({count, l}, static_cast<double>(pad), DType::i64);
    Tensor mask = Tensor::zeros({count, l}, DType::i64),
           types = Tensor::zeros({count, l}, DType::i64);
    for (int64_t i = 0; i < count; ++i) {
      const text::Encoding& e = encoded[order[start + i]];
      for (size_t t = 0; t < e.size(); ++t) {
        ids.data<int64_t>()[i * l + t] = e.ids[t];
        mask.data<int64_t>()[i * l + t] = e.attention_mask[t];
        types.data<int64_t>()[i * l + t] = e.type_ids[t];
      }
    }
    const Tensor rows = embed(ids, mask, types);
    for (int64_t i = 0; i < count; ++i) out.select(0, order[start + i]).copy_(rows.select(0, i));
  }
  return out;
}

Tensor SentenceEncoder::embed(const Tensor& input_ids, const Tensor& attention_mask,
                              const Tensor& token_type_ids) const {
  autograd::NoGradGuard no_grad;
  autograd::AutocastGuard autocast(dtype_ == DType::bf16);
  const nn::BertOutput out =
      model_->forward(input_ids, attention_mask, token_type_ids, {.pooler = false});
  const Tensor pooled = pool_tokens(out.last_hidden_state.value(), attention_mask, pooling_);
  return normalize_ ? l2_normalize_rows(pooled) : pooled;
}

}  // namespace qkv
