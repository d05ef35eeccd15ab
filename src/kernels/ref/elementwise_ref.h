// Scalar twins of the kernels in kernels/cpu/elementwise.h: the oracles the
// SIMD kernels are tested against. Same contracts and signatures; every
// intermediate (sums, moments, transcendental functions) is a double, and
// only the stored results are rounded to T. Slow by design. Instantiated for
// float (the oracles) and double (the ops' f64 path, which gradcheck uses).
#pragma once

#include <cstddef>

namespace qkv::kernels::ref {

template <class T>
void Add(const T* a, const T* b, T* out, size_t n);
template <class T>
void Sub(const T* a, const T* b, T* out, size_t n);
template <class T>
void Mul(const T* a, const T* b, T* out, size_t n);
template <class T>
void Div(const T* a, const T* b, T* out, size_t n);
template <class T>
void AddScalar(const T* x, T addend, T* out, size_t n);
template <class T>
void Scale(const T* x, T factor, T* out, size_t n);
template <class T>
void DivScalar(const T* x, T divisor, T* out, size_t n);
template <class T>
void ScalarMinus(const T* x, T value, T* out, size_t n);
template <class T>
void ScalarOver(const T* x, T value, T* out, size_t n);

template <class T>
void Relu(const T* x, T* out, size_t n);

template <class T>
void Exp(const T* x, T* out, size_t n);
template <class T>
void Silu(const T* x, T* out, size_t n);
template <class T>
void GeluErf(const T* x, T* out, size_t n);
template <class T>
void GeluTanh(const T* x, T* out, size_t n);

template <class T>
void Softmax(const T* x, T* out, size_t n);
template <class T>
void LogSoftmax(const T* x, T* out, size_t n);
template <class T>
T LogSumExp(const T* x, size_t n);

template <class T>
void LayerNorm(const T* x, const T* weight, const T* bias, T eps, T* out, size_t n);
template <class T>
void RmsNorm(const T* x, const T* weight, T eps, T* out, size_t n);

template <class T>
T Sum(const T* x, size_t n);
template <class T>
T Mean(const T* x, size_t n);
template <class T>
T Max(const T* x, size_t n);

}  // namespace qkv::kernels::ref
