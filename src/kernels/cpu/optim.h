// Kernels of the optimizer updates of qkv/optim.h (SGD, Adam, AdamW),
// dispatched at run time to the best Highway target (optim.cc). Internal to
// the library.
//
// Each kernel updates one contiguous run of `n` parameters and their state
// in place, following torch's single-tensor implementations operation by
// operation (see src/train/optim.cc for the torch code each step mirrors).
// Raw pointers, no validation, any alignment, n == 0 allowed; the runs must
// not overlap one another. Results are element-wise, so splitting a tensor
// into runs in any way gives the same bits.
//
// Fused multiply-adds: where torch's vectorised CPU kernels fuse (add with
// alpha, lerp, addcmul), the kernels use hn::MulAdd. On AVX2 and AVX-512
// targets that is one fma instruction, so the results are bit-identical to
// the scalar twins in kernels/ref/optim_ref.h (which use std::fma) and to
// torch's. SSE4, SSSE3, EMU128 and SCALAR have no fma: there MulAdd rounds the
// product and the sum separately, which can move a result by an ulp or so
// per fused step.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qkv::kernels {

// The f32 scalars of one SGD step (torch/optim/sgd.py, _single_tensor_sgd),
// computed from the double hyperparameters as optim.cc does.
struct SgdStep {
  float weight_decay = 0.0f;  // used when decay
  float momentum = 0.0f;      // used when buf != null
  float keep = 1.0f;          // 1 - dampening
  float neg_lr = 0.0f;        // -lr
  bool decay = false;         // weight_decay != 0
  bool nesterov = false;
  bool maximize = false;
  bool first = false;  // the momentum buffer is new: buf = grad
};

// d = maximize ? -g : g; d = fma(p, wd, d) (decay); with a momentum buffer:
// buf = first ? d : fma(d, keep, buf * momentum), d = nesterov ? fma(buf,
// momentum, d) : buf; then p = fma(d, neg_lr, p). `buf` null: no momentum.
void SgdUpdate(float* param, const float* grad, float* buf, size_t n, const SgdStep& s);

// The f32 scalars of one Adam / AdamW step (torch/optim/adam.py,
// _single_tensor_adam), with the bias corrections already folded in.
struct AdamStep {
  float weight_decay = 0.0f;   // Adam (L2): d = fma(p, wd, d)
  float shrink = 1.0f;         // AdamW: p *= 1 - lr * weight_decay
  float w1 = 0.1f;             // 1 - beta1, the lerp weight
  float beta2 = 0.999f;        //
  float w2 = 0.001f;           // 1 - beta2
  float bc2_sqrt = 1.0f;       // sqrt(1 - beta2^step)
  float eps = 1e-8f;           //
  float neg_step_size = 0.0f;  // -lr / (1 - beta1^step)
  bool decay = false;          // weight_decay != 0
  bool decoupled = false;      // AdamW
  bool maximize = false;
};

// One step on a run: m = lerp(m, d, w1) (torch's two-fma lerp), v = fma(w2 *
// d, d, v * beta2), vmax = max(vmax, v) (NaN if either is; `max_exp_avg_sq`
// null: no amsgrad), denom = sqrt(v or vmax) / bc2_sqrt + eps, p = p +
// neg_step_size * m / denom.
void AdamUpdate(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                float* max_exp_avg_sq, size_t n, const AdamStep& s);

// The Highway target (HWY_AVX3, HWY_AVX2, ...) these kernels dispatch to now.
int64_t OptimDispatchedTarget();

}  // namespace qkv::kernels
