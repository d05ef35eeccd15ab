// Scalar twins of the SIMD kernels in kernels/cpu/backward.h: the oracles
// they are tested against. Same contracts and signatures; every intermediate
// is a double and only the stored results are rounded to f32. Slow by design.
#pragma once

#include <cstddef>

namespace qkv::kernels::ref {

void ReluBackward(const float* grad, const float* x, float* out, size_t n);
void SiluBackward(const float* grad, const float* x, float* out, size_t n);
void GeluErfBackward(const float* grad, const float* x, float* out, size_t n);
void GeluTanhBackward(const float* grad, const float* x, float* out, size_t n);

void SoftmaxBackward(const float* grad, const float* y, float* out, size_t n);
void LogSoftmaxBackward(const float* grad, const float* y, float* out, size_t n);

void LayerNormBackward(const float* grad, const float* x, const float* weight, double eps,
                       float* dx, float* dweight, float* dbias, size_t n);
void RmsNormBackward(const float* grad, const float* x, const float* weight, double eps, float* dx,
                     float* dweight, size_t n);

}  // namespace qkv::kernels::ref
