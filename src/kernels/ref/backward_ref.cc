#include "kernels/ref/backward_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace qkv::kernels::ref {
namespace {

template <class T, class F>
void MapGrad(const T* grad, const T* x, T* out, size_t n, F derivative) {
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(static_cast<double>(grad[i]) * derivative(static_cast<double>(x[i])));
}

// sigmoid(z) and 1 - sigmoid(z) without overflow or cancellation (as SigmoidPair).
void Sigmoids(double z, double& s, double& one_minus_s) {
  const double t = std::exp(-std::abs(z));
  const double r = 1.0 / (1.0 + t);
  s = z < 0 ? t * r : r;
  one_minus_s = z < 0 ? r : t * r;
}

}  // namespace

template <class T>
void ReluBackward(const T* grad, const T* x, T* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = x[i] <= 0 ? T(0) : grad[i];
}

template <class T>
void SiluBackward(const T* grad, const T* x, T* out, size_t n) {
  MapGrad(grad, x, out, n, [](double v) {
    double s, s1;
    Sigmoids(v, s, s1);
    return s * (1.0 + v * s1);
  });
}

template <class T>
void GeluErfBackward(const T* grad, const T* x, T* out, size_t n) {
  MapGrad(grad, x, out, n, [](double v) {
    const double cdf = 0.5 * std::erfc(-v * M_SQRT1_2);
    const double pdf = std::exp(-0.5 * v * v) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
    return cdf + v * pdf;
  });
}

template <class T>
void GeluTanhBackward(const T* grad, const T* x, T* out, size_t n) {
  MapGrad(grad, x, out, n, [](double v) {
    if (std::isnan(v)) return v;
    const double k = 2.0 * std::sqrt(2.0 / M_PI);
    const double xc = std::clamp(v, -20.0, 20.0);  // see GeluTanhGradOp
    const double z = k * (xc + 0.044715 * xc * xc * xc);
    double s, s1;
    Sigmoids(z, s, s1);
    return s + xc * s * s1 * k * (1.0 + 3.0 * 0.044715 * xc * xc);
  });
}

template <class T>
void SoftmaxBackward(const T* grad, const T* y, T* out, size_t n) {
  double dot = 0.0;
  for (size_t i = 0; i < n; ++i) dot += static_cast<double>(grad[i]) * y[i];
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(y[i] * (grad[i] - dot));
}

template <class T>
void LogSoftmaxBackward(const T* grad, const T* y, T* out, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += grad[i];
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(grad[i] - std::exp(static_cast<double>(y[i])) * sum);
}

template <class T>
void LayerNormBackward(const T* grad, const T* x, const T* weight, double eps, T* dx, T* dweight,
                       T* dbias, size_t n) {
  if (n == 0) return;
  const double fn = static_cast<double>(n);
  double mean = 0.0;
  for (size_t i = 0; i < n; ++i) mean += x[i];
  mean /= fn;
  double var = 0.0;
  for (size_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  const double rstd = 1.0 / std::sqrt(var / fn + eps);
  std::vector<double> xhat(n), gw(n);
  double mean_gw = 0.0, mean_gw_xhat = 0.0;
  for (size_t i = 0; i < n; ++i) {
    xhat[i] = (x[i] - mean) * rstd;
    gw[i] = static_cast<double>(grad[i]) * (weight ? static_cast<double>(weight[i]) : 1.0);
    mean_gw += gw[i] / fn;
    mean_gw_xhat += gw[i] * xhat[i] / fn;
  }
  for (size_t i = 0; i < n; ++i) {
    dx[i] = static_cast<T>(rstd * (gw[i] - mean_gw - xhat[i] * mean_gw_xhat));
    if (dweight) dweight[i] = static_cast<T>(dweight[i] + grad[i] * xhat[i]);
    if (dbias) dbias[i] = static_cast<T>(static_cast<double>(dbias[i]) + grad[i]);
  }
}

template <class T>
void RmsNormBackward(const T* grad, const T* x, const T* weight, double eps, T* dx, T* dweight,
                     size_t n) {
  if (n == 0) return;
  const double fn = static_cast<double>(n);
  double mean_square = 0.0, mean_gwx = 0.0;
  for (size_t i = 0; i < n; ++i) {
    mean_square += static_cast<double>(x[i]) * x[i] / fn;
    mean_gwx +=
        static_cast<double>(grad[i]) * (weight ? static_cast<double>(weight[i]) : 1.0) * x[i] / fn;
  }
  const double r = 1.0 / std::sqrt(mean_square + eps);
  for (size_t i = 0; i < n; ++i) {
    const double gw =
        static_cast<double>(grad[i]) * (weight ? static_cast<double>(weight[i]) : 1.0);
    dx[i] = static_cast<T>(r * gw - x[i] * r * r * r * mean_gwx);
    if (dweight) dweight[i] = static_cast<T>(dweight[i] + grad[i] * x[i] * r);
  }
}

// f32: the SIMD kernels' oracle; f64: the ops' double path (gradcheck).
template void ReluBackward<float>(const float* grad, const float* x, float* out, size_t n);
template void SiluBackward<float>(const float* grad, const float* x, float* out, size_t n);
template void GeluErfBackward<float>(const float* grad, const float* x, float* out, size_t n);
template void GeluTanhBackward<float>(const float* grad, const float* x, float* out, size_t n);
template void SoftmaxBackward<float>(const float* grad, const float* y, float* out, size_t n);
template void LogSoftmaxBackward<float>(const float* grad, const float* y, float* out, size_t n);
template void LayerNormBackward<float>(const float* grad, const float* x, const float* weight,
                                       double eps, float* dx, float* dweight, float* dbias,
                                       size_t n);
template void RmsNormBackward<float>(const float* grad, const float* x, const float* weight,
                                     double eps, float* dx, float* dweight, size_t n);
template void ReluBackward<double>(const double* grad, const double* x, double* out, size_t n);
template void SiluBackward<double>(const double* grad, const double* x, double* out, size_t n);
template void GeluErfBackward<double>(const double* grad, const double* x, double* out, size_t n);
template void GeluTanhBackward<double>(const double* grad, const double* x, double* out, size_t n);
template void SoftmaxBackward<double>(const double* grad, const double* y, double* out, size_t n);
template void LogSoftmaxBackward<double>(const double* grad, const double* y, double* out,
                                         size_t n);
template void LayerNormBackward<double>(const double* grad, const double* x, const double* weight,
                                        double eps, double* dx, double* dweight, double* dbias,
                                        size_t n);
template void RmsNormBackward<double>(const double* grad, const double* x, const double* weight,
                                      double eps, double* dx, double* dweight, size_t n);

}  // namespace qkv::kernels::ref
