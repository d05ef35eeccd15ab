// Scalar twins of the SIMD kernels in kernels/cpu/backward.h: the oracles
// they are tested against. Same contracts and signatures; every intermediate
// is a double and only the stored results are rounded to T. Slow by design.
// Instantiated for float (the oracles) and double (the ops' f64 path).
#pragma once

#include <cstddef>

namespace qkv::kernels::ref {

template <class T>
void ReluBackward(const T* grad, const T* x, T* out, size_t n);
template <class T>
void SiluBackward(const T* grad, const T* x, T* out, size_t n);
template <class T>
void GeluErfBackward(const T* grad, const T* x, T* out, size_t n);
template <class T>
void GeluTanhBackward(const T* grad, const T* x, T* out, size_t n);

template <class T>
void SoftmaxBackward(const T* grad, const T* y, T* out, size_t n);
template <class T>
void LogSoftmaxBackward(const T* grad, const T* y, T* out, size_t n);

template <class T>
void LayerNormBackward(const T* grad, const T* x, const T* weight, double eps, T* dx, T* dweight,
                       T* dbias, size_t n);
template <class T>
void RmsNormBackward(const T* grad, const T* x, const T* weight, double eps, T* dx, T* dweight,
                     size_t n);

}  // namespace qkv::kernels::ref
