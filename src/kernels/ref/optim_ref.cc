#include "kernels/ref/optim_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace qkv::kernels::ref {

void SgdUpdate(float* p, const float* g, float* buf, size_t n, const SgdStep& s) {
  for (size_t i = 0; i < n; ++i) {
    float d = s.maximize ? -g[i] : g[i];
    if (s.decay) d = std::fma(p[i], s.weight_decay, d);  // grad.add(param, alpha=weight_decay)
    if (buf) {
      // buf = grad.clone(), or buf.mul_(momentum).add_(grad, alpha=1 - dampening)
      buf[i] = s.first ? d : std::fma(d, s.keep, buf[i] * s.momentum);
      d = s.nesterov ? std::fma(buf[i], s.momentum, d) : buf[i];  // grad.add(buf, alpha=momentum)
    }
    p[i] = std::fma(d, s.neg_lr, p[i]);  // param.add_(grad, alpha=-lr)
  }
}

void AdamUpdate(float* p, const float* g, float* m, float* v, float* vmax, size_t n,
                const AdamStep& s) {
  const bool small_w1 = std::abs(s.w1) < 0.5f;
  const float w1_minus_1 = s.w1 - 1.0f;
  for (size_t i = 0; i < n; ++i) {
    float d = s.maximize ? -g[i] : g[i];
    if (s.decay) {
      if (s.decoupled) {
        p[i] *= s.shrink;  // param.mul_(1 - lr * weight_decay)
      } else {
        d = std::fma(p[i], s.weight_decay, d);  // grad.add(param, alpha=weight_decay)
      }
    }
    // exp_avg.lerp_(grad, 1 - beta1), as torch's lerp_vec: two fmas chosen
    // by the weight's size for accuracy near both ends.
    const float diff = d - m[i];
    m[i] = small_w1 ? std::fma(s.w1, diff, m[i]) : std::fma(w1_minus_1, diff, d);
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): one fma.
    v[i] = std::fma(s.w2 * d, d, v[i] * s.beta2);
    float second = v[i];
    if (vmax) {  // torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
      vmax[i] = std::isnan(vmax[i]) || std::isnan(second) ? std::numeric_limits<float>::quiet_NaN()
                                                          : std::max(vmax[i], second);
      second = vmax[i];
    }
    // denom = (sqrt(v) / bias_correction2_sqrt).add_(eps);
    // param.addcdiv_(exp_avg, denom, value=-step_size)
    const float denom = std::sqrt(second) / s.bc2_sqrt + s.eps;
    p[i] = p[i] + s.neg_step_size * m[i] / denom;
  }
}

}  // namespace qkv::kernels::ref
