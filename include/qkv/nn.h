// Layers built on the attention core. For now: multi-head attention with an
// explicit backward (the autograd issue will put a tape around it).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "qkv/attention.h"
#include "qkv/tensor.h"

namespace qkv::nn {

struct MultiHeadAttentionConfig {
  int64_t embed_dim = 0;
  int64_t num_heads = 1;
  bool bias = true;
  int64_t kdim = 0;  // 0: embed_dim
  int64_t vdim = 0;  // 0: embed_dim
  bool batch_first = false;
  double dropout = 0.0;  // on the attention weights, in training mode
};

struct MultiHeadAttentionInputs {
  Tensor query, key, value;  // [B, L, E] with batch_first, else [L, B, E]
  // torch.nn.MultiheadAttention's conventions: a bool attn_mask is true where
  // attention is NOT allowed; a float one is added. Shape [Lq, Lk] or
  // [B * H, Lq, Lk]. key_padding_mask: bool [B, Lk], true = padding.
  Tensor attn_mask;
  Tensor key_padding_mask;
  bool is_causal = false;
  bool need_weights = true;
  bool average_attn_weights = true;
};

struct MultiHeadAttentionOutput {
  Tensor output;   // like query, with embed_dim features
  Tensor weights;  // [B, Lq, Lk] averaged over heads, or [B, H, Lq, Lk]; when need_weights
};

struct MultiHeadAttentionGradients {
  Tensor query, key, value;            // gradients of the inputs
  std::map<std::string, Tensor> parameters;  // by parameter name
};

// torch.nn.MultiheadAttention: the same parameter names (in_proj_weight or
// q/k/v_proj_weight when kdim / vdim differ, in_proj_bias, out_proj.weight,
// out_proj.bias), the same initialisation, the same results.
class MultiHeadAttention {
 public:
  // Parameters are initialised from `generator`; dropout masks come from a
  // generator of the module's own, seeded from it.
  MultiHeadAttention(const MultiHeadAttentionConfig& config, Generator& generator);

  const MultiHeadAttentionConfig& config() const { return config_; }
  // Parameters by PyTorch's state_dict names. Tensors share storage with the
  // module: writing into one changes the module.
  const std::map<std::string, Tensor>& parameters() const { return parameters_; }
  // Copies values in; names and shapes must match exactly (strict load).
  void load_state_dict(const std::map<std::string, Tensor>& state);

  void train(bool on) { training_ = on; }
  bool training() const { return training_; }

  // Keeps what backward() needs; backward() differentiates the latest forward().
  MultiHeadAttentionOutput forward(const MultiHeadAttentionInputs& inputs);
  MultiHeadAttentionGradients backward(const Tensor& grad_output);

 private:
  struct Saved {
    MultiHeadAttentionInputs inputs;
    Tensor q, k, v;      // projections, [B, L, H, Dh] views
    AttentionResult attention;  // output [B, Lq, H, Dh] and lse
    AttentionOptions options;
  };
  Tensor weight(const char* name) const { return parameters_.at(name); }
  MultiHeadAttentionConfig config_;
  std::map<std::string, Tensor> parameters_;
  Generator dropout_generator_;
  bool training_ = true;
  Saved saved_;
  bool has_saved_ = false;
};

}  // namespace qkv::nn
