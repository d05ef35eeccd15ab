#include "kernels/ref/elementwise_ref.h"

#include <cmath>
#include <limits>

namespace qkv::kernels::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class F>
void Map(const float* x, float* out, size_t n, F f) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(f(static_cast<double>(x[i])));
}

// Max in double, NaN-propagating when asked (see MaxRun in rows-inl.h).
double RowMax(const float* x, size_t n, bool propagate_nan) {
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

void Add(const float* a, const float* b, float* out, size_t n) {
  // A double sum or product of two floats is exact, so rounding it once to f32
  // is the correctly rounded f32 result the SIMD kernel must match bit for bit.
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(double{a[i]} + double{b[i]});
}

void Mul(const float* a, const float* b, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(double{a[i]} * double{b[i]});
}

void Sub(const float* a, const float* b, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(double{a[i]} - double{b[i]});
}

// A double quotient of two floats rounded to f32 is the correctly rounded f32
// quotient (double has more than 2 * 24 + 2 bits), so Div must match exactly too.
void Div(const float* a, const float* b, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(double{a[i]} / double{b[i]});
}

void DivScalar(const float* x, float divisor, float* out, size_t n) {
  Map(x, out, n, [divisor](double v) { return v / divisor; });
}

void ScalarMinus(const float* x, float value, float* out, size_t n) {
  Map(x, out, n, [value](double v) { return value - v; });
}

void ScalarOver(const float* x, float value, float* out, size_t n) {
  Map(x, out, n, [value](double v) { return value / v; });
}

void Relu(const float* x, float* out, size_t n) {
  Map(x, out, n, [](double v) { return v < 0 ? 0.0 : v; });
}

void AddScalar(const float* x, float addend, float* out, size_t n) {
  Map(x, out, n, [addend](double v) { return v + addend; });
}

void Scale(const float* x, float factor, float* out, size_t n) {
  Map(x, out, n, [factor](double v) { return v * factor; });
}

void Exp(const float* x, float* out, size_t n) { Map(x, out, n, [](double v) { return std::exp(v); }); }

void Silu(const float* x, float* out, size_t n) {
  Map(x, out, n, [](double v) { return v / (1.0 + std::exp(-v)); });
}

void GeluErf(const float* x, float* out, size_t n) {
  // erfc keeps the negative tail's relative accuracy, where 1 + erf cancels.
  Map(x, out, n, [](double v) { return 0.5 * v * std::erfc(-v * M_SQRT1_2); });
}

void GeluTanh(const float* x, float* out, size_t n) {
  // 0.5 (1 + tanh y) == 1 / (1 + exp(-2y)); the latter does not cancel for y << 0,
  // where 1 + tanh y loses every digit even in double.
  Map(x, out, n, [](double v) {
    const double y = std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v);
    return v / (1.0 + std::exp(-2.0 * y));
  });
}

void Softmax(const float* x, float* out, size_t n) {
  const double max = RowMax(x, n, /*propagate_nan=*/true);
  if (max == -kInf) {
    for (size_t i = 0; i < n; ++i) out[i] = 0.0f;
    return;
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(std::exp(x[i] - max) / sum);
}

void LogSoftmax(const float* x, float* out, size_t n) {
  const double max = RowMax(x, n, /*propagate_nan=*/true);
  if (max == -kInf) {
    for (size_t i = 0; i < n; ++i) out[i] = -std::numeric_limits<float>::infinity();
    return;
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  const double log_sum = std::log(sum);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>((x[i] - max) - log_sum);
}

float LogSumExp(const float* x, size_t n) {
  const double max = RowMax(x, n, /*propagate_nan=*/true);
  if (max == -kInf) return -std::numeric_limits<float>::infinity();
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  return static_cast<float>(max + std::log(sum));
}

void LayerNorm(const float* x, const float* weight, const float* bias, float eps, float* out,
               size_t n) {
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
    out[i] = static_cast<float>(y);
  }
}

void RmsNorm(const float* x, const float* weight, float eps, float* out, size_t n) {
  if (n == 0) return;
  double mean_square = 0.0;
  for (size_t i = 0; i < n; ++i) mean_square += double{x[i]} * x[i];
  mean_square /= static_cast<double>(n);
  const double rrms = 1.0 / std::sqrt(mean_square + eps);
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<float>(x[i] * rrms * (weight ? double{weight[i]} : 1.0));
}

float Sum(const float* x, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += x[i];
  return static_cast<float>(sum);
}

float Mean(const float* x, size_t n) {
  if (n == 0) return std::numeric_limits<float>::quiet_NaN();
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += x[i];
  return static_cast<float>(sum / static_cast<double>(n));
}

float Max(const float* x, size_t n) { return static_cast<float>(RowMax(x, n, true)); }

}  // namespace qkv::kernels::ref
