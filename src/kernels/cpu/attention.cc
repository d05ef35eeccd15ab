// Run-time dispatch of the fused attention kernel (see attention.h): one
// indirect call per query tile, negligible beside the tile's work.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/attention-inl.h"
#include "kernels/cpu/attention_backward-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/attention.h"

namespace qkv::kernels {

HWY_EXPORT(FlashAttentionForwardImpl);
HWY_EXPORT(FlashAttentionBackwardImpl);
HWY_EXPORT(AttentionProbabilitiesImpl);
HWY_EXPORT(FlashAttentionForwardPartialImpl);

size_t AttentionWorkspaceFloats(int64_t d, int64_t dv) {
  // Padded to whole vectors of the widest target (16 floats); see the layout
  // in attention-inl.h.
  const int64_t dvp = (dv + 15) / 16 * 16 + 16;  // + the padding of PaddedStride
  const int64_t br = kAttentionRowTile, bc = kAttentionKeyStride;
  const int64_t dp = (d + 15) / 16 * 16;
  return static_cast<size_t>(br * dp + dp * bc + bc * dvp + br * bc + br * dvp + 2 * br +
                             128);  // + alignment slack
}

void FlashAttentionForward(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                           float* workspace) {
  HWY_DYNAMIC_DISPATCH(FlashAttentionForwardImpl)(slice, row_begin, row_end, workspace);
}

void FlashAttentionForwardPartial(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                                  int64_t key_begin, int64_t key_end, float* workspace,
                                  float* partial) {
  HWY_DYNAMIC_DISPATCH(FlashAttentionForwardPartialImpl)
  (slice, row_begin, row_end, key_begin, key_end, workspace, partial);
}

void MergeAttentionPartials(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                            const float* partials, int64_t parts, int64_t part_stride) {
  // The online-softmax merge: rescale each part's sum and output to the
  // largest max, then normalise once.
  const int64_t dv = slice.dv, rows = row_end - row_begin;
  for (int64_t i = 0; i < rows; ++i) {
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t p = 0; p < parts; ++p)
      top = std::max(top, partials[p * part_stride + i * (dv + 2)]);
    float* out = slice.o + (row_begin + i) * slice.o_stride;
    std::fill(out, out + dv, 0.0f);
    double total = 0;
    if (top != -std::numeric_limits<float>::infinity()) {
      for (int64_t p = 0; p < parts; ++p) {
        const float* part = partials + p * part_stride + i * (dv + 2);
        if (part[1] == 0.0f) continue;
        const float w = std::exp(part[0] - top);
        total += static_cast<double>(part[1]) * w;
        for (int64_t c = 0; c < dv; ++c) out[c] += part[2 + c] * w;
      }
    }
    const float inv = total > 0 ? static_cast<float>(1.0 / total) : 0.0f;
    for (int64_t c = 0; c < dv; ++c) out[c] *= inv;
    if (slice.lse != nullptr)
      slice.lse[row_begin + i] = total > 0 ? top + static_cast<float>(std::log(total))
                                           : -std::numeric_limits<float>::infinity();
  }
}

void AttentionProbabilities(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                            int64_t key_begin, int64_t key_end, float* out, int64_t out_stride,
                            float* workspace) {
  HWY_DYNAMIC_DISPATCH(AttentionProbabilitiesImpl)
  (slice, row_begin, row_end, key_begin, key_end, out, out_stride, workspace);
}

size_t AttentionBackwardWorkspaceFloats(int64_t d, int64_t dv, int64_t lq, int64_t heads) {
  const int64_t dp = (d + 15) / 16 * 16, dvp = (dv + 15) / 16 * 16;
  const int64_t br = kAttentionRowTile, bc = kAttentionKeyStride;
  const int64_t blocks =
      d * bc + bc * dp + dv * bc + br * d + br * dp + br * dvp + 4 * br * bc + bc * dp + bc * dvp;
  return static_cast<size_t>(blocks + heads * lq * (dp + 1) + 16 * 64);  // + alignment slack
}

void FlashAttentionBackward(const AttentionGradSlice* heads, int64_t count, float* grad_k,
                            int64_t grad_k_stride, float* grad_v, int64_t grad_v_stride,
                            float* workspace) {
  HWY_DYNAMIC_DISPATCH(FlashAttentionBackwardImpl)
  (heads, count, grad_k, grad_k_stride, grad_v, grad_v_stride, workspace);
}

}  // namespace qkv::kernels
#endif  // HWY_ONCE
