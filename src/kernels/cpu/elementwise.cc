// Run-time dispatch of the element-wise and row kernels: foreach_target.h
// compiles the -inl.h files once per Highway target, HWY_EXPORT builds a
// table per kernel and HWY_DYNAMIC_DISPATCH picks the best supported entry
// on each call (one indirect call per run, negligible beside the run).

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/elementwise.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/elementwise-inl.h"
#include "kernels/cpu/rows-inl.h"

#if HWY_ONCE
#include "kernels/cpu/elementwise.h"

namespace qkv::kernels {

HWY_EXPORT(AddImpl);
HWY_EXPORT(SubImpl);
HWY_EXPORT(MulImpl);
HWY_EXPORT(DivImpl);
HWY_EXPORT(AddScalarImpl);
HWY_EXPORT(ScaleImpl);
HWY_EXPORT(DivScalarImpl);
HWY_EXPORT(ScalarMinusImpl);
HWY_EXPORT(ScalarOverImpl);
HWY_EXPORT(ReluImpl);
HWY_EXPORT(ExpImpl);
HWY_EXPORT(SiluImpl);
HWY_EXPORT(GeluErfImpl);
HWY_EXPORT(GeluTanhImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(LogSoftmaxImpl);
HWY_EXPORT(LogSumExpImpl);
HWY_EXPORT(LayerNormImpl);
HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(SumImpl);
HWY_EXPORT(MeanImpl);
HWY_EXPORT(MaxImpl);
HWY_EXPORT(DispatchedTargetImpl);

void Add(const float* a, const float* b, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(AddImpl)(a, b, out, n);
}
void Sub(const float* a, const float* b, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(SubImpl)(a, b, out, n);
}
void Mul(const float* a, const float* b, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(MulImpl)(a, b, out, n);
}
void Div(const float* a, const float* b, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(DivImpl)(a, b, out, n);
}
void AddScalar(const float* x, float addend, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(AddScalarImpl)(x, addend, out, n);
}
void Scale(const float* x, float factor, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(ScaleImpl)(x, factor, out, n);
}
void DivScalar(const float* x, float divisor, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(DivScalarImpl)(x, divisor, out, n);
}
void ScalarMinus(const float* x, float value, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(ScalarMinusImpl)(x, value, out, n);
}
void ScalarOver(const float* x, float value, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(ScalarOverImpl)(x, value, out, n);
}
void Relu(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(ReluImpl)(x, out, n); }
void Exp(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(ExpImpl)(x, out, n); }
void Silu(const float* x, float* out, size_t n) { HWY_DYNAMIC_DISPATCH(SiluImpl)(x, out, n); }
void GeluErf(const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(GeluErfImpl)(x, out, n);
}
void GeluTanh(const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(GeluTanhImpl)(x, out, n);
}
void Softmax(const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, out, n);
}
void LogSoftmax(const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(LogSoftmaxImpl)(x, out, n);
}
float LogSumExp(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(LogSumExpImpl)(x, n); }
void LayerNorm(const float* x, const float* weight, const float* bias, float eps, float* out,
               size_t n) {
  HWY_DYNAMIC_DISPATCH(LayerNormImpl)(x, weight, bias, eps, out, n);
}
void RmsNorm(const float* x, const float* weight, float eps, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, weight, eps, out, n);
}
float Sum(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(SumImpl)(x, n); }
float Mean(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(MeanImpl)(x, n); }
float Max(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(MaxImpl)(x, n); }
int64_t DispatchedTarget() { return HWY_DYNAMIC_DISPATCH(DispatchedTargetImpl)(); }

}  // namespace qkv::kernels
#endif  // HWY_ONCE
