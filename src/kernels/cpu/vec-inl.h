// Per-target vector helpers shared by the kernels' -inl.h files: the f32
// tag, tail loads and stores, a safe exp and erfc. Pure inline code, so any -inl.h
// compiled once per target may include it.

// Per-target include guard (the Highway idiom: toggles once per target).
#if defined(QKV_KERNELS_CPU_VEC_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CPU_VEC_INL_H_
#undef QKV_KERNELS_CPU_VEC_INL_H_
#else
#define QKV_KERNELS_CPU_VEC_INL_H_
#endif

#include <cstddef>
#include <limits>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- tails -------------------------------------------------------------------

// The `count` (< Lanes) floats at p, padded with `fill`.
HWY_INLINE VF LoadTail(DF d, const float* HWY_RESTRICT p, size_t count, float fill) {
  HWY_ALIGN float buf[hn::MaxLanes(DF())];
  for (size_t i = 0; i < hn::Lanes(d); ++i) buf[i] = i < count ? p[i] : fill;
  return hn::Load(d, buf);
}

HWY_INLINE void StoreTail(DF d, VF v, float* HWY_RESTRICT p, size_t count) {
  HWY_ALIGN float buf[hn::MaxLanes(DF())];
  hn::Store(v, d, buf);
  for (size_t i = 0; i < count; ++i) p[i] = buf[i];
}

// ---- math --------------------------------------------------------------------

// hn::Exp converts x / ln 2 to int32 and is only specified on [-FLT_MAX, 104]:
// clamp to [-105, 89] (exp is 0 resp. +inf in f32 beyond) so the conversion
// never overflows, then restore NaN, which the clamp and hn::Exp lose.
HWY_INLINE VF ExpF(DF d, VF x) {
  const VF clamped = hn::Min(hn::Max(x, hn::Set(d, -105.0f)), hn::Set(d, 89.0f));
  return hn::IfThenElse(hn::IsNaN(x), x, hn::Exp(d, clamped));
}

// erfc(z) for z = |x| / sqrt 2, as t exp(-z^2 + P(t)), t = 1 / (1 + z/2):
// the Chebyshev fit of Numerical Recipes (2nd ed., sec. 6.2, erfcc), whose
// relative error is below 1.2e-7 for every z >= 0, so both tails of Phi keep
// their relative accuracy. z^2 = x^2 / 2 is formed from x directly; its
// rounding (relative eps) becomes a relative error of about eps * z^2 in the
// result, which only matters where erfc is already below 1e-6.
HWY_INLINE VF ErfcOfAbsXOverSqrt2(DF d, VF x) {
  const VF ax = hn::Abs(x);
  const VF z = hn::Mul(ax, hn::Set(d, 0.70710678118654752f));
  const VF t = hn::Div(hn::Set(d, 1.0f), hn::MulAdd(z, hn::Set(d, 0.5f), hn::Set(d, 1.0f)));
  VF p = hn::Set(d, 0.17087277f);
  p = hn::MulAdd(p, t, hn::Set(d, -0.82215223f));
  p = hn::MulAdd(p, t, hn::Set(d, 1.48851587f));
  p = hn::MulAdd(p, t, hn::Set(d, -1.13520398f));
  p = hn::MulAdd(p, t, hn::Set(d, 0.27886807f));
  p = hn::MulAdd(p, t, hn::Set(d, -0.18628806f));
  p = hn::MulAdd(p, t, hn::Set(d, 0.09678418f));
  p = hn::MulAdd(p, t, hn::Set(d, 0.37409196f));
  p = hn::MulAdd(p, t, hn::Set(d, 1.00002368f));
  p = hn::MulAdd(p, t, hn::Set(d, -1.26551223f));
  const VF arg = hn::NegMulAdd(hn::Mul(ax, hn::Set(d, 0.5f)), ax, p);  // p - x^2/2
  return hn::Mul(t, ExpF(d, arg));
}

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
