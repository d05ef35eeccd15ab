// Element-wise and reduction ops. Each validates its inputs and throws
// qkv::Error naming the op, the argument and the values; the kernels below
// take raw pointers and never validate.
//
// Floating inputs of any float dtype are accepted; the math runs in f32 and
// the result has the input's dtype (a mix of f32 / bf16 / f16 gives f32).
// An f64 operand promotes the others, as in torch: the op then computes in
// double throughout (the scalar reference kernels; for checking, such as
// autograd::gradcheck, not for speed) and returns f64. Outputs are new
// contiguous tensors.
#pragma once

#include <cstdint>
#include <limits>

#include "qkv/names.h"
#include "qkv/tensor.h"

namespace qkv {

// Broadcasting binary ops (PyTorch broadcasting rules).
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double factor);

Tensor exp(const Tensor& x);
Tensor relu(const Tensor& x);  // max(x, 0); NaN stays NaN
Tensor silu(const Tensor& x);
enum class GeluApproximation { none, tanh };  // erf form, or the tanh form of Hendrycks & Gimpel
inline constexpr EnumNames<GeluApproximation, 2> kGeluApproximationNames{
    {{GeluApproximation::none, "none"}, {GeluApproximation::tanh, "tanh"}}};
Tensor gelu(const Tensor& x, GeluApproximation approximation = GeluApproximation::none);

// Stable (max-subtracted) softmax and log-softmax along `dim`.
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

// Normalisation over the last dimension. `weight` / `bias` may be undefined
// (no affine part); when defined their shape is [x.size(-1)]. Any f64 among
// x, weight and bias gives the f64 path and an f64 result.
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
// weight: [N, D] f32, f64, bf16 or f16; ids: i32 or i64 of any shape, each in
// [0, N) (else qkv::Error naming the id, its position and N). -> [..., D] f32
// (f64 for an f64 weight).
Tensor embedding(const Tensor& weight, const Tensor& ids);
// Its gradient: grad [..., D] (ids' shape plus D) scatter-added into the rows
// the ids name -> [num_embeddings, D] f32 (f64, summed in double, for an f64
// grad). Deterministic (the same bits for any thread count); the row
// padding_idx gets no gradient (-1: none), as in torch.nn.Embedding.
Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t num_embeddings,
                          int64_t padding_idx = -1);

// ---- backward -----------------------------------------------------------------
//
// The exact derivatives of the ops above, for the autograd layer: each takes
// the gradient of the op's result (`grad`, the result's shape) and what the
// forward saw or made, and returns the gradient of its input(s) as new
// contiguous f32 tensors. Inputs may be f32, bf16 or f16, in any mix; when any
// of them is f64 the backward computes in double and every result (the
// NormGradients included) is f64. Results do not depend on the thread count.

// 0 where x <= 0, else grad (at x == 0 the subgradient 0; NaN x passes grad, as torch).
Tensor relu_backward(const Tensor& grad, const Tensor& x);
Tensor gelu_backward(const Tensor& grad, const Tensor& x,
                     GeluApproximation approximation = GeluApproximation::none);
Tensor silu_backward(const Tensor& grad, const Tensor& x);
// y is the forward's output: dx = y * (grad - sum(grad * y)) along dim.
Tensor softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim = -1);
// y is the forward's output: dx = grad - exp(y) * sum(grad) along dim.
Tensor log_softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim = -1);

// The gradients of a norm's input and affine parameters; `weight` / `bias`
// are undefined when the forward had none.
struct NormGradients {
  Tensor input, weight, bias;
};
// x is the forward's input; mean and 1/std are recomputed per row in double.
// The parameter gradients are summed over the rows in a fixed order.
NormGradients layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                  const Tensor& bias, double eps = 1e-5);
NormGradients rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                double eps = std::numeric_limits<float>::epsilon());

// The gradient of an operand of shape `shape` that was broadcast to
// grad.shape(): grad summed over the broadcast dims (leading ones dropped,
// size-1 ones kept), in double, in a fixed order; f32, or f64 for an f64 grad.
// `shape` must broadcast to grad's shape (qkv::Error otherwise). What
// add / sub / mul / div need.
Tensor sum_to_shape(const Tensor& grad, const Shape& shape);

// Inverted dropout: each element is kept with probability 1 - p and scaled by
// 1 / (1 - p), else zeroed. p in [0, 1) (qkv::Error otherwise). The mask
// (boolean, true = kept) comes from a counter-based hash of the element index
// and one draw of `generator`, so it depends on the generator's state only,
// never on the thread count, never on x's dtype (an f64 x gets the mask an
// f32 x would, and is scaled in double). p == 0 returns x itself and an
// undefined mask and draws nothing. The output has x's dtype.
struct DropoutResult {
  Tensor output;
  Tensor mask;
};
DropoutResult dropout(const Tensor& x, double p, Generator& generator);
// grad * mask / (1 - p), with the forward's scale (in double for an f64 grad);
// mask may be undefined only for p == 0.
Tensor dropout_backward(const Tensor& grad, const Tensor& mask, double p);

}  // namespace qkv
