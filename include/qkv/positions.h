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
