// Element-wise and row kernels on f32, dispatched at run time to the best
// Highway target of this CPU (elementwise.cc). Internal to the library.
//
// Every entry point works on one contiguous run of `n` floats, takes raw
// pointers and never validates: the ops in src/ops validate once and split
// tensors into runs. Any pointer may be unaligned. `out` may equal an input
// (in place); otherwise runs must not overlap. n == 0 is allowed everywhere.
// Each kernel has a scalar, double-accumulating twin in kernels/ref.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qkv::kernels {

// out[i] = a[i] + b[i], a[i] - b[i], a[i] * b[i], a[i] / b[i]; exact f32
// rounding of each operation.
void Add(const float* a, const float* b, float* out, size_t n);
void Sub(const float* a, const float* b, float* out, size_t n);
void Mul(const float* a, const float* b, float* out, size_t n);
void Div(const float* a, const float* b, float* out, size_t n);
// out[i] = x[i] + addend, x[i] * factor, x[i] / divisor (a scalar broadcast
// along a run on the right), value - x[i], value / x[i] (on the left).
void AddScalar(const float* x, float addend, float* out, size_t n);
void Scale(const float* x, float factor, float* out, size_t n);
void DivScalar(const float* x, float divisor, float* out, size_t n);
void ScalarMinus(const float* x, float value, float* out, size_t n);
void ScalarOver(const float* x, float value, float* out, size_t n);

// max(x, 0); NaN stays NaN (as torch.relu).
void Relu(const float* x, float* out, size_t n);

// Within about 2 ulp; exp(+-inf) = inf / 0, NaN stays NaN.
void Exp(const float* x, float* out, size_t n);
// x * sigmoid(x), evaluated as x / (1 + exp(-x)) so neither tail cancels.
void Silu(const float* x, float* out, size_t n);
// x * Phi(x) with Phi the normal CDF (torch's approximate="none"). Phi is
// evaluated through erfc with a small relative error on both tails, so the
// result is accurate to a few ulp, also for large negative x where
// 1 + erf(x / sqrt 2) would cancel.
void GeluErf(const float* x, float* out, size_t n);
// The tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), evaluated as
// x / (1 + exp(-2 y)) (the same function; no cancellation for x < 0).
void GeluTanh(const float* x, float* out, size_t n);

// Stable softmax of one row: exp(x - max) / sum. A row whose entries are all
// -inf (every key masked) gives all zeros, never NaN; the attention core
// relies on this. A NaN or +inf entry makes the whole row NaN, as in PyTorch.
void Softmax(const float* x, float* out, size_t n);
// (x - max) - log(sum exp(x - max)). An all -inf row gives all -inf (the log
// of the zeros Softmax returns for it).
void LogSoftmax(const float* x, float* out, size_t n);
// log(sum exp(x)) of one row, stable; -inf for an all -inf row or n == 0.
float LogSumExp(const float* x, size_t n);

// Layer normalisation of one row (Ba et al. 2016): (x - mean) / sqrt(var + eps)
// * weight + bias with the biased variance. Mean and variance are computed in
// f32 by the corrected two-pass algorithm (Chan, Golub & LeVeque 1983), which
// stays accurate when |mean| >> std. `weight` and `bias` may be null.
void LayerNorm(const float* x, const float* weight, const float* bias, float eps, float* out,
               size_t n);
// x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019); `weight` may be
// null. mean(x^2) is accumulated in f32, as torch does for f32 inputs.
void RmsNorm(const float* x, const float* weight, float eps, float* out, size_t n);

// Reductions of one run. Sum of n == 0 is 0; Mean of n == 0 is NaN; Max of
// n == 0 is -inf. Max returns NaN when any entry is NaN (as torch.max).
float Sum(const float* x, size_t n);
float Mean(const float* x, size_t n);
float Max(const float* x, size_t n);

// The Highway target (HWY_AVX3, HWY_AVX2, ...) these kernels dispatch to now.
int64_t DispatchedTarget();

}  // namespace qkv::kernels
