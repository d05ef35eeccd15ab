// Run-time dispatch of the fused attention kernel (see attention.h): one
// indirect call per query tile, negligible beside the tile's work.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/attention-inl.h"
#include "kernels/cpu/attention_backward-inl.h"

#if HWY_ONCE
#include "kernels/cpu/attention.h"

namespace qkv::kernels {

HWY_EXPORT(FlashAttentionForwardImpl);
HWY_EXPORT(FlashAttentionBackwardImpl);
HWY_EXPORT(AttentionProbabilitiesImpl);

size_t AttentionWorkspaceFloats(int64_t d, int64_t dv) {
  // Padded to whole vectors of the widest target (16 floats); see the layout
  // in attention-inl.h.
  const int64_t dvp = (dv + 15) / 16 * 16;
  const int64_t br = kAttentionRowTile, bc = kAttentionKeyBlock;
  return static_cast<size_t>(br * d + d * bc + bc * dvp + br * bc + br * dvp + 2 * br + 128);  // + alignment slack
}

void FlashAttentionForward(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                           float* workspace) {
  HWY_DYNAMIC_DISPATCH(FlashAttentionForwardImpl)(slice, row_begin, row_end, workspace);
}

void AttentionProbabilities(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                            float* out, int64_t out_stride, float* workspace) {
  HWY_DYNAMIC_DISPATCH(AttentionProbabilitiesImpl)(slice, row_begin, row_end, out, out_stride,
                                                   workspace);
}

size_t AttentionBackwardWorkspaceFloats(int64_t d, int64_t dv, int64_t lq, int64_t heads) {
  const int64_t dp = (d + 15) / 16 * 16, dvp = (dv + 15) / 16 * 16;
  const int64_t br = kAttentionRowTile, bc = kAttentionKeyBlock;
  const int64_t blocks = d * bc + bc * dp + dv * bc + br * d + br * dp + br * dvp + 3 * br * bc +
                         bc * dp + bc * dvp;
  return static_cast<size_t>(blocks + heads * lq * (dp + 1) + 16 * 64);  // + alignment slack
}

void FlashAttentionBackward(const AttentionGradSlice* heads, int64_t count, float* grad_k,
                            int64_t grad_k_stride, float* grad_v, int64_t grad_v_stride,
                            float* workspace) {
  HWY_DYNAMIC_DISPATCH(FlashAttentionBackwardImpl)(heads, count, grad_k, grad_k_stride, grad_v,
                                                   grad_v_stride, workspace);
}

}  // namespace qkv::kernels
#endif  // HWY_ONCE
