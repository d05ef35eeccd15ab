// Scaled dot-product attention (SPEC §1): one front door for every layout,
// mask and head arrangement.
//
//   out[b, h, i, :] = sum_j softmax_j(scale * q[b,h,i,:] . k[b,g(h),j,:] + mask[b,h,i,j])
//   v[b,g(h),j,:]
//
// with g(h) = h / (Hq / Hkv) for grouped-query and multi-query attention.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "qkv/modifiers.h"
#include "qkv/tensor.h"

namespace qkv {

// How q, k, v and the output are laid out. Either is read through strides, so
// a [B, L, H, D] projection output needs no transpose copy.
enum class AttentionLayout { bhld, blhd };  // [B, H, L, D] or [B, L, H, D]

// Causal masking. When Lq != Lk, top-left alignment lets query i see keys
// j <= i (torch's is_causal); bottom-right lets it see j <= i + Lk - Lq (decode
// with a KV cache, where the queries are the last Lq positions).
enum class Causal { none, top_left, bottom_right };

struct AttentionOptions {
  AttentionLayout layout = AttentionLayout::bhld;
  std::optional<double> scale;  // default 1 / sqrt(D)
  Causal causal = Causal::none;
  // Boolean (true = may attend) or additive float bias, broadcastable to
  // [B, Hq, Lq, Lk] (torch's attn_mask).
  Tensor mask;
  // [B, Lk] boolean, true = padding, never attended (torch.nn.MultiheadAttention's
  // key_padding_mask convention).
  Tensor key_padding_mask;
  // FlexAttention-style modifiers (qkv/modifiers.h), evaluated inside the
  // fused kernels; blocks the mask modifier hides entirely are skipped.
  MaskModPtr mask_mod;
  ScoreModPtr score_mod;
  // Dropout on the attention weights (training): each weight is zeroed with
  // probability `dropout` and the kept ones scaled by 1 / (1 - dropout). The
  // mask is a pure function of (dropout_seed, batch, head, query, key), so a
  // seed reproduces it exactly, in the backward too; see attention_dropout_mask.
  double dropout = 0.0;
  uint64_t dropout_seed = 0;
  bool return_lse = false;  // per-row log-sum-exp of the scaled, masked scores
  // Query heads whose attention weights to return (before dropout). The fused
  // path recomputes them from the log-sum-exp, so only these heads get an
  // Lq x Lk buffer.
  std::vector<int64_t> weights_heads;
};

struct AttentionResult {
  Tensor output;   // f32, q's layout: [B, Hq, Lq, Dv] or [B, Lq, Hq, Dv]
  Tensor lse;      // f32 [B, Hq, Lq] when asked for; -inf for a fully masked row
  Tensor weights;  // f32 [B, len(weights_heads), Lq, Lk] when asked for
};

// The fused kernel: tiled with an online softmax, O(L) extra memory, masked
// tiles skipped. q, k, v: f32 or bf16 (all the same), accumulation in f32.
// A query row whose keys are all masked gives output 0 and log-sum-exp -inf.
AttentionResult attention(const Tensor& q, const Tensor& k, const Tensor& v,
                          const AttentionOptions& options = {});

struct AttentionGradients {
  Tensor grad_q, grad_k, grad_v;  // f32, in the layout and shape of q, k, v
  Tensor grad_mask;               // f32 in the float mask's shape, when asked for
  // Gradients of options.score_mod->parameters() (learned biases), in order.
  std::vector<Tensor> grad_score_mod;
};

// The backward of attention(): dQ, dK, dV from dO, recomputing the
// probabilities from the forward's log-sum-exp (run the forward with
// return_lse = true and pass its result). With mask_requires_grad, also the
// gradient of an additive float mask, summed over the dims it broadcast over.
// A fully masked query row gets zero gradients.
AttentionGradients attention_backward(const Tensor& grad_output, const Tensor& q, const Tensor& k,
                                      const Tensor& v, const AttentionResult& forward,
                                      const AttentionOptions& options = {},
                                      bool mask_requires_grad = false);

// The oracle: materialises the scores and accumulates in double. Same
// arguments and semantics as attention(); for tests and small problems.
AttentionResult attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options = {});
// The backward oracle, in double from q, k, v alone (no saved state).
AttentionGradients attention_backward_reference(const Tensor& grad_output, const Tensor& q,
                                                const Tensor& k, const Tensor& v,
                                                const AttentionOptions& options = {},
                                                bool mask_requires_grad = false);

// The dropout mask attention() applies for these options (true = kept), as a
// bool [B, Hq, Lq, Lk] tensor: for tests and for reproducing a training step.
Tensor attention_dropout_mask(int64_t batch, int64_t heads, int64_t lq, int64_t lk, double dropout,
                              uint64_t seed);

}  // namespace qkv
