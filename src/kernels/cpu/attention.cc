// Run-time dispatch of the fused attention kernel (see attention.h): one
// indirect call per query tile, negligible beside the tile's work.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/attention-inl.h"

#if HWY_ONCE
#include "kernels/cpu/attention.h"

namespace qkv::kernels {

HWY_EXPORT(FlashAttentionForwardImpl);

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

}  // namespace qkv::kernels
#endif  // HWY_ONCE
