// Per-target vector helpers shared by the kernels' -inl.h files: the f32
// tag, tail loads and stores, and a safe exp. Pure inline code, so any -inl.h
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

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
