// Embedding layers for positions and segments (SPEC §2): learned absolute
// positions (BERT, GPT-2, ViT), token-type embeddings (BERT's sentence A / B)
// and the segmented positional encoding, each with an explicit backward.
//
// They follow the explicit-backward pattern: parameters by PyTorch's
// state_dict names, sharing storage with the module; a strict load_state_dict;
// forward() keeps what backward() needs, and backward() differentiates the
// latest forward(), returning the parameters' gradients by name.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "qkv/tensor.h"

namespace qkv::nn {

struct LearnedPositionEmbeddingConfig {
  int64_t max_positions = 0;
  int64_t dim = 0;
};

// torch.nn.Embedding(max_positions, dim) indexed by position: "weight"
// [max_positions, dim], initialised N(0, 1) as torch.nn.Embedding does.
class LearnedPositionEmbedding {
 public:
  LearnedPositionEmbedding(const LearnedPositionEmbeddingConfig& config, Generator& generator);

  const LearnedPositionEmbeddingConfig& config() const { return config_; }
  const std::map<std::string, Tensor>& parameters() const { return parameters_; }
  void load_state_dict(const std::map<std::string, Tensor>& state);

  // Positions offset .. offset + length - 1 -> [length, dim] f32 (with a KV
  // cache, offset is the number of tokens already seen).
  Tensor forward(int64_t length, int64_t offset = 0);
  // Explicit positions (i32 / i64, any shape) -> [..., dim] f32.
  Tensor forward(const Tensor& position_ids);
  // grad: the latest forward's shape -> {"weight": [max_positions, dim]}.
  std::map<std::string, Tensor> backward(const Tensor& grad);

 private:
  LearnedPositionEmbeddingConfig config_;
  std::map<std::string, Tensor> parameters_;
  Tensor saved_ids_;
};

struct TokenTypeEmbeddingConfig {
  int64_t types = 2;
  int64_t dim = 0;
};

// BERT's token_type_embeddings: "weight" [types, dim], N(0, 1).
class TokenTypeEmbedding {
 public:
  TokenTypeEmbedding(const TokenTypeEmbeddingConfig& config, Generator& generator);

  const TokenTypeEmbeddingConfig& config() const { return config_; }
  const std::map<std::string, Tensor>& parameters() const { return parameters_; }
  void load_state_dict(const std::map<std::string, Tensor>& state);

  // token_type_ids: i32 / i64 [B, L] (any shape works) -> [B, L, dim] f32.
  Tensor forward(const Tensor& token_type_ids);
  // grad: [B, L, dim] -> {"weight": [types, dim]}.
  std::map<std::string, Tensor> backward(const Tensor& grad);

 private:
  TokenTypeEmbeddingConfig config_;
  std::map<std::string, Tensor> parameters_;
  Tensor saved_ids_;
};

// What is added for the segment index in the segmented positional encoding.
enum class SegmentEmbedding {
  none,        // the position within the segment only
  sinusoidal,  // + the sinusoidal encoding of the segment index
  learned,     // + a learned table "segment_embedding.weight" [segments, dim]
};

struct SegmentedPositionEncodingConfig {
  int64_t segments = 1;  // k
  int64_t dim = 0;
  SegmentEmbedding segment_embedding = SegmentEmbedding::none;
  double base = 10000.0;  // of the sinusoidal tables
};

// SPEC §2: a sequence of length n is split into k segments of length
// m = ceil(n / k); position p is encoded by the sinusoidal encoding of
// p mod m (its index within its segment), plus, optionally, an embedding of
// its segment index p / m (< k). The tables are sinusoidal_positions().
class SegmentedPositionEncoding {
 public:
  SegmentedPositionEncoding(const SegmentedPositionEncodingConfig& config, Generator& generator);

  const SegmentedPositionEncodingConfig& config() const { return config_; }
  // Empty unless segment_embedding is learned.
  const std::map<std::string, Tensor>& parameters() const { return parameters_; }
  void load_state_dict(const std::map<std::string, Tensor>& state);

  // -> [n, dim] f32.
  Tensor forward(int64_t n);
  // grad: [n, dim] of the latest forward -> {"segment_embedding.weight": [k, dim]}
  // when learned, else no gradients.
  std::map<std::string, Tensor> backward(const Tensor& grad);

 private:
  // Segment index of every position of a length-n sequence, i64 [n].
  Tensor segment_ids(int64_t n) const;
  SegmentedPositionEncodingConfig config_;
  std::map<std::string, Tensor> parameters_;
  int64_t saved_length_ = -1;
};

}  // namespace qkv::nn
