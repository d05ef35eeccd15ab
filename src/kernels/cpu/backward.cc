// Run-time dispatch of the backward kernels (see backward.h), as in
// elementwise.cc: backward-inl.h is compiled once per Highway target.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/backward.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/backward-inl.h"

#if HWY_ONCE
#include "kernels/cpu/backward.h"

namespace qkv::kernels {

HWY_EXPORT(ReluBackwardImpl);
HWY_EXPORT(SiluBackwardImpl);
HWY_EXPORT(GeluErfBackwardImpl);
HWY_EXPORT(GeluTanhBackwardImpl);
HWY_EXPORT(SoftmaxBackwardImpl);
HWY_EXPORT(LogSoftmaxBackwardImpl);
HWY_EXPORT(LayerNormBackwardImpl);
HWY_EXPORT(RmsNormBackwardImpl);

void ReluBackward(const float* grad, const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(ReluBackwardImpl)(grad, x, out, n);
}
void SiluBackward(const float* grad, const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(SiluBackwardImpl)(grad, x, out, n);
}
void GeluErfBackward(const float* grad, const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(GeluErfBackwardImpl)(grad, x, out, n);
}
void GeluTanhBackward(const float* grad, const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(GeluTanhBackwardImpl)(grad, x, out, n);
}
void SoftmaxBackward(const float* grad, const float* y, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(SoftmaxBackwardImpl)(grad, y, out, n);
}
void LogSoftmaxBackward(const float* grad, const float* y, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(LogSoftmaxBackwardImpl)(grad, y, out, n);
}
void LayerNormBackward(const float* grad, const float* x, const float* weight, double eps,
                       float* dx, float* dweight, float* dbias, size_t n) {
  HWY_DYNAMIC_DISPATCH(LayerNormBackwardImpl)(grad, x, weight, eps, dx, dweight, dbias, n);
}
void RmsNormBackward(const float* grad, const float* x, const float* weight, double eps, float* dx,
                     float* dweight, size_t n) {
  HWY_DYNAMIC_DISPATCH(RmsNormBackwardImpl)(grad, x, weight, eps, dx, dweight, n);
}

void Dropout(const float* x, uint64_t seed, uint64_t first, uint32_t threshold, float scale,
             float* out, bool* mask, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint64_t z = seed + (first + i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const bool keep = (z >> 40) >= threshold;
    mask[i] = keep;
    out[i] = keep ? x[i] * scale : 0.0f;
  }
}

void DropoutBackward(const float* grad, const bool* mask, float scale, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = mask[i] ? grad[i] * scale : 0.0f;
}

}  // namespace qkv::kernels
#endif  // HWY_ONCE
