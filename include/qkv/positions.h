// Positional information (SPEC §2): sinusoidal tables, rotary embeddings and
// ALiBi. Bias-type encodings are score modifiers (qkv/modifiers.h), applied
// inside the fused kernel with no Lq x Lk bias tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "qkv/attention.h"
#include "qkv/modifiers.h"

namespace qkv {

// Vaswani et al. 2017: PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(...).
// [length, dim] f32; dim may be odd (the last column is a sine).
Tensor sinusoidal_positions(int64_t length, int64_t dim, double base = 10000.0);

// ALiBi (Press et al. 2022): the head slopes of the paper's reference code,
// 2^(-8 i / n) for n a power of two, and for other head counts the closest
// power of two below, completed by every other slope of twice as many heads.
std::vector<float> alibi_slopes(int64_t heads);
// score += -slope[head] * |q - kv| (for causal attention that is the paper's
// -slope * (q - kv)). With query_offset, query i sits at position i + offset
// (decode against a KV cache).
ScoreModPtr alibi_score(std::vector<float> slopes, int64_t query_offset = 0);

// T5's relative position buckets (Raffel et al. 2020, as transformers'
// T5Attention._relative_position_bucket) of relative_position = key - query:
// exact below num_buckets / 4 (bidirectional) or / 2 (causal), logarithmic up
// to max_distance, one bucket beyond; bidirectional halves the buckets by sign.
struct T5BiasOptions {
  bool bidirectional = true;  // false: decoder self-attention (later keys share bucket 0)
  int64_t num_buckets = 32;
  int64_t max_distance = 128;
  int64_t query_offset = 0;  // query i sits at position i + offset (decode against a KV cache)
};
int64_t t5_relative_bucket(int64_t relative_position, const T5BiasOptions& options = {});
// score += table[bucket(kv - q - offset), head], table: [num_buckets, heads]
// (T5's relative_attention_bias.weight), read at each call. Learned:
// attention_backward() returns d loss / d table in grad_score_mod.
ScoreModPtr t5_bias_score(const Tensor& table, const T5BiasOptions& options = {});

// Shaw et al. 2018 relative positions: with r(i, j) = clip(j - i - query_offset, -k, k),
//   e_ij = scale * q_i . (k_j + a^K[r + k]),   out_i = sum_j p_ij (v_j + a^V[r + k]).
// The key term runs inside the fused kernel as a score modifier over the
// [B, H, Lq, 2k + 1] table q . a^K; the value term weights a^V by the
// probability mass of each clipped distance (no Lq x Lk buffer either way).
struct ShawPositions {
  Tensor key;                // a^K [2k + 1, D], or undefined for no key term
  Tensor value;              // a^V [2k + 1, Dv], or undefined for no value term
  int64_t max_distance = 0;  // the clipping distance k, >= 1
  int64_t query_offset = 0;
};
struct ShawResult {
  AttentionResult attention;  // output (both terms) and lse (always: the backward needs it)
  Tensor value_weights;       // [B, H, Lq, 2k + 1] probability mass per distance, with a value term
};
struct ShawGradients {
  AttentionGradients attention;  // dq, dk, dv (and the mask's and other score modifiers')
  Tensor grad_key, grad_value;   // d a^K, d a^V, when given
};
// Dropout is not supported together with a value term.
ShawResult shaw_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                          const ShawPositions& positions, const AttentionOptions& options = {});
ShawGradients shaw_attention_backward(const Tensor& grad_output, const Tensor& q, const Tensor& k,
                                      const Tensor& v, const ShawPositions& positions,
                                      const ShawResult& forward,
                                      const AttentionOptions& options = {},
                                      bool mask_requires_grad = false);

// Rotary position embeddings (Su et al. 2021), applied to q or k.
enum class RotaryStyle {
  rotate_half,  // GPT-NeoX / Llama: pairs (x[i], x[i + d/2])
  interleaved,  // GPT-J / the paper: pairs (x[2i], x[2i + 1])
};
struct RotaryOptions {
  double base = 10000.0;
  double scaling = 1.0;  // linear position scaling: angle uses position / scaling
  int64_t offset = 0;    // position of the first token (KV-cache decoding)
  RotaryStyle style = RotaryStyle::rotate_half;
  int64_t rotary_dim = 0;  // rotate only the first rotary_dim features (0: all); even
  AttentionLayout layout = AttentionLayout::bhld;
};
// x: [B, H, L, D] (or [B, L, H, D]); f32 result of x's shape. Rotating by the
// negative angles is the backward (the rotation is orthogonal).
Tensor rotary_embedding(const Tensor& x, const RotaryOptions& options = {});
Tensor rotary_embedding_backward(const Tensor& grad, const RotaryOptions& options = {});

}  // namespace qkv
