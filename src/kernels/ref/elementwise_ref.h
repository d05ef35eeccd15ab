// Scalar twins of the kernels in kernels/cpu/elementwise.h: the oracles the
// SIMD kernels are tested against. Same contracts and signatures; every
// intermediate (sums, moments, transcendental functions) is a double, and
// only the stored results are rounded to f32. Slow by design.
#pragma once

#include <cstddef>

namespace qkv::kernels::ref {

void Add(const float* a, const float* b, float* out, size_t n);
void Sub(const float* a, const float* b, float* out, size_t n);
void Mul(const float* a, const float* b, float* out, size_t n);
void Div(const float* a, const float* b, float* out, size_t n);
void AddScalar(const float* x, float addend, float* out, size_t n);
void Scale(const float* x, float factor, float* out, size_t n);
void DivScalar(const float* x, float divisor, float* out, size_t n);
void ScalarMinus(const float* x, float value, float* out, size_t n);
void ScalarOver(const float* x, float value, float* out, size_t n);

void Relu(const float* x, float* out, size_t n);

void Exp(const float* x, float* out, size_t n);
void Silu(const float* x, float* out, size_t n);
void GeluErf(const float* x, float* out, size_t n);
void GeluTanh(const float* x, float* out, size_t n);

void Softmax(const float* x, float* out, size_t n);
void LogSoftmax(const float* x, float* out, size_t n);
float LogSumExp(const float* x, size_t n);

void LayerNorm(const float* x, const float* weight, const float* bias, float eps, float* out,
               size_t n);
void RmsNorm(const float* x, const float* weight, float eps, float* out, size_t n);

float Sum(const float* x, size_t n);
float Mean(const float* x, size_t n);
float Max(const float* x, size_t n);

}  // namespace qkv::kernels::ref
