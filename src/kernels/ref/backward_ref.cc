#include "kernels/ref/backward_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace qkv::kernels::ref {
namespace {

template <class F>
void MapGrad(const float* grad, const float* x, float* out, size_t n, F derivative) {
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<float>(double{grad[i]} * derivative(static_cast<double>(x[i])));
}

// sigmoid(z) and 1 - sigmoid(z) without overflow or cancellation (as SigmoidPair).
void Sigmoids(double z, double& s, double& one_minus_s) {
  const double t = std::exp(-std::abs(z));
  const double r = 1.0 / (1.0 + t);
  s = z < 0 ? t * r : r;
  one_minus_s = z < 0 ? r : t * r;
}

}  // namespace

void ReluBackward(const float* grad, const float* x, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = x[i] <= 0 ? 0.0f : grad[i];
}

void SiluBackward(const float* grad, const float* x, float* out, size_t n) {
  MapGrad(grad, x, out, n, [](double v) {
    double s, s1;
    Sigmoids(v, s, s1);
    return s * (1.0 + v * s1);
  });
}

void GeluErfBackward(const float* grad, const float* x, float* out, size_t n) {
  MapGrad(grad, x, out, n, [](double v) {
    const double cdf = 0.5 * std::erfc(-v * M_SQRT1_2);
    const double pdf = std::exp(-0.5 * v * v) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
    return cdf + v * pdf;
  });
}

void GeluTanhBackward(const float* grad, const float* x, float* out, size_t n) {
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

void SoftmaxBackward(const float* grad, const float* y, float* out, size_t n) {
  double dot = 0.0;
  for (size_t i = 0; i < n; ++i) dot += double{grad[i]} * y[i];
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(y[i] * (grad[i] - dot));
}

void LogSoftmaxBackward(const float* grad, const float* y, float* out, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += grad[i];
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<float>(grad[i] - std::exp(double{y[i]}) * sum);
}

void LayerNormBackward(const float* grad, const float* x, const float* weight, double eps,
                       float* dx, float* dweight, float* dbias, size_t n) {
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
    gw[i] = double{grad[i]} * (weight ? double{weight[i]} : 1.0);
    mean_gw += gw[i] / fn;
    mean_gw_xhat += gw[i] * xhat[i] / fn;
  }
  for (size_t i = 0; i < n; ++i) {
    dx[i] = static_cast<float>(rstd * (gw[i] - mean_gw - xhat[i] * mean_gw_xhat));
    if (dweight) dweight[i] = static_cast<float>(dweight[i] + grad[i] * xhat[i]);
    if (dbias) dbias[i] = static_cast<float>(double{dbias[i]} + grad[i]);
  }
}

void RmsNormBackward(const float* grad, const float* x, const float* weight, double eps, float* dx,
                     float* dweight, size_t n) {
  if (n == 0) return;
  const double fn = static_cast<double>(n);
  double mean_square = 0.0, mean_gwx = 0.0;
  for (size_t i = 0; i < n; ++i) {
    mean_square += double{x[i]} * x[i] / fn;
    mean_gwx += double{grad[i]} * (weight ? double{weight[i]} : 1.0) * x[i] / fn;
  }
  const double r = 1.0 / std::sqrt(mean_square + eps);
  for (size_t i = 0; i < n; ++i) {
    const double gw = double{grad[i]} * (weight ? double{weight[i]} : 1.0);
    dx[i] = static_cast<float>(r * gw - x[i] * r * r * r * mean_gwx);
    if (dweight) dweight[i] = static_cast<float>(dweight[i] + grad[i] * x[i] * r);
  }
}

}  // namespace qkv::kernels::ref
