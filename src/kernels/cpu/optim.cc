// Run-time dispatch of the optimizer kernels (see optim.h), as in
// elementwise.cc: optim-inl.h is compiled once per Highway target.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/optim.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/optim-inl.h"

#if HWY_ONCE
#include "kernels/cpu/optim.h"

namespace qkv::kernels {

HWY_EXPORT(SgdUpdateImpl);
HWY_EXPORT(AdamUpdateImpl);
HWY_EXPORT(OptimDispatchedTargetImpl);

void SgdUpdate(float* param, const float* grad, float* buf, size_t n, const SgdStep& s) {
  HWY_DYNAMIC_DISPATCH(SgdUpdateImpl)(param, grad, buf, n, s);
}
void AdamUpdate(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                float* max_exp_avg_sq, size_t n, const AdamStep& s) {
  HWY_DYNAMIC_DISPATCH(AdamUpdateImpl)(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, s);
}
int64_t OptimDispatchedTarget() {
  return HWY_DYNAMIC_DISPATCH(OptimDispatchedTargetImpl)();
}

}  // namespace qkv::kernels
#endif  // HWY_ONCE
