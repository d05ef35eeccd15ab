// Learned position embeddings, token-type embeddings and the segmented
// positional encoding (SPEC §2), all on the embedding ops of qkv/ops.h: the
// forward is a row gather, the backward its deterministic scatter-add.
#include "qkv/embeddings.h"

#include <algorithm>

#include "nn/state_dict.h"
#include "qkv/ops.h"
#include "qkv/positions.h"

namespace qkv::nn {
namespace {

// i64 [length] with values first, first + 1, ...
Tensor range_ids(int64_t first, int64_t length) {
  Tensor ids = Tensor::empty({length}, DType::i64);
  int64_t* p = ids.data<int64_t>();
  for (int64_t i = 0; i < length; ++i) p[i] = first + i;
  return ids;
}

// embedding(), with the module named first in its errors.
Tensor lookup(const char* module, const Tensor& weight, const Tensor& ids) {
  try {
    return embedding(weight, ids);
  } catch (const Error& e) {
    throw Error(qkv::detail::str(module, ".forward: ", e.what()));
  }
}

// The gradient of lookup(): grad must have the shape of the latest forward's output.
Tensor lookup_backward(const char* module, const Tensor& grad, const Tensor& ids,
                       const Tensor& weight) {
  QKV_CHECK(ids.defined(), module, ".backward: called before forward");
  Shape want = ids.shape();
  want.push_back(weight.size(1));
  QKV_CHECK(grad.defined() && grad.shape() == want, module, ".backward: grad must be ",
            shape_string(want), " (the latest forward's output), got ",
            grad.defined() ? shape_string(grad.shape()) : "undefined");
  return embedding_backward(grad, ids, weight.size(0));
}

}  // namespace

// --- LearnedPositionEmbedding ---

LearnedPositionEmbedding::LearnedPositionEmbedding(const LearnedPositionEmbeddingConfig& config,
                                                   Generator& generator)
    : config_(config) {
  QKV_CHECK(config.max_positions > 0 && config.dim > 0, "LearnedPositionEmbedding: max_positions ",
            config.max_positions, " and dim ", config.dim, " must be positive");
  parameters_["weight"] = randn({config.max_positions, config.dim}, generator);
}

void LearnedPositionEmbedding::load_state_dict(const std::map<std::string, Tensor>& state) {
  detail::load_state_dict("LearnedPositionEmbedding", parameters_, state, /*strict=*/true);
}

Tensor LearnedPositionEmbedding::forward(int64_t length, int64_t offset) {
  QKV_CHECK(length >= 0 && offset >= 0, "LearnedPositionEmbedding.forward: length ", length,
            " and offset ", offset, " must be >= 0");
  QKV_CHECK(offset + length <= config_.max_positions,
            "LearnedPositionEmbedding.forward: positions ", offset, " .. ", offset + length - 1,
            " (offset ", offset, " + length ", length, ") go past max_positions ",
            config_.max_positions);
  return forward(range_ids(offset, length));
}

Tensor LearnedPositionEmbedding::forward(const Tensor& position_ids) {
  Tensor out = lookup("LearnedPositionEmbedding", parameters_.at("weight"), position_ids);
  saved_ids_ = position_ids;
  return out;
}

std::map<std::string, Tensor> LearnedPositionEmbedding::backward(const Tensor& grad) {
  return {{"weight", lookup_backward("LearnedPositionEmbedding", grad, saved_ids_,
                                     parameters_.at("weight"))}};
}

// --- TokenTypeEmbedding ---

TokenTypeEmbedding::TokenTypeEmbedding(const TokenTypeEmbeddingConfig& config, Generator& generator)
    : config_(config) {
  QKV_CHECK(config.types > 0 && config.dim > 0, "TokenTypeEmbedding: types ", config.types,
            " and dim ", config.dim, " must be positive");
  parameters_["weight"] = randn({config.types, config.dim}, generator);
}

void TokenTypeEmbedding::load_state_dict(const std::map<std::string, Tensor>& state) {
  detail::load_state_dict("TokenTypeEmbedding", parameters_, state, /*strict=*/true);
}

Tensor TokenTypeEmbedding::forward(const Tensor& token_type_ids) {
  Tensor out = lookup("TokenTypeEmbedding", parameters_.at("weight"), token_type_ids);
  saved_ids_ = token_type_ids;
  return out;
}

std::map<std::string, Tensor> TokenTypeEmbedding::backward(const Tensor& grad) {
  return {{"weight",
           lookup_backward("TokenTypeEmbedding", grad, saved_ids_, parameters_.at("weight"))}};
}

// --- SegmentedPositionEncoding ---

SegmentedPositionEncoding::SegmentedPositionEncoding(const SegmentedPositionEncodingConfig& config,
                                                     Generator& generator)
    : config_(config) {
  QKV_CHECK(config.segments > 0 && config.dim > 0, "SegmentedPositionEncoding: segments ",
            config.segments, " and dim ", config.dim, " must be positive");
  QKV_CHECK(config.base > 0, "SegmentedPositionEncoding: base must be positive, got ", config.base);
  if (config.segment_embedding == SegmentEmbedding::learned)
    parameters_["segment_embedding.weight"] = randn({config.segments, config.dim}, generator);
}

void SegmentedPositionEncoding::load_state_dict(const std::map<std::string, Tensor>& state) {
  detail::load_state_dict("SegmentedPositionEncoding", parameters_, state, /*strict=*/true);
}

Tensor SegmentedPositionEncoding::segment_ids(int64_t n) const {
  const int64_t m = (n + config_.segments - 1) / config_.segments;
  Tensor ids = Tensor::empty({n}, DType::i64);
  int64_t* p = ids.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) p[i] = i / m;  // < k, as m >= n / k
  return ids;
}

Tensor SegmentedPositionEncoding::forward(int64_t n) {
  QKV_CHECK(n >= 0, "SegmentedPositionEncoding.forward: length n must be >= 0, got ", n);
  const int64_t k = config_.segments, d = config_.dim;
  const int64_t m = (n + k - 1) / k;
  // Within-segment indices 0 .. m-1 repeat, so the encoding is the [m, d]
  // table tiled (the last segment may be cut short).
  const Tensor within = sinusoidal_positions(m, d, config_.base);
  Tensor out = Tensor::empty({n, d});
  for (int64_t s = 0; s * m < n; ++s) {
    const int64_t rows = std::min(m, n - s * m);
    out.narrow(0, s * m, rows).copy_(within.narrow(0, 0, rows));
  }
  saved_length_ = n;
  if (config_.segment_embedding == SegmentEmbedding::none || n == 0) return out;
  const Tensor table = config_.segment_embedding == SegmentEmbedding::learned
                           ? parameters_.at("segment_embedding.weight")
                           : sinusoidal_positions(k, d, config_.base);
  return add(out, embedding(table, segment_ids(n)));
}

std::map<std::string, Tensor> SegmentedPositionEncoding::backward(const Tensor& grad) {
  const char* op = "SegmentedPositionEncoding.backward";
  QKV_CHECK(saved_length_ >= 0, op, ": called before forward");
  const Shape want{saved_length_, config_.dim};
  QKV_CHECK(grad.defined() && grad.shape() == want, op, ": grad must be ", shape_string(want),
            " (the latest forward's output), got ",
            grad.defined() ? shape_string(grad.shape()) : "undefined");
  if (config_.segment_embedding != SegmentEmbedding::learned) return {};
  return {{"segment_embedding.weight",
           embedding_backward(grad, segment_ids(saved_length_), config_.segments)}};
}

}  // namespace qkv::nn
