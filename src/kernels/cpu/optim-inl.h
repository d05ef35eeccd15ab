// Per-target code of the optimizer kernels (see optim.h for what each
// computes). Compiled once per Highway target via foreach_target.h from
// optim.cc; never include it elsewhere.
//
// Each step is the scalar twin's (kernels/ref/optim_ref.cc) operation for
// operation, in the same order: std::fma becomes hn::MulAdd, the rest are
// the same correctly rounded f32 operations (Mul, Div, Sqrt, Add), so on
// targets with fma the bits agree. Runs are walked in whole vectors and the
// last n % Lanes elements go through stack buffers (LoadTail / StoreTail)
// with the very same vector code, so where a run is split never matters.

// Per-target include guard (the Highway idiom: toggles once per target).
#if defined(QKV_KERNELS_CPU_OPTIM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CPU_OPTIM_INL_H_
#undef QKV_KERNELS_CPU_OPTIM_INL_H_
#else
#define QKV_KERNELS_CPU_OPTIM_INL_H_
#endif

#include <cmath>
#include <cstddef>

#include "hwy/highway.h"
#include "kernels/cpu/optim.h"
#include "kernels/cpu/vec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// ---- SGD -----------------------------------------------------------------------

template <bool kMomentum>
struct SgdOp {
  const SgdStep& s;
  VF wd, mom, keep, neg_lr;

  HWY_INLINE SgdOp(DF d, const SgdStep& step)
      : s(step),
        wd(hn::Set(d, step.weight_decay)),
        mom(hn::Set(d, step.momentum)),
        keep(hn::Set(d, step.keep)),
        neg_lr(hn::Set(d, step.neg_lr)) {}

  // Returns the new parameter; updates `buf` (kMomentum only).
  HWY_INLINE VF operator()(VF p, VF g, VF& buf) const {
    VF d = s.maximize ? hn::Neg(g) : g;
    if (s.decay) d = hn::MulAdd(p, wd, d);  // grad.add(param, alpha=weight_decay)
    if (kMomentum) {
      // buf = grad.clone(), or buf.mul_(momentum).add_(grad, alpha=1 - dampening)
      buf = s.first ? d : hn::MulAdd(d, keep, hn::Mul(buf, mom));
      d = s.nesterov ? hn::MulAdd(buf, mom, d) : buf;  // grad.add(buf, alpha=momentum)
    }
    return hn::MulAdd(d, neg_lr, p);  // param.add_(grad, alpha=-lr)
  }
};

template <bool kMomentum>
HWY_INLINE void SgdRun(float* HWY_RESTRICT param, const float* HWY_RESTRICT grad,
                       float* HWY_RESTRICT buf, size_t n, const SgdStep& s) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  const SgdOp<kMomentum> op(d, s);
  VF b = hn::Zero(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    if (kMomentum && !s.first) b = hn::LoadU(d, buf + i);
    hn::StoreU(op(hn::LoadU(d, param + i), hn::LoadU(d, grad + i), b), d, param + i);
    if (kMomentum) hn::StoreU(b, d, buf + i);
  }
  if (i < n) {
    const size_t rest = n - i;
    if (kMomentum && !s.first) b = LoadTail(d, buf + i, rest, 0.0f);
    StoreTail(d, op(LoadTail(d, param + i, rest, 0.0f), LoadTail(d, grad + i, rest, 0.0f), b),
              param + i, rest);
    if (kMomentum) StoreTail(d, b, buf + i, rest);
  }
}

HWY_NOINLINE void SgdUpdateImpl(float* param, const float* grad, float* buf, size_t n,
                                const SgdStep& s) {
  if (buf) {
    SgdRun<true>(param, grad, buf, n, s);
  } else {
    SgdRun<false>(param, grad, nullptr, n, s);
  }
}

// ---- Adam / AdamW ------------------------------------------------------------------

template <bool kAmsgrad>
struct AdamOp {
  const AdamStep& s;
  bool small_w1;
  VF wd, shrink, w1, w1_minus_1, beta2, w2, bc2_sqrt, eps, neg_step_size, nan;

  HWY_INLINE AdamOp(DF d, const AdamStep& step)
      : s(step),
        small_w1(std::abs(step.w1) < 0.5f),
        wd(hn::Set(d, step.weight_decay)),
        shrink(hn::Set(d, step.shrink)),
        w1(hn::Set(d, step.w1)),
        w1_minus_1(hn::Set(d, step.w1 - 1.0f)),
        beta2(hn::Set(d, step.beta2)),
        w2(hn::Set(d, step.w2)),
        bc2_sqrt(hn::Set(d, step.bc2_sqrt)),
        eps(hn::Set(d, step.eps)),
        neg_step_size(hn::Set(d, step.neg_step_size)),
        nan(hn::Set(d, kNaN)) {}

  // Updates p, m, v and (kAmsgrad) vmax.
  HWY_INLINE void operator()(VF& p, VF g, VF& m, VF& v, VF& vmax) const {
    VF d = s.maximize ? hn::Neg(g) : g;
    if (s.decay) {
      if (s.decoupled) {
        p = hn::Mul(p, shrink);  // param.mul_(1 - lr * weight_decay)
      } else {
        d = hn::MulAdd(p, wd, d);  // grad.add(param, alpha=weight_decay)
      }
    }
    // exp_avg.lerp_(grad, 1 - beta1), torch's lerp_vec.
    const VF diff = hn::Sub(d, m);
    m = small_w1 ? hn::MulAdd(w1, diff, m) : hn::MulAdd(w1_minus_1, diff, d);
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).
    v = hn::MulAdd(hn::Mul(w2, d), d, hn::Mul(v, beta2));
    VF second = v;
    if (kAmsgrad) {
      // std::max(vmax, v) is v where vmax < v, else vmax (hn::Max may differ on
      // signed zeros); NaN if either is NaN, as torch.maximum.
      const auto either_nan = hn::Or(hn::IsNaN(vmax), hn::IsNaN(v));
      vmax = hn::IfThenElse(either_nan, nan, hn::IfThenElse(hn::Lt(vmax, v), v, vmax));
      second = vmax;
    }
    // denom = (sqrt(v) / bias_correction2_sqrt).add_(eps);
    // param.addcdiv_(exp_avg, denom, value=-step_size)
    const VF denom = hn::Add(hn::Div(hn::Sqrt(second), bc2_sqrt), eps);
    p = hn::Add(p, hn::Div(hn::Mul(neg_step_size, m), denom));
  }
};

template <bool kAmsgrad>
HWY_INLINE void AdamRun(float* HWY_RESTRICT param, const float* HWY_RESTRICT grad,
                        float* HWY_RESTRICT exp_avg, float* HWY_RESTRICT exp_avg_sq,
                        float* HWY_RESTRICT max_exp_avg_sq, size_t n, const AdamStep& s) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  const AdamOp<kAmsgrad> op(d, s);
  VF vmax = hn::Zero(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    VF p = hn::LoadU(d, param + i);
    VF m = hn::LoadU(d, exp_avg + i);
    VF v = hn::LoadU(d, exp_avg_sq + i);
    if (kAmsgrad) vmax = hn::LoadU(d, max_exp_avg_sq + i);
    op(p, hn::LoadU(d, grad + i), m, v, vmax);
    hn::StoreU(p, d, param + i);
    hn::StoreU(m, d, exp_avg + i);
    hn::StoreU(v, d, exp_avg_sq + i);
    if (kAmsgrad) hn::StoreU(vmax, d, max_exp_avg_sq + i);
  }
  if (i < n) {
    const size_t rest = n - i;
    VF p = LoadTail(d, param + i, rest, 0.0f);
    VF m = LoadTail(d, exp_avg + i, rest, 0.0f);
    VF v = LoadTail(d, exp_avg_sq + i, rest, 0.0f);
    if (kAmsgrad) vmax = LoadTail(d, max_exp_avg_sq + i, rest, 0.0f);
    op(p, LoadTail(d, grad + i, rest, 0.0f), m, v, vmax);
    StoreTail(d, p, param + i, rest);
    StoreTail(d, m, exp_avg + i, rest);
    StoreTail(d, v, exp_avg_sq + i, rest);
    if (kAmsgrad) StoreTail(d, vmax, max_exp_avg_sq + i, rest);
  }
}

HWY_NOINLINE void AdamUpdateImpl(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                                 float* max_exp_avg_sq, size_t n, const AdamStep& s) {
  if (max_exp_avg_sq) {
    AdamRun<true>(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, s);
  } else {
    AdamRun<false>(param, grad, exp_avg, exp_avg_sq, nullptr, n, s);
  }
}

HWY_NOINLINE int64_t OptimDispatchedTargetImpl() {
  return HWY_TARGET;
}

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
