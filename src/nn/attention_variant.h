// What nn::Attention (autograd) and its explicit-backward test twin
// (tests/cpp/support/explicit_attention) share of their variants (qkv/attention_variant.h): the checks,
// the learned tensors' names and initialisation, and the options each kernel
// takes. Internal.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "qkv/attention.h"
#include "qkv/attention_variant.h"
#include "qkv/linear_attention.h"

namespace qkv::nn::detail {

// The learned tensors of a variant, in the order they are drawn, by their
// state_dict names ("relative_attention_bias.weight", "relative_key",
// "relative_value", "linformer_e", "linformer_f"), and Performer's fixed
// features [m, head_dim] (undefined for other kernels).
struct VariantTensors {
  std::vector<std::pair<std::string, Tensor>> learned;
  Tensor performer_projection;
};
// Checks the variant against the layer's sizes (errors name `op`) and draws
// its tensors from `generator`.
VariantTensors make_variant(const AttentionVariant& variant, int64_t embed_dim, int64_t num_heads,
                            int64_t vdim, Generator& generator, const char* op);

// Performer's features drawn again with `seed` [m, head_dim]; throws
// (naming `op`) for another kernel.
Tensor redraw_performer_features(const AttentionVariant& variant, int64_t head_dim, uint64_t seed,
                                 const char* op);

// The options of the layer's [B, L, H, Dh] heads: rotary without offset,
// T5 without query offset.
RotaryOptions rotary_for_heads(RotaryOptions r);
T5BiasOptions t5_for_heads(T5BiasOptions t);

// The fixed score modifier of a softmax variant (ALiBi), or null.
ScoreModPtr fixed_score_mod(const AttentionVariant& variant, int64_t num_heads);

// The linear kernels (linformer, linear, performer) take no masks, weights or
// dropout; checks `options` and returns their options (causal from options).
LinearAttentionOptions linear_kernel_options(const AttentionVariant& variant,
                                             const AttentionOptions& options, bool need_weights,
                                             const char* op);

}  // namespace qkv::nn::detail
