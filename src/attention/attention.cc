// The attention front door: validates once (messages name the argument and the
// values), resolves layouts, heads and masks into per-slice pointers and
// strides, and runs the fused kernel over (batch, head, query tile) tasks.
#include "qkv/attention.h"

#include <cmath>
#include <vector>

#include "attention/plan.h"
#include "core/parallel.h"
#include "kernels/cpu/attention.h"

namespace qkv {

AttentionResult attention(const Tensor& q, const Tensor& k, const Tensor& v,
                          const AttentionOptions& options) {
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, "attention");
  AttentionResult result = plan.make_result(options.return_lse);
  const int64_t tiles = (plan.lq + kernels::kAttentionRowTile - 1) / kernels::kAttentionRowTile;
  const int64_t tasks = plan.batch * plan.heads * tiles;
  const size_t workspace_floats = kernels::AttentionWorkspaceFloats(plan.d, plan.dv);
  detail::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> workspace(workspace_floats);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tile = task % tiles, bh = task / tiles;
      const kernels::AttentionSlice slice = plan.slice(bh / plan.heads, bh % plan.heads, result);
      const int64_t row_begin = tile * kernels::kAttentionRowTile;
      const int64_t row_end = std::min(plan.lq, row_begin + kernels::kAttentionRowTile);
      kernels::FlashAttentionForward(slice, row_begin, row_end, workspace.data());
    }
  });
  return result;
}

}  // namespace qkv
