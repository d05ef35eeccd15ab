// Sub-quadratic attention (SPEC §3): low-rank (Linformer) and kernelised
// (linear attention with elu + 1, Performer FAVOR+), forward and backward.
//
// q, k, v: [B, H, L, D] (Dv may differ from D), f32, bf16 or f64. The work
// and every result are f32 (bf16 inputs converted), or f64 when any floating
// input (q, k, v, Linformer's e and f, Performer's w) is f64: a double path
// for checking gradients (qkv/gradcheck.h), not for speed.
//
// None of these builds an Lq x Lk buffer: Linformer needs O(L kproj) memory
// per head; the kernelised forms O(L m + m Dv) without the causal mask and
// O(L (m + C) + (L / C) m Dv) with it (m features, chunks of C rows, one
// state per chunk: O(L D) for m ~ D ~ C).
#pragma once

#include <cstdint>

#include "qkv/attention.h"
#include "qkv/tensor.h"

namespace qkv {

// --- Linformer (Wang et al. 2020, "Linformer: Self-Attention with Linear
// Complexity", eq. 7): keys and values projected along the sequence, Lk -> kproj,
//
//   out = softmax(scale q (E k)^T) (F v),   E, F: [kproj, Lk] (shared by the
//   heads) or [H, kproj, Lk] (one per head),
//
// through the fused attention() on the projected keys and values. Of `options`
// only scale (default 1/sqrt(D)) and weights_heads apply: causal is rejected
// (the projection mixes future positions into every projected key), as are
// masks, modifiers and dropout; the result always carries the log-sum-exp the
// backward needs.
AttentionResult linformer_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& e, const Tensor& f,
                                    const AttentionOptions& options = {});

struct LinformerGradients {
  Tensor grad_q, grad_k, grad_v;  // f32 (f64 on the f64 path) [B, H, L, D]
  Tensor grad_e, grad_f;          // the shape of e and f, of the same dtype
};
// `forward` is linformer_attention's result (its output and log-sum-exp).
LinformerGradients linformer_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                const Tensor& k, const Tensor& v, const Tensor& e,
                                                const Tensor& f, const AttentionResult& forward,
                                                const AttentionOptions& options = {});

// --- Kernelised attention: softmax(q.k) replaced by a feature-map product,
//
//   out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),
//   S_i = sum_j phi(k_j) v_j^T,  z_i = sum_j phi(k_j),
//
// summed over every key, or over j <= i when causal (Lq must equal Lk). The
// causal prefix sums run chunked: within a chunk of C rows a masked C x C
// product, across chunks a running (S, z), so the work is matrix products of
// O(L (C + m) Dv) flops and no per-position state is stored.
struct LinearAttentionOptions {
  bool causal = false;
  double eps = 1e-6;   // added to the denominator (the papers' code uses 1e-6)
  int64_t chunk = 64;  // C, rows per chunk of the causal form
};

struct LinearAttentionGradients {
  Tensor grad_q, grad_k, grad_v;  // f32 (f64 on the f64 path) [B, H, L, D]
};

// Katharopoulos et al. 2020, "Transformers are RNNs" (eq. 6 and 9), with
// phi(x) = elu(x) + 1.
Tensor linear_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                        const LinearAttentionOptions& options = {});
// Recomputes the forward (no saved state); the causal form by reverse prefix
// sums, chunked like the forward.
LinearAttentionGradients linear_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                   const Tensor& k, const Tensor& v,
                                                   const LinearAttentionOptions& options = {});

// --- Performer FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with
// Performers", section 2.3-2.4): positive orthogonal random features.
//
// W: [m, d], ceil(m / d) stacked blocks of d orthonormal rows (each the
// orthogonalised rows of a Gaussian d x d matrix; the last block truncated),
// each row then scaled by the norm of an independent Gaussian d-vector, so
// every row is marginally N(0, I_d) while rows of one block stay orthogonal.
// Deterministic for a seed: redraw the features by calling it with another.
Tensor performer_projection(int64_t features, int64_t dim, uint64_t seed);

// The projection as a small object that can be redrawn during training.
class PerformerFeatures {
 public:
  PerformerFeatures(int64_t features, int64_t dim, uint64_t seed)
      : features_(features), dim_(dim), projection_(performer_projection(features, dim, seed)) {}
  void redraw(uint64_t seed) { projection_ = performer_projection(features_, dim_, seed); }
  const Tensor& projection() const { return projection_; }
  int64_t features() const { return features_; }
  int64_t dim() const { return dim_; }

 private:
  int64_t features_, dim_;
  Tensor projection_;
};

// Kernelised attention with the positive random features
//
//   phi(x) = exp(W x' - |x'|^2 / 2 - c) / sqrt(m),   x' = x d^(-1/4),
//
// so that E[phi(q) . phi(k)] = exp(q . k / sqrt(d)) up to the constants c:
// per query row, c is the row's largest exponent; for the keys, one c per
// (batch, head), the largest exponent over every key. Each c multiplies the
// numerator and the denominator alike, so it cancels in the ratio (up to eps)
// and only keeps exp() in range; like the paper's code it is a constant to
// the backward (no gradient flows through the max). The same chunked prefix
// sums as linear_attention; W (performer_projection) is not learned.
Tensor performer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w,
                           const LinearAttentionOptions& options = {});
LinearAttentionGradients performer_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                      const Tensor& k, const Tensor& v,
                                                      const Tensor& w,
                                                      const LinearAttentionOptions& options = {});

}  // namespace qkv
