// Per-target code of the kernels that reduce a row: sum / mean / max, softmax,
// log-softmax, log-sum-exp, layer norm and RMS norm (see elementwise.h).
// Compiled once per Highway target from elementwise.cc; never include it
// elsewhere.
//
// Sums keep several vector accumulators: that hides the add latency and
// shortens the summation tree, so the f32 error grows with n / (k Lanes)
// rather than with n.

#if defined(QKV_KERNELS_CPU_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CPU_ROWS_INL_H_
#undef QKV_KERNELS_CPU_ROWS_INL_H_
#else
#define QKV_KERNELS_CPU_ROWS_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/cpu/elementwise-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// ---- reductions ------------------------------------------------------------

HWY_INLINE float SumRun(const float* HWY_RESTRICT x, size_t n) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  VF s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    s0 = hn::Add(s0, hn::LoadU(d, x + i));
    s1 = hn::Add(s1, hn::LoadU(d, x + i + lanes));
    s2 = hn::Add(s2, hn::LoadU(d, x + i + 2 * lanes));
    s3 = hn::Add(s3, hn::LoadU(d, x + i + 3 * lanes));
  }
  for (; i + lanes <= n; i += lanes) s0 = hn::Add(s0, hn::LoadU(d, x + i));
  if (i < n) s1 = hn::Add(s1, LoadTail(d, x + i, n - i, 0.0f));
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
}

// The largest entry, or NaN when any entry is NaN. hn::Max does not
// propagate NaN (x86 max returns its second operand when either is NaN), so a
// NaN mask is accumulated beside it. Softmax needs this too: a row of NaN and
// -inf would otherwise look fully masked and come out as zeros.
HWY_INLINE float MaxRun(const float* HWY_RESTRICT x, size_t n) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  VF m0 = hn::Set(d, -kInf), m1 = hn::Set(d, -kInf);
  VF nan = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    const VF v0 = hn::LoadU(d, x + i);
    const VF v1 = hn::LoadU(d, x + i + lanes);
    m0 = hn::Max(m0, v0);
    m1 = hn::Max(m1, v1);
    nan = hn::Or(nan, hn::VecFromMask(d, hn::IsNaN(v0)));
    nan = hn::Or(nan, hn::VecFromMask(d, hn::IsNaN(v1)));
  }
  for (; i < n; i += lanes) {
    const VF v = i + lanes <= n ? hn::LoadU(d, x + i) : LoadTail(d, x + i, n - i, -kInf);
    m0 = hn::Max(m0, v);
    nan = hn::Or(nan, hn::VecFromMask(d, hn::IsNaN(v)));
  }
  if (!hn::AllFalse(d, hn::MaskFromVec(nan))) return kNaN;
  return hn::GetLane(hn::MaxOfLanes(d, hn::Max(m0, m1)));
}

HWY_NOINLINE float SumImpl(const float* x, size_t n) { return SumRun(x, n); }

HWY_NOINLINE float MeanImpl(const float* x, size_t n) {
  return n == 0 ? kNaN : SumRun(x, n) / static_cast<float>(n);
}

HWY_NOINLINE float MaxImpl(const float* x, size_t n) { return MaxRun(x, n); }

// ---- softmax ---------------------------------------------------------------

// sum(exp(x - max)) over the row; with `out`, also stores each exp.
HWY_INLINE float SumExpShifted(const float* HWY_RESTRICT x, float max, float* HWY_RESTRICT out,
                               size_t n) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  const VF vmax = hn::Set(d, max);
  VF s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    const VF e0 = ExpF(d, hn::Sub(hn::LoadU(d, x + i), vmax));
    const VF e1 = ExpF(d, hn::Sub(hn::LoadU(d, x + i + lanes), vmax));
    if (out) {
      hn::StoreU(e0, d, out + i);
      hn::StoreU(e1, d, out + i + lanes);
    }
    s0 = hn::Add(s0, e0);
    s1 = hn::Add(s1, e1);
  }
  for (; i < n; i += lanes) {
    const size_t count = std::min(lanes, n - i);
    // -inf padding: exp(-inf - max) = 0 adds nothing to the sum.
    const VF v = count == lanes ? hn::LoadU(d, x + i) : LoadTail(d, x + i, count, -kInf);
    const VF e = ExpF(d, hn::Sub(v, vmax));
    if (out) {
      if (count == lanes) {
        hn::StoreU(e, d, out + i);
      } else {
        StoreTail(d, e, out + i, count);
      }
    }
    s0 = hn::Add(s0, e);
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
}

HWY_INLINE void Fill(float* out, size_t n, float value) { std::fill(out, out + n, value); }

HWY_NOINLINE void SoftmaxImpl(const float* x, float* out, size_t n) {
  if (n == 0) return;
  const float max = MaxRun(x, n);
  // Every entry -inf (a fully masked attention row): x - max would be NaN.
  if (max == -kInf) return Fill(out, n, 0.0f);
  const float sum = SumExpShifted(x, max, out, n);
  ScaleImpl(out, 1.0f / sum, out, n);
}

HWY_NOINLINE void LogSoftmaxImpl(const float* x, float* out, size_t n) {
  if (n == 0) return;
  const float max = MaxRun(x, n);
  if (max == -kInf) return Fill(out, n, -kInf);
  const float log_sum = std::log(SumExpShifted(x, max, nullptr, n));
  // (x - max) - log_sum, not x - (max + log_sum): the row's largest entries,
  // the ones that matter, then come out exact up to log_sum's rounding.
  const DF d;
  const VF vmax = hn::Set(d, max);
  const VF vlog = hn::Set(d, log_sum);
  MapUnary(x, out, n, [&](DF, VF v) HWY_ATTR { return hn::Sub(hn::Sub(v, vmax), vlog); });
}

HWY_NOINLINE float LogSumExpImpl(const float* x, size_t n) {
  const float max = n == 0 ? -kInf : MaxRun(x, n);
  if (max == -kInf) return -kInf;
  return max + std::log(SumExpShifted(x, max, nullptr, n));
}

// ---- normalisation -----------------------------------------------------------

// out = (x - shift - correction) * scale [* weight] [+ bias].
HWY_INLINE void NormalizeRun(const float* HWY_RESTRICT x, float shift, float correction,
                             float scale, const float* HWY_RESTRICT weight,
                             const float* HWY_RESTRICT bias, float* out, size_t n) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  const VF vshift = hn::Set(d, shift), vcorr = hn::Set(d, correction), vscale = hn::Set(d, scale);
  for (size_t i = 0; i < n; i += lanes) {
    const size_t count = std::min(lanes, n - i);
    const bool full = count == lanes;
    const VF v = full ? hn::LoadU(d, x + i) : LoadTail(d, x + i, count, 0.0f);
    VF y = hn::Mul(hn::Sub(hn::Sub(v, vshift), vcorr), vscale);
    if (weight) y = hn::Mul(y, full ? hn::LoadU(d, weight + i) : LoadTail(d, weight + i, count, 0));
    if (bias) y = hn::Add(y, full ? hn::LoadU(d, bias + i) : LoadTail(d, bias + i, count, 0));
    if (full) {
      hn::StoreU(y, d, out + i);
    } else {
      StoreTail(d, y, out + i, count);
    }
  }
}

// Corrected two-pass moments (Chan, Golub & LeVeque 1983, eq. 1.7): with
// d = x - shift for a first-pass mean `shift`, mean = shift + sum(d)/n and
// var = (sum(d^2) - sum(d)^2/n) / n. The second term removes the first
// pass's rounding error; the naive E[x^2] - E[x]^2 loses every digit when
// |mean| >> std. The corrected mean is never rounded to one float
// (shift + correction), which would cost ulp(mean) relative to std.
HWY_NOINLINE void LayerNormImpl(const float* x, const float* weight, const float* bias, float eps,
                                float* out, size_t n) {
  if (n == 0) return;
  const float fn = static_cast<float>(n);
  const float shift = SumRun(x, n) / fn;
  const DF d;
  const size_t lanes = hn::Lanes(d);
  const VF vshift = hn::Set(d, shift);
  VF s1 = hn::Zero(d), s2 = hn::Zero(d);
  for (size_t i = 0; i < n; i += lanes) {
    const size_t count = std::min(lanes, n - i);
    // Padding with `shift` makes the padded lanes' d exactly 0.
    const VF v = count == lanes ? hn::LoadU(d, x + i) : LoadTail(d, x + i, count, shift);
    const VF dev = hn::Sub(v, vshift);
    s1 = hn::Add(s1, dev);
    s2 = hn::MulAdd(dev, dev, s2);
  }
  const float sum_d = hn::GetLane(hn::SumOfLanes(d, s1));
  const float sum_d2 = hn::GetLane(hn::SumOfLanes(d, s2));
  const float correction = sum_d / fn;
  const float var = std::max(0.0f, (sum_d2 - sum_d * correction) / fn);
  const float rstd = 1.0f / std::sqrt(var + eps);
  NormalizeRun(x, shift, correction, rstd, weight, bias, out, n);
}

HWY_NOINLINE void RmsNormImpl(const float* x, const float* weight, float eps, float* out,
                              size_t n) {
  if (n == 0) return;
  const DF d;
  const size_t lanes = hn::Lanes(d);
  VF s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    const VF v0 = hn::LoadU(d, x + i), v1 = hn::LoadU(d, x + i + lanes);
    s0 = hn::MulAdd(v0, v0, s0);
    s1 = hn::MulAdd(v1, v1, s1);
  }
  for (; i < n; i += lanes) {
    const VF v = i + lanes <= n ? hn::LoadU(d, x + i) : LoadTail(d, x + i, n - i, 0.0f);
    s0 = hn::MulAdd(v, v, s0);
  }
  const float mean_square = hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1))) / static_cast<float>(n);
  const float rrms = 1.0f / std::sqrt(mean_square + eps);
  NormalizeRun(x, 0.0f, 0.0f, rrms, weight, nullptr, out, n);
}

HWY_NOINLINE int64_t DispatchedTargetImpl() { return HWY_TARGET; }

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
