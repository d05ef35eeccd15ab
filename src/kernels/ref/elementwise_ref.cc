#include "kernels/ref/elementwise_ref.h"

#include <cmath>
#include <limits>

namespace qkv::kernels::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class T, class F>
void Map(const T* x, T* out, size_t n, F f) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(f(static_cast<double>(x[i])));
}

// Max in double, NaN-propagating when asked (see MaxRun in rows-inl.h).
template <class T>
double RowMax(const T* x, size_t n, bool propagate_nan) {
  double max = -kInf;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) {
      if (propagate_nan) return kNaN;
      continue;
    }
    max = std::fmax(max, x[i]);
  }
  return max;
}

}  // namespace

template <class T>
void Add(const T* a, const T* b, T* out, size_t n) {
  // A double sum or product of two floats is exact, so rounding it once to f32
  // is the correctly rounded f32 result the SIMD kernel must match bit for bit.
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(double{a[i]} + double{b[i]});
}

template <class T>
void Mul(const T* a, const T* b, T* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(double{a[i]} * double{b[i]});
}

template <class T>
void Sub(const T* a, const T* b, T* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(double{a[i]} - double{b[i]});
}

// A double quotient of two floats rounded to f32 is the correctly rounded f32
// quotient (double has more than 2 * 24 + 2 bits), so Div must match exactly too.
template <class T>
void Div(const T* a, const T* b, T* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(double{a[i]} / double{b[i]});
}

template <class T>
void DivScalar(const T* x, T divisor, T* out, size_t n) {
  Map(x, out, n, [divisor](double v) { return v / divisor; });
}

template <class T>
void ScalarMinus(const T* x, T value, T* out, size_t n) {
  Map(x, out, n, [value](double v) { return value - v; });
}

template <class T>
void ScalarOver(const T* x, T value, T* out, size_t n) {
  Map(x, out, n, [value](double v) { return value / v; });
}

template <class T>
void Relu(const T* x, T* out, size_t n) {
  Map(x, out, n, [](double v) { return v < 0 ? 0.0 : v; });
}

template <class T>
void AddScalar(const T* x, T addend, T* out, size_t n) {
  Map(x, out, n, [addend](double v) { return v + addend; });
}

template <class T>
void Scale(const T* x, T factor, T* out, size_t n) {
  Map(x, out, n, [factor](double v) { return v * factor; });
}

template <class T>
void Exp(const T* x, T* out, size_t n) {
  Map(x, out, n, [](double v) { return std::exp(v); });
}

template <class T>
void Silu(const T* x, T* out, size_t n) {
  Map(x, out, n, [](double v) { return v / (1.0 + std::exp(-v)); });
}

template <class T>
void GeluErf(const T* x, T* out, size_t n) {
  // erfc keeps the negative tail's relative accuracy, where 1 + erf cancels.
  Map(x, out, n, [](double v) { return 0.5 * v * std::erfc(-v * M_SQRT1_2); });
}

template <class T>
void GeluTanh(const T* x, T* out, size_t n) {
  // 0.5 (1 + tanh y) == 1 / (1 + exp(-2y)); the latter does not cancel for y << 0,
  // where 1 + tanh y loses every digit even in double.
  Map(x, out, n, [](double v) {
    const double y = std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v);
    return v / (1.0 + std::exp(-2.0 * y));
  });
}

template <class T>
void Softmax(const T* x, T* out, size_t n) {
  const double max = RowMax(x, n, /*propagate_nan=*/true);
  if (max == -kInf) {
    for (size_t i = 0; i < n; ++i) out[i] = T(0);
    return;
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(std::exp(x[i] - max) / sum);
}

template <class T>
void LogSoftmax(const T* x, T* out, size_t n) {
  const double max = RowMax(x, n, /*propagate_nan=*/true);
  if (max == -kInf) {
    for (size_t i = 0; i < n; ++i) out[i] = -std::numeric_limits<T>::infinity();
    return;
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  const double log_sum = std::log(sum);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>((x[i] - max) - log_sum);
}

template <class T>
T LogSumExp(const T* x, size_t n) {
  const double max = RowMax(x, n, /*propagate_nan=*/true);
  if (max == -kInf) return -std::numeric_limits<T>::infinity();
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  return static_cast<T>(max + std::log(sum));
}

template <class T>
void LayerNorm(const T* x, const T* weight, const T* bias, T eps, T* out, size_t n) {
  if (n == 0) return;
  double mean = 0.0;
  for (size_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<double>(n);
  double var = 0.0;
  for (size_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<double>(n);
  const double rstd = 1.0 / std::sqrt(var + eps);
  for (size_t i = 0; i < n; ++i) {
    double y = (x[i] - mean) * rstd;
    if (weight) y *= weight[i];
    if (bias) y += bias[i];
    out[i] = static_cast<T>(y);
  }
}

template <class T>
void RmsNorm(const T* x, const T* weight, T eps, T* out, size_t n) {
  if (n == 0) return;
  double mean_square = 0.0;
  for (size_t i = 0; i < n; ++i) mean_square += static_cast<double>(x[i]) * x[i];
  mean_square /= static_cast<double>(n);
  const double rrms = 1.0 / std::sqrt(mean_square + eps);
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(x[i] * rrms * (weight ? static_cast<double>(weight[i]) : 1.0));
}

template <class T>
T Sum(const T* x, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += x[i];
  return static_cast<T>(sum);
}

template <class T>
T Mean(const T* x, size_t n) {
  if (n == 0) return std::numeric_limits<T>::quiet_NaN();
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += x[i];
  return static_cast<T>(sum / static_cast<double>(n));
}

template <class T>
T Max(const T* x, size_t n) {
  return static_cast<T>(RowMax(x, n, true));
}

// f32: the SIMD kernels' oracle; f64: the ops' double path (gradcheck).
template void Add<float>(const float* a, const float* b, float* out, size_t n);
template void Mul<float>(const float* a, const float* b, float* out, size_t n);
template void Sub<float>(const float* a, const float* b, float* out, size_t n);
template void Div<float>(const float* a, const float* b, float* out, size_t n);
template void DivScalar<float>(const float* x, float divisor, float* out, size_t n);
template void ScalarMinus<float>(const float* x, float value, float* out, size_t n);
template void ScalarOver<float>(const float* x, float value, float* out, size_t n);
template void Relu<float>(const float* x, float* out, size_t n);
template void AddScalar<float>(const float* x, float addend, float* out, size_t n);
template void Scale<float>(const float* x, float factor, float* out, size_t n);
template void Exp<float>(const float* x, float* out, size_t n);
template void Silu<float>(const float* x, float* out, size_t n);
template void GeluErf<float>(const float* x, float* out, size_t n);
template void GeluTanh<float>(const float* x, float* out, size_t n);
template void Softmax<float>(const float* x, float* out, size_t n);
template void LogSoftmax<float>(const float* x, float* out, size_t n);
template void LayerNorm<float>(const float* x, const float* weight, const float* bias, float eps,
                               float* out, size_t n);
template void RmsNorm<float>(const float* x, const float* weight, float eps, float* out, size_t n);
template float LogSumExp<float>(const float* x, size_t n);
template float Sum<float>(const float* x, size_t n);
template float Mean<float>(const float* x, size_t n);
template float Max<float>(const float* x, size_t n);
template void Add<double>(const double* a, const double* b, double* out, size_t n);
template void Mul<double>(const double* a, const double* b, double* out, size_t n);
template void Sub<double>(const double* a, const double* b, double* out, size_t n);
template void Div<double>(const double* a, const double* b, double* out, size_t n);
template void DivScalar<double>(const double* x, double divisor, double* out, size_t n);
template void ScalarMinus<double>(const double* x, double value, double* out, size_t n);
template void ScalarOver<double>(const double* x, double value, double* out, size_t n);
template void Relu<double>(const double* x, double* out, size_t n);
template void AddScalar<double>(const double* x, double addend, double* out, size_t n);
template void Scale<double>(const double* x, double factor, double* out, size_t n);
template void Exp<double>(const double* x, double* out, size_t n);
template void Silu<double>(const double* x, double* out, size_t n);
template void GeluErf<double>(const double* x, double* out, size_t n);
template void GeluTanh<double>(const double* x, double* out, size_t n);
template void Softmax<double>(const double* x, double* out, size_t n);
template void LogSoftmax<double>(const double* x, double* out, size_t n);
template void LayerNorm<double>(const double* x, const double* weight, const double* bias,
                                double eps, double* out, size_t n);
template void RmsNorm<double>(const double* x, const double* weight, double eps, double* out,
                              size_t n);
template double LogSumExp<double>(const double* x, size_t n);
template double Sum<double>(const double* x, size_t n);
template double Mean<double>(const double* x, size_t n);
template double Max<double>(const double* x, size_t n);

}  // namespace qkv::kernels::ref
