// The attention variants a layer can run (SPEC §2, §3): relative positions
// inside the attention, the kernel that mixes the values, and a mask
// modifier. nn::Attention (qkv/layers.h), the one attention layer every
// model composes, takes them (and so does its explicit-backward test twin),
// with the same parameter names. The default is plain softmax attention.
#pragma once

#include <cstdint>

#include "qkv/modifiers.h"
#include "qkv/names.h"
#include "qkv/positions.h"

namespace qkv::nn {

// Relative positional information inside the attention (SPEC §2). Absolute
// encodings (sinusoidal, learned) are added to the inputs, outside the layer.
enum class AttentionPositions {
  none,
  alibi,   // the paper's slopes for num_heads
  t5,      // learned "relative_attention_bias.weight" [num_buckets, num_heads]
  rotary,  // q and k rotated (RoPE)
  shaw,    // learned "relative_key" / "relative_value" [2k + 1, head_dim]
};

// What computes the heads' mixing (SPEC §3). Mask-defined variants (windows,
// sparse patterns, BigBird, Longformer) stay softmax with a mask_mod.
enum class AttentionKernel {
  softmax,    // exact, fused
  linformer,  // learned "linformer_e" / "linformer_f" projecting max_length -> linformer_k
  linear,     // elu + 1 feature map (causal by prefix sums)
  performer,  // FAVOR+ positive orthogonal random features (not learned; redraw_features)
};

// The names configs, messages and Python use (qkv/names.h).
inline constexpr EnumNames<AttentionPositions, 5> kAttentionPositionNames{{
    {AttentionPositions::none, "none"},
    {AttentionPositions::alibi, "alibi"},
    {AttentionPositions::t5, "t5"},
    {AttentionPositions::rotary, "rotary"},
    {AttentionPositions::shaw, "shaw"},
}};
inline constexpr EnumNames<AttentionKernel, 4> kAttentionKernelNames{{
    {AttentionKernel::softmax, "softmax"},
    {AttentionKernel::linformer, "linformer"},
    {AttentionKernel::linear, "linear"},
    {AttentionKernel::performer, "performer"},
}};

struct AttentionVariant {
  // Efficient attention by mask (qkv/sparse_masks.h, qkv/modifiers.h): hidden
  // pairs never attended, hidden blocks never computed. Softmax kernel only.
  MaskModPtr mask_mod;
  AttentionPositions positions = AttentionPositions::none;
  T5BiasOptions t5;                // positions == t5 (query_offset ignored)
  int64_t shaw_max_distance = 16;  // positions == shaw: the clipping distance k
  RotaryOptions rotary;            // positions == rotary (layout and offset ignored)
  AttentionKernel kernel = AttentionKernel::softmax;
  int64_t max_length = 0;            // linformer: the key length n its projections take
  int64_t linformer_k = 256;         // linformer: the projected length
  bool linformer_per_head = false;   // linformer: [H, k, n] projections instead of shared [k, n]
  int64_t performer_features = 256;  // performer: random features m
  uint64_t performer_seed = 0;       // performer: the first draw
};

}  // namespace qkv::nn
