// Kernels of the backward ops of qkv/ops.h (the derivatives of the element-wise
// and row kernels of elementwise.h), dispatched at run time to the best
// Highway target (backward.cc). Internal to the library.
//
// Same conventions as elementwise.h: one contiguous run of `n` floats, raw
// pointers, no validation, any alignment, n == 0 allowed; `out` may equal
// `grad`, otherwise runs must not overlap. Each SIMD kernel has a scalar,
// double-accumulating twin in kernels/ref/backward_ref.h.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qkv::kernels {

// out[i] = grad[i] * f'(x[i]) for the forwards Relu (0 where x <= 0, grad
// elsewhere, NaN included, as torch's threshold_backward), Silu,
// GeluErf and GeluTanh. Sigmoid-like factors are formed from exp(-|z|) <= 1,
// so no tail overflows or cancels; NaN in x gives NaN.
void ReluBackward(const float* grad, const float* x, float* out, size_t n);
void SiluBackward(const float* grad, const float* x, float* out, size_t n);
void GeluErfBackward(const float* grad, const float* x, float* out, size_t n);
void GeluTanhBackward(const float* grad, const float* x, float* out, size_t n);

// One row, from the forward's output y: softmax y * (grad - sum(grad * y));
// log-softmax grad - exp(y) * sum(grad). The sums are f32 with several vector
// accumulators, as in rows-inl.h.
void SoftmaxBackward(const float* grad, const float* y, float* out, size_t n);
void LogSoftmaxBackward(const float* grad, const float* y, float* out, size_t n);

// One row of layer norm's backward, from the forward's input x (Ba et al.
// 2016): with xhat = (x - mean) * rstd and gw = grad * weight,
// dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)). The moments and both
// means are accumulated in double in one pass; dx is written in a second.
// `weight` may be null (1). `dweight` / `dbias`, when not null, are
// accumulators: dweight[i] += grad[i] * xhat[i], dbias[i] += grad[i].
void LayerNormBackward(const float* grad, const float* x, const float* weight, double eps,
                       float* dx, float* dweight, float* dbias, size_t n);
// RMS norm's: with r = 1 / sqrt(mean(x^2) + eps), dx = r * gw - x * r^3 *
// mean(gw * x); dweight[i] += grad[i] * x[i] * r when not null.
void RmsNormBackward(const float* grad, const float* x, const float* weight, double eps, float* dx,
                     float* dweight, size_t n);

// Inverted dropout of the run of elements [first, first + n) of a tensor:
// element i is kept iff the top 24 bits of splitmix64's finaliser of
// seed + (i + 1) * 0x9e3779b97f4a7c15 (the counter hash of the attention
// dropout) are >= threshold = ceil(p * 2^24); kept ones are scaled by
// `scale`, dropped ones are 0. Scalar: 64-bit multiplies do not vectorise
// on AVX2.
void Dropout(const float* x, uint64_t seed, uint64_t first, uint32_t threshold, float scale,
             float* out, bool* mask, size_t n);
// out[i] = mask[i] ? grad[i] * scale : 0.
void DropoutBackward(const float* grad, const bool* mask, float scale, float* out, size_t n);

}  // namespace qkv::kernels
