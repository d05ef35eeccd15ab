// The attention oracle: materialises each row's scores and accumulates in
// double, reading the same resolved arguments as the fused kernel (plan.h).
#include <cmath>
#include <limits>
#include <vector>

#include "attention/plan.h"
#include "core/parallel.h"

namespace qkv {
namespace {

double load(const void* row, int64_t i, bool bf16) {
  return bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(row)[i])
              : static_cast<const float*>(row)[i];
}

// One (batch, head) slice, every row, in double.
void reference_slice(const kernels::AttentionSlice& s) {
  const int64_t elem = s.bf16 ? 2 : 4;
  std::vector<double> scores(static_cast<size_t>(s.lk));
  for (int64_t i = 0; i < s.lq; ++i) {
    const char* q = static_cast<const char*>(s.q) + i * s.q_stride * elem;
    double top = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < s.lk; ++j) {
      const char* k = static_cast<const char*>(s.k) + j * s.k_stride * elem;
      const bool hidden =
          (s.causal_diagonal != kernels::kNoCausal && j > i + s.causal_diagonal) ||
          (s.key_padding && s.key_padding[j * s.key_padding_stride]) ||
          (s.allowed && !s.allowed[i * s.allowed_row_stride + j * s.allowed_col_stride]);
      double dot = 0;
      for (int64_t c = 0; c < s.d; ++c) dot += load(q, c, s.bf16) * load(k, c, s.bf16);
      double score = dot * s.scale;
      if (s.bias) score += s.bias[i * s.bias_row_stride + j * s.bias_col_stride];
      scores[j] = hidden ? -std::numeric_limits<double>::infinity() : score;
      top = std::max(top, scores[j]);
    }
    float* out = s.o + i * s.o_stride;
    if (top == -std::numeric_limits<double>::infinity()) {  // every key hidden
      for (int64_t c = 0; c < s.dv; ++c) out[c] = 0.0f;
      if (s.lse) s.lse[i] = -std::numeric_limits<float>::infinity();
      continue;
    }
    double total = 0;
    for (double& x : scores) total += (x = std::exp(x - top));
    for (int64_t c = 0; c < s.dv; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < s.lk; ++j)
        acc += scores[j] * load(static_cast<const char*>(s.v) + j * s.v_stride * elem, c, s.bf16);
      out[c] = static_cast<float>(acc / total);
    }
    if (s.lse) s.lse[i] = static_cast<float>(top + std::log(total));
  }
}

}  // namespace

AttentionResult attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options) {
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, "attention_reference");
  AttentionResult result = plan.make_result(options.return_lse);
  detail::parallel_for(0, plan.batch * plan.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh)
      reference_slice(plan.slice(bh / plan.heads, bh % plan.heads, result));
  });
  return result;
}

}  // namespace qkv
