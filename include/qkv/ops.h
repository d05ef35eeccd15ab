// Element-wise and reduction ops. Each validates its inputs and throws
// qkv::Error naming the op, the argument and the values; the kernels below
// take raw pointers and never validate.
//
// Floating inputs of any float dtype are accepted; the math runs in f32 and
// the result has the input's dtype. Outputs are new contiguous tensors.
#pragma once

#include <cstdint>
#include <limits>

#include "qkv/tensor.h"

namespace qkv {

// Broadcasting binary ops (PyTorch broadcasting rules).
Tensor add(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double factor);

Tensor exp(const Tensor& x);
Tensor silu(const Tensor& x);
enum class GeluApproximation { none, tanh };  // erf form, or the tanh form of Hendrycks & Gimpel
Tensor gelu(const Tensor& x, GeluApproximation approximation = GeluApproximation::none);

// Stable (max-subtracted) softmax and log-softmax along `dim`.
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

// Normalisation over the last dimension. `weight` / `bias` may be undefined
// (no affine part); when defined their shape is [x.size(-1)].
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// eps defaults to f32 machine epsilon, as torch.nn.functional.rms_norm does.
Tensor rms_norm(const Tensor& x, const Tensor& weight,
                double eps = std::numeric_limits<float>::epsilon());

// Reductions along `dim`, or over every element when called without one.
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor sum(const Tensor& x);
Tensor mean(const Tensor& x);
Tensor max(const Tensor& x);

// Row gather: out[..., :] = weight[ids[...], :] (torch.nn.functional.embedding).
// weight: [N, D] f32, bf16 or f16; ids: i32 or i64 of any shape, each in
// [0, N) (else qkv::Error naming the id, its position and N). -> [..., D] f32.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// Its gradient: grad [..., D] (ids' shape plus D) scatter-added into the rows
// the ids name -> [num_embeddings, D] f32. Deterministic (the same bits for
// any thread count); the row padding_idx gets no gradient (-1: none), as in
// torch.nn.Embedding.
Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t num_embeddings,
                          int64_t padding_idx = -1);

}  // namespace qkv
