// The attention front door: validates once (messages name the argument and the
// values), resolves layouts, heads and masks into per-slice pointers and
// strides, and runs the fused kernel over (batch, head, query tile) tasks.
#include "qkv/attention.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "attention/plan.h"
#include "core/parallel.h"
#include "kernels/cpu/attention.h"

namespace qkv {
namespace {

// Decode (one or a few queries against a long KV) gives fewer (batch, head,
// tile) tasks than threads: then the keys are split too, each part computing a
// partial online softmax, merged afterwards (flash-decoding).
int64_t key_splits(int64_t tasks, int64_t lk) {
  const int64_t threads = num_threads();
  constexpr int64_t kMinKeysPerSplit = 512;
  if (tasks == 0 || tasks >= threads || lk < 2 * kMinKeysPerSplit) return 1;
  return std::clamp<int64_t>((2 * threads + tasks - 1) / tasks, 1, lk / kMinKeysPerSplit);
}

void run_split(const detail::AttentionPlan& plan, const AttentionResult& result, int64_t tiles,
               int64_t splits, size_t workspace_floats) {
  const int64_t tasks = plan.batch * plan.heads * tiles;
  const int64_t block = kernels::kAttentionKeyBlock;
  const int64_t chunk = ((plan.lk + splits - 1) / splits + block - 1) / block * block;
  const int64_t part_floats = kernels::kAttentionRowTile * (plan.dv + 2);
  std::vector<float> partials(static_cast<size_t>(tasks * splits * part_floats));
  auto rows_of = [&](int64_t task) {
    const int64_t row_begin = task % tiles * kernels::kAttentionRowTile;
    return std::pair{row_begin, std::min(plan.lq, row_begin + kernels::kAttentionRowTile)};
  };
  detail::parallel_for(0, tasks * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> workspace(workspace_floats);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t task = item / splits, split = item % splits, bh = task / tiles;
      const auto [row_begin, row_end] = rows_of(task);
      const int64_t key_begin = std::min(plan.lk, split * chunk);
      kernels::FlashAttentionForwardPartial(plan.slice(bh / plan.heads, bh % plan.heads, result),
                                            row_begin, row_end, key_begin,
                                            std::min(plan.lk, key_begin + chunk), workspace.data(),
                                            partials.data() + item * part_floats);
    }
  });
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bh = task / tiles;
    const auto [row_begin, row_end] = rows_of(task);
    kernels::MergeAttentionPartials(plan.slice(bh / plan.heads, bh % plan.heads, result), row_begin,
                                    row_end, partials.data() + task * splits * part_floats, splits,
                                    part_floats);
  }
}

// Decode with grouped-query heads: the query heads that share a K/V head
// become the rows of one tile, so k and v are read once per group instead of
// once per query head. Only where a tile row may stand for a head: one query,
// and nothing that depends on the row index beyond the causal diagonal
// (bottom-right with one query shows every key).
bool grouped_decode(const detail::AttentionPlan& plan) {
  const int64_t group = plan.kv_heads > 0 ? plan.heads / plan.kv_heads : 0;
  return plan.lq == 1 && group > 1 && group <= kernels::kAttentionRowTile &&
         !plan.allowed.defined() && !plan.bias.defined() && !plan.hooks && plan.dropout == 0 &&
         plan.weights_heads.empty() &&
         (plan.causal_diagonal == kernels::kNoCausal || plan.causal_diagonal >= plan.lk - 1);
}

void run_grouped_decode(const detail::AttentionPlan& plan, const AttentionResult& result,
                        size_t workspace_floats) {
  const int64_t group = plan.heads / plan.kv_heads;
  const Tensor out = detail::AttentionPlan::output_bhld(result, plan.layout);
  detail::parallel_for(0, plan.batch * plan.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> workspace(workspace_floats);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / plan.kv_heads, first = task % plan.kv_heads * group;
      kernels::AttentionSlice slice = plan.slice(b, first, result);
      slice.lq = group;  // rows are the group's heads, one query each
      slice.q_stride = plan.q.stride(1);
      slice.o_stride = out.stride(1);
      kernels::FlashAttentionForward(slice, 0, group, workspace.data());
    }
  });
}

}  // namespace

AttentionResult attention(const Tensor& q, const Tensor& k, const Tensor& v,
                          const AttentionOptions& options) {
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, "attention");
  // f64 (for checking) runs the oracle, in double throughout.
  if (plan.q.dtype() == DType::f64) return attention_reference(q, k, v, options);
  // The weights are recomputed from the log-sum-exp, so they need it.
  AttentionResult result = plan.make_result(options.return_lse || !plan.weights_heads.empty());
  const int64_t tiles = (plan.lq + kernels::kAttentionRowTile - 1) / kernels::kAttentionRowTile;
  const int64_t tasks = plan.batch * plan.heads * tiles;
  const size_t workspace_floats = kernels::AttentionWorkspaceFloats(plan.d, plan.dv);
  const int64_t splits = key_splits(tasks, plan.lk);
  if (grouped_decode(plan)) {
    run_grouped_decode(plan, result, workspace_floats);
  } else if (splits > 1) {
    run_split(plan, result, tiles, splits, workspace_floats);
  } else {
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
  }
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
        kernels::AttentionProbabilities(slice, row_begin, row_end, 0, plan.lk, out, plan.lk,
                                        workspace.data());
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
