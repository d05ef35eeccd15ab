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
  // The weights are recomputed from the log-sum-exp, so they need it.
  AttentionResult result = plan.make_result(options.return_lse || !plan.weights_heads.empty());
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
  if (!plan.weights_heads.empty()) {
    const int64_t count = static_cast<int64_t>(plan.weights_heads.size());
    detail::parallel_for(0, plan.batch * count * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> workspace(workspace_floats);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t tile = task % tiles, bw = task / tiles;
        const int64_t b = bw / count, w = bw % count;
        const kernels::AttentionSlice slice = plan.slice(b, plan.weights_heads[w], result);
        const int64_t row_begin = tile * kernels::kAttentionRowTile;
        const int64_t row_end = std::min(plan.lq, row_begin + kernels::kAttentionRowTile);
        float* out = result.weights.data<float>() + (b * count + w) * plan.lq * plan.lk +
                     row_begin * plan.lk;
        kernels::AttentionProbabilities(slice, row_begin, row_end, out, plan.lk, workspace.data());
      }
    });
    if (!options.return_lse) result.lse = Tensor();
  }
  return result;
}

Tensor attention_dropout_mask(int64_t batch, int64_t heads, int64_t lq, int64_t lk, double dropout,
                              uint64_t seed) {
  QKV_CHECK(dropout >= 0.0 && dropout < 1.0, "attention_dropout_mask: dropout must be in [0, 1), got ",
            dropout);
  Tensor mask = Tensor::empty({batch, heads, lq, lk}, DType::boolean);
  bool* out = mask.data<bool>();
  kernels::AttentionSlice s;
  s.lq = lq;
  s.lk = lk;
  s.dropout = static_cast<float>(dropout);
  s.dropout_seed = seed;
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    s.dropout_stream = static_cast<uint64_t>(bh);
    for (int64_t i = 0; i < lq; ++i)
      for (int64_t j = 0; j < lk; ++j) *out++ = kernels::DropoutKeep(s, i, j);
  }
  return mask;
}

}  // namespace qkv
