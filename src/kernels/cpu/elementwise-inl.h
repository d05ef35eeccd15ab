// Per-target code of the element-wise and row kernels (see elementwise.h for
// what each computes). Compiled once per Highway target via foreach_target.h
// from elementwise.cc; never include it elsewhere.
//
// Runs are walked in whole vectors; the last n % Lanes floats go through a
// stack buffer (LoadTail / StoreTail), because a full-width load there could
// read past the end of the caller's buffer and a masked load is emulated by a
// full load on SSE targets.

// Per-target include guard (the Highway idiom: toggles once per target).
#if defined(QKV_KERNELS_CPU_ELEMENTWISE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CPU_ELEMENTWISE_INL_H_
#undef QKV_KERNELS_CPU_ELEMENTWISE_INL_H_
#else
#define QKV_KERNELS_CPU_ELEMENTWISE_INL_H_
#endif

#include <cmath>
#include <cstddef>
#include <limits>

#include "hwy/highway.h"
#include "kernels/cpu/vec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[i] = f(x[i]) over a run; f is a functor taking (DF, VF).
template <class F>
HWY_INLINE void MapUnary(const float* x, float* out, size_t n, const F& f) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) hn::StoreU(f(d, hn::LoadU(d, x + i)), d, out + i);
  if (i < n) StoreTail(d, f(d, LoadTail(d, x + i, n - i, 0.0f)), out + i, n - i);
}

template <class F>
HWY_INLINE void MapBinary(const float* a, const float* b, float* out, size_t n, const F& f) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes)
    hn::StoreU(f(d, hn::LoadU(d, a + i), hn::LoadU(d, b + i)), d, out + i);
  if (i < n)
    StoreTail(d, f(d, LoadTail(d, a + i, n - i, 0.0f), LoadTail(d, b + i, n - i, 0.0f)), out + i,
              n - i);
}

struct GeluErfOp {
  HWY_INLINE VF operator()(DF d, VF x) const {
    // Phi(x) = erfc(-x / sqrt 2) / 2: erfc(|x|/sqrt 2)/2 for x < 0, one minus it above.
    const VF half_erfc = hn::Mul(ErfcOfAbsXOverSqrt2(d, x), hn::Set(d, 0.5f));
    const VF phi = hn::IfThenElse(hn::Lt(x, hn::Zero(d)), half_erfc,
                                  hn::Sub(hn::Set(d, 1.0f), half_erfc));
    return hn::Mul(x, phi);
  }
};

struct GeluTanhOp {
  HWY_INLINE VF operator()(DF d, VF x) const {
    // 0.5 (1 + tanh y) = 1 / (1 + exp(-2y)); -2y = -2 sqrt(2/pi) x (1 + 0.044715 x^2).
    const VF x2 = hn::Mul(x, x);
    const VF inner = hn::MulAdd(x2, hn::Set(d, 0.044715f), hn::Set(d, 1.0f));
    const VF minus_2y = hn::Mul(hn::Mul(x, hn::Set(d, -1.5957691216057308f)), inner);
    return hn::Div(x, hn::Add(hn::Set(d, 1.0f), ExpF(d, minus_2y)));
  }
};

struct SiluOp {
  HWY_INLINE VF operator()(DF d, VF x) const {
    return hn::Div(x, hn::Add(hn::Set(d, 1.0f), ExpF(d, hn::Neg(x))));
  }
};

// ---- element-wise --------------------------------------------------------------

HWY_NOINLINE void AddImpl(const float* a, const float* b, float* out, size_t n) {
  MapBinary(a, b, out, n, [](DF, VF u, VF v) HWY_ATTR { return hn::Add(u, v); });
}

HWY_NOINLINE void SubImpl(const float* a, const float* b, float* out, size_t n) {
  MapBinary(a, b, out, n, [](DF, VF u, VF v) HWY_ATTR { return hn::Sub(u, v); });
}

HWY_NOINLINE void MulImpl(const float* a, const float* b, float* out, size_t n) {
  MapBinary(a, b, out, n, [](DF, VF u, VF v) HWY_ATTR { return hn::Mul(u, v); });
}

HWY_NOINLINE void DivImpl(const float* a, const float* b, float* out, size_t n) {
  MapBinary(a, b, out, n, [](DF, VF u, VF v) HWY_ATTR { return hn::Div(u, v); });
}

HWY_NOINLINE void AddScalarImpl(const float* x, float addend, float* out, size_t n) {
  MapUnary(x, out, n, [addend](DF d, VF v) HWY_ATTR { return hn::Add(v, hn::Set(d, addend)); });
}

HWY_NOINLINE void ScaleImpl(const float* x, float factor, float* out, size_t n) {
  MapUnary(x, out, n, [factor](DF d, VF v) HWY_ATTR { return hn::Mul(v, hn::Set(d, factor)); });
}

HWY_NOINLINE void DivScalarImpl(const float* x, float divisor, float* out, size_t n) {
  MapUnary(x, out, n, [divisor](DF d, VF v) HWY_ATTR { return hn::Div(v, hn::Set(d, divisor)); });
}

HWY_NOINLINE void ScalarMinusImpl(const float* x, float value, float* out, size_t n) {
  MapUnary(x, out, n, [value](DF d, VF v) HWY_ATTR { return hn::Sub(hn::Set(d, value), v); });
}

HWY_NOINLINE void ScalarOverImpl(const float* x, float value, float* out, size_t n) {
  MapUnary(x, out, n, [value](DF d, VF v) HWY_ATTR { return hn::Div(hn::Set(d, value), v); });
}

HWY_NOINLINE void ReluImpl(const float* x, float* out, size_t n) {
  // x < 0 is false for NaN, which therefore passes through (hn::Max would drop it).
  MapUnary(x, out, n,
           [](DF d, VF v) HWY_ATTR { return hn::IfThenZeroElse(hn::Lt(v, hn::Zero(d)), v); });
}

HWY_NOINLINE void ExpImpl(const float* x, float* out, size_t n) {
  MapUnary(x, out, n, [](DF d, VF v) HWY_ATTR { return ExpF(d, v); });
}

HWY_NOINLINE void SiluImpl(const float* x, float* out, size_t n) { MapUnary(x, out, n, SiluOp()); }

HWY_NOINLINE void GeluErfImpl(const float* x, float* out, size_t n) {
  MapUnary(x, out, n, GeluErfOp());
}

HWY_NOINLINE void GeluTanhImpl(const float* x, float* out, size_t n) {
  MapUnary(x, out, n, GeluTanhOp());
}

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
