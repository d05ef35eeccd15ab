// The other scoring functions of SPEC §1. The default, scaled dot product
// (and the plain dot product: AttentionOptions::scale = 1), runs in the fused
// kernel of attention.h; these take their own paths, exact and differentiable.
// Masks, modifiers, dropout and layouts work as in attention(); the scale
// defaults to 1 here (neither paper scales).
#pragma once

#include "qkv/attention.h"

namespace qkv {

// Luong et al. 2015, "general" (multiplicative): s_ij = q_i^T W k_j, W: [Dq, Dk].
// Computed as the fused attention of (q W, k, v).
AttentionResult general_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& w, AttentionOptions options = {});
struct GeneralAttentionGradients {
  AttentionGradients inputs;  // q, k, v (and the float mask when asked for)
  Tensor grad_w;              // [Dq, Dk]
};
GeneralAttentionGradients general_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                     const Tensor& k, const Tensor& v,
                                                     const Tensor& w,
                                                     const AttentionResult& forward,
                                                     AttentionOptions options = {},
                                                     bool mask_requires_grad = false);

// Bahdanau et al. 2015, additive (concat): s_ij = v_a^T tanh(W_q q_i + W_k k_j).
struct AdditiveScoreWeights {
  Tensor w_q;  // [A, Dq]
  Tensor w_k;  // [A, Dk]
  Tensor v;    // [A]
};
// Materialises one row of scores at a time, in double: O(Lq Lk A) work, O(Lk A) memory.
AttentionResult additive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const AdditiveScoreWeights& weights,
                                   AttentionOptions options = {});
struct AdditiveAttentionGradients {
  AttentionGradients inputs;  // q, k, v
  Tensor grad_w_q, grad_w_k, grad_v_a;
};
AdditiveAttentionGradients additive_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                       const Tensor& k, const Tensor& v,
                                                       const AdditiveScoreWeights& weights,
                                                       AttentionOptions options = {});

}  // namespace qkv
