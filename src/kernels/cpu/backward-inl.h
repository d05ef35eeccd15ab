// Per-target code of the backward kernels (see backward.h for what each
// computes). Compiled once per Highway target from backward.cc; never include
// it elsewhere.

// Per-target include guard (the Highway idiom: toggles once per target).
#if defined(QKV_KERNELS_CPU_BACKWARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CPU_BACKWARD_INL_H_
#undef QKV_KERNELS_CPU_BACKWARD_INL_H_
#else
#define QKV_KERNELS_CPU_BACKWARD_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "hwy/highway.h"
#include "kernels/cpu/vec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[i] = grad[i] * f(x[i]); f is a functor taking (DF, VF) -> f'(x).
template <class F>
HWY_INLINE void MapGrad(const float* grad, const float* x, float* out, size_t n, const F& f) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes)
    hn::StoreU(hn::Mul(hn::LoadU(d, grad + i), f(d, hn::LoadU(d, x + i))), d, out + i);
  if (i < n) {
    const VF g = LoadTail(d, grad + i, n - i, 0.0f);
    StoreTail(d, hn::Mul(g, f(d, LoadTail(d, x + i, n - i, 0.0f))), out + i, n - i);
  }
}

// sigmoid(z) and 1 - sigmoid(z) from t = exp(-|z|) <= 1: 1 / (1 + t) and
// t / (1 + t), in the order z's sign asks for. Neither overflows for any z
// and neither is formed as 1 - something, so both keep their relative
// accuracy on both tails. NaN z gives NaN.
HWY_INLINE void SigmoidPair(DF d, VF z, VF& s, VF& one_minus_s) {
  const VF one = hn::Set(d, 1.0f);
  const VF t = ExpF(d, hn::Neg(hn::Abs(z)));
  const VF r = hn::Div(one, hn::Add(one, t));
  const VF tr = hn::Mul(t, r);
  const auto negative = hn::Lt(z, hn::Zero(d));
  s = hn::IfThenElse(negative, tr, r);
  one_minus_s = hn::IfThenElse(negative, r, tr);
}

// d/dx x sigmoid(x) = s (1 + x (1 - s)).
struct SiluGradOp {
  HWY_INLINE VF operator()(DF d, VF x) const {
    VF s, s1;
    SigmoidPair(d, x, s, s1);
    return hn::Mul(s, hn::MulAdd(x, s1, hn::Set(d, 1.0f)));
  }
};

// d/dx x Phi(x) = Phi(x) + x phi(x), phi the normal density. Phi through
// erfc as in the forward; for huge |x|, x^2 overflows to inf and phi to 0.
struct GeluErfGradOp {
  HWY_INLINE VF operator()(DF d, VF x) const {
    const VF half_erfc = hn::Mul(ErfcOfAbsXOverSqrt2(d, x), hn::Set(d, 0.5f));
    const VF cdf =
        hn::IfThenElse(hn::Lt(x, hn::Zero(d)), half_erfc, hn::Sub(hn::Set(d, 1.0f), half_erfc));
    const VF minus_half_x2 = hn::Mul(hn::Mul(x, x), hn::Set(d, -0.5f));
    const VF pdf = hn::Mul(ExpF(d, minus_half_x2), hn::Set(d, 0.3989422804014327f));
    return hn::MulAdd(x, pdf, cdf);
  }
};

// y = x s(z), s the sigmoid, z = 2 sqrt(2/pi) (x + 0.044715 x^3) (the tanh
// form: 0.5 (1 + tanh(z/2)) = s(z)), so y' = s + x s (1 - s) z'(x) with
// z' = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2). Beyond |x| = 20, s (1 - s) <
// exp(-600): y' is 1 or 0 to f32 precision, and clamping x there keeps x^3
// finite (torch's f32 kernel gives inf * 0 = NaN for |x| > 1e13).
struct GeluTanhGradOp {
  HWY_INLINE VF operator()(DF d, VF x) const {
    const VF xc = hn::Min(hn::Max(x, hn::Set(d, -20.0f)), hn::Set(d, 20.0f));
    const VF x2 = hn::Mul(xc, xc);
    const VF k = hn::Set(d, 1.5957691216057308f);  // 2 sqrt(2/pi)
    const VF z = hn::Mul(hn::Mul(xc, k), hn::MulAdd(x2, hn::Set(d, 0.044715f), hn::Set(d, 1.0f)));
    const VF dz = hn::Mul(k, hn::MulAdd(x2, hn::Set(d, 0.134145f), hn::Set(d, 1.0f)));
    VF s, s1;
    SigmoidPair(d, z, s, s1);
    const VF grad = hn::MulAdd(hn::Mul(hn::Mul(xc, s), s1), dz, s);
    return hn::IfThenElse(hn::IsNaN(x), x, grad);
  }
};

HWY_NOINLINE void ReluBackwardImpl(const float* grad, const float* x, float* out, size_t n) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  // torch's threshold_backward: 0 where x <= 0, which is false for NaN.
  for (; i + lanes <= n; i += lanes) {
    const auto off = hn::Le(hn::LoadU(d, x + i), hn::Zero(d));
    hn::StoreU(hn::IfThenZeroElse(off, hn::LoadU(d, grad + i)), d, out + i);
  }
  if (i < n) {
    const auto off = hn::Le(LoadTail(d, x + i, n - i, 0.0f), hn::Zero(d));
    StoreTail(d, hn::IfThenZeroElse(off, LoadTail(d, grad + i, n - i, 0.0f)), out + i, n - i);
  }
}

HWY_NOINLINE void SiluBackwardImpl(const float* grad, const float* x, float* out, size_t n) {
  MapGrad(grad, x, out, n, SiluGradOp());
}

HWY_NOINLINE void GeluErfBackwardImpl(const float* grad, const float* x, float* out, size_t n) {
  MapGrad(grad, x, out, n, GeluErfGradOp());
}

HWY_NOINLINE void GeluTanhBackwardImpl(const float* grad, const float* x, float* out, size_t n) {
  MapGrad(grad, x, out, n, GeluTanhGradOp());
}

// ---- softmax -------------------------------------------------------------------

// sum(a * b) (b null: sum(a)) with four vector accumulators.
HWY_INLINE float DotRun(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, size_t n) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  VF s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  const auto at = [&](const float* p, size_t i) HWY_ATTR { return hn::LoadU(d, p + i); };
  const auto term = [&](size_t i) HWY_ATTR { return b ? hn::Mul(at(a, i), at(b, i)) : at(a, i); };
  size_t i = 0;
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    s0 = hn::Add(s0, term(i));
    s1 = hn::Add(s1, term(i + lanes));
    s2 = hn::Add(s2, term(i + 2 * lanes));
    s3 = hn::Add(s3, term(i + 3 * lanes));
  }
  for (; i + lanes <= n; i += lanes) s0 = hn::Add(s0, term(i));
  if (i < n) {
    VF t = LoadTail(d, a + i, n - i, 0.0f);
    if (b) t = hn::Mul(t, LoadTail(d, b + i, n - i, 0.0f));
    s1 = hn::Add(s1, t);
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
}

// out[i] = f(grad[i], y[i]) over a run.
template <class F>
HWY_INLINE void MapPair(const float* grad, const float* y, float* out, size_t n, const F& f) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes)
    hn::StoreU(f(hn::LoadU(d, grad + i), hn::LoadU(d, y + i)), d, out + i);
  if (i < n)
    StoreTail(d, f(LoadTail(d, grad + i, n - i, 0.0f), LoadTail(d, y + i, n - i, 0.0f)), out + i,
              n - i);
}

HWY_NOINLINE void SoftmaxBackwardImpl(const float* grad, const float* y, float* out, size_t n) {
  const DF d;
  const VF dot = hn::Set(d, DotRun(grad, y, n));
  MapPair(grad, y, out, n, [&](VF g, VF p) HWY_ATTR { return hn::Mul(p, hn::Sub(g, dot)); });
}

HWY_NOINLINE void LogSoftmaxBackwardImpl(const float* grad, const float* y, float* out, size_t n) {
  const DF d;
  const VF sum = hn::Set(d, DotRun(grad, nullptr, n));
  MapPair(grad, y, out, n,
          [&](VF g, VF ly) HWY_ATTR { return hn::NegMulAdd(ExpF(d, ly), sum, g); });
}

// ---- normalisation ---------------------------------------------------------------

using DD = hn::ScalableTag<double>;
using VD = hn::Vec<DD>;
using DFHalf = hn::Rebind<float, DD>;  // the floats that widen to one vector of doubles

HWY_INLINE VD LoadWide(const float* p) {
  return hn::PromoteTo(DD(), hn::LoadU(DFHalf(), p));
}

HWY_INLINE double SumLanes(VD v) {
  return hn::GetLane(hn::SumOfLanes(DD(), v));
}

// The output pass of a norm's backward, with dev = x - shift - center,
// xhat = dev * inv_std and gw = grad * weight:
// dx = ((gw - m) - dev * k_std) * inv_std, k_std = mean(gw xhat) * inv_std,
// and the parameter gradients dweight += grad * xhat, dbias += grad when not
// null. (Layer norm: m = mean(gw); RMS norm: shift = center = m = 0.) The
// bracket is formed before the scaling and with one rounding of its product
// (k_std comes in rounded once from double): where a row is nearly constant,
// or n is tiny, its terms cancel, and gw * inv_std - m * inv_std would leave
// noise of eps * inv_std * |gw|.
HWY_INLINE void NormBackwardOutput(const float* HWY_RESTRICT grad, const float* HWY_RESTRICT x,
                                   const float* HWY_RESTRICT weight, float shift, float center,
                                   float inv_std, float m, float k_std, float* dx, float* dweight,
                                   float* dbias, size_t n) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  const VF vshift = hn::Set(d, shift), vcenter = hn::Set(d, center);
  const VF vscale = hn::Set(d, inv_std), vm = hn::Set(d, m), vk = hn::Set(d, k_std);
  for (size_t i = 0; i < n; i += lanes) {
    const size_t count = std::min(lanes, n - i);
    const bool full = count == lanes;
    const auto load = [&](const float* p) HWY_ATTR {
      return full ? hn::LoadU(d, p + i) : LoadTail(d, p + i, count, 0.0f);
    };
    const auto store = [&](VF v, float* p) HWY_ATTR {
      if (full) {
        hn::StoreU(v, d, p + i);
      } else {
        StoreTail(d, v, p + i, count);
      }
    };
    const VF g = load(grad);
    const VF dev = hn::Sub(hn::Sub(load(x), vshift), vcenter);
    const VF xhat = hn::Mul(dev, vscale);
    const VF gw = weight ? hn::Mul(g, load(weight)) : g;
    store(hn::Mul(hn::NegMulAdd(dev, vk, hn::Sub(gw, vm)), vscale), dx);
    if (dweight) store(hn::MulAdd(g, xhat, load(dweight)), dweight);
    if (dbias) store(hn::Add(g, load(dbias)), dbias);
  }
}

// One pass in double over the row, shifted by x[0] (which keeps the one-pass
// variance exact to double rounding even when |mean| >> std: every
// deviation from x[0] is at most sqrt(n) std), then the f32 output pass.
HWY_NOINLINE void LayerNormBackwardImpl(const float* grad, const float* x, const float* weight,
                                        double eps, float* dx, float* dweight, float* dbias,
                                        size_t n) {
  if (n == 0) return;
  if (n == 1) {                      // xhat is 0 whatever x is: the output is the bias alone
    if (dbias) dbias[0] += grad[0];  // before dx: dx may be grad's memory
    dx[0] = 0.0f;
    return;
  }
  const DD dd;
  const size_t lanes = hn::Lanes(dd);
  const double shift = x[0];
  const VD vshift = hn::Set(dd, shift);
  VD s1 = hn::Zero(dd), s2 = hn::Zero(dd), sg = hn::Zero(dd), sgd = hn::Zero(dd);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const VD dev = hn::Sub(LoadWide(x + i), vshift);
    VD gw = LoadWide(grad + i);
    if (weight) gw = hn::Mul(gw, LoadWide(weight + i));
    s1 = hn::Add(s1, dev);
    s2 = hn::MulAdd(dev, dev, s2);
    sg = hn::Add(sg, gw);
    sgd = hn::MulAdd(gw, dev, sgd);
  }
  double sum_d = SumLanes(s1), sum_d2 = SumLanes(s2), sum_gw = SumLanes(sg),
         sum_gwd = SumLanes(sgd);
  for (; i < n; ++i) {
    const double dev = x[i] - shift;
    const double gw = double{grad[i]} * (weight ? double{weight[i]} : 1.0);
    sum_d += dev;
    sum_d2 += dev * dev;
    sum_gw += gw;
    sum_gwd += gw * dev;
  }
  const double fn = static_cast<double>(n);
  const double center = sum_d / fn;  // mean - x[0]
  const double var = std::max(0.0, sum_d2 / fn - center * center);
  const double rstd = 1.0 / std::sqrt(var + eps);
  const double mean_gw = sum_gw / fn;
  const double mean_gw_xhat = rstd * (sum_gwd / fn - center * mean_gw);
  // dx = rstd (gw - mean(gw) - xhat mean(gw xhat)). The centre is kept apart
  // from the shift (never rounded to one float as the mean).
  NormBackwardOutput(grad, x, weight, static_cast<float>(shift), static_cast<float>(center),
                     static_cast<float>(rstd), static_cast<float>(mean_gw),
                     static_cast<float>(mean_gw_xhat * rstd), dx, dweight, dbias, n);
}

HWY_NOINLINE void RmsNormBackwardImpl(const float* grad, const float* x, const float* weight,
                                      double eps, float* dx, float* dweight, size_t n) {
  if (n == 0) return;
  if (n == 1) {  // the bracket below cancels to gw eps / (x^2 + eps): use that
    const double x2 = double{x[0]} * x[0], r = 1.0 / std::sqrt(x2 + eps);
    const double g = grad[0], gw = g * (weight ? double{weight[0]} : 1.0);
    if (dweight) dweight[0] = static_cast<float>(dweight[0] + g * x[0] * r);
    dx[0] = static_cast<float>(gw * r * (eps / (x2 + eps)));
    return;
  }
  const DD dd;
  const size_t lanes = hn::Lanes(dd);
  VD sx2 = hn::Zero(dd), sgx = hn::Zero(dd);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const VD vx = LoadWide(x + i);
    VD gw = LoadWide(grad + i);
    if (weight) gw = hn::Mul(gw, LoadWide(weight + i));
    sx2 = hn::MulAdd(vx, vx, sx2);
    sgx = hn::MulAdd(gw, vx, sgx);
  }
  double sum_x2 = SumLanes(sx2), sum_gwx = SumLanes(sgx);
  for (; i < n; ++i) {
    const double gw = double{grad[i]} * (weight ? double{weight[i]} : 1.0);
    sum_x2 += double{x[i]} * x[i];
    sum_gwx += gw * x[i];
  }
  const double fn = static_cast<double>(n);
  const double r = 1.0 / std::sqrt(sum_x2 / fn + eps);
  // dx = r gw - x r^3 mean(gw x) = (gw - x (r^2 mean(gw x))) r.
  NormBackwardOutput(grad, x, weight, 0.0f, 0.0f, static_cast<float>(r), 0.0f,
                     static_cast<float>(r * r * sum_gwx / fn), dx, dweight, nullptr, n);
}

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
