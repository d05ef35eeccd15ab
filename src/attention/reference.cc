// The attention oracle: materialises each row's scores and accumulates in
// double, reading the same resolved arguments as the fused kernel (plan.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "attention/dense.h"
#include "attention/plan.h"
#include "core/parallel.h"

namespace qkv {
namespace {

using detail::load;
using detail::probabilities;
using detail::raw_score;

// One (batch, head) slice of the forward, every row, in double.
void reference_slice(const kernels::AttentionSlice& s) {
  const int64_t elem = s.bf16 ? 2 : 4;
  std::vector<double> p(static_cast<size_t>(s.lk));
  for (int64_t i = 0; i < s.lq; ++i) {
    const double lse = probabilities(s, i, p);
    if (s.dropout > 0)
      for (int64_t j = 0; j < s.lk; ++j) p[j] *= detail::dropout_scale(s, i, j);
    float* out = s.o + i * s.o_stride;
    for (int64_t c = 0; c < s.dv; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < s.lk; ++j)
        acc += p[j] * load(static_cast<const char*>(s.v) + j * s.v_stride * elem, c, s.bf16);
      out[c] = static_cast<float>(acc);
    }
    if (s.lse) s.lse[i] = static_cast<float>(lse);
  }
}

}  // namespace

AttentionResult attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options) {
  const detail::AttentionPlan plan =
      detail::plan_attention(q, k, v, options, "attention_reference");
  AttentionResult result = plan.make_result(options.return_lse);
  detail::parallel_for(0, plan.batch * plan.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh)
      reference_slice(plan.slice(bh / plan.heads, bh % plan.heads, result));
  });
  const int64_t count = static_cast<int64_t>(plan.weights_heads.size());
  std::vector<double> p(static_cast<size_t>(plan.lk));
  for (int64_t b = 0; b < plan.batch; ++b)
    for (int64_t w = 0; w < count; ++w) {
      const kernels::AttentionSlice s = plan.slice(b, plan.weights_heads[w], result);
      float* out = result.weights.data<float>() + (b * count + w) * plan.lq * plan.lk;
      for (int64_t i = 0; i < plan.lq; ++i) {
        probabilities(s, i, p);
        for (int64_t j = 0; j < plan.lk; ++j) out[i * plan.lk + j] = static_cast<float>(p[j]);
      }
    }
  return result;
}

}  // namespace qkv

namespace qkv {

AttentionGradients attention_backward_reference(const Tensor& grad_output, const Tensor& q,
                                                const Tensor& k, const Tensor& v,
                                                const AttentionOptions& options,
                                                bool mask_requires_grad) {
  const char* op = "attention_backward_reference";
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, op);
  detail::check_backward_args(grad_output, plan, options, mask_requires_grad, op);
  AttentionGradients g = detail::allocate_gradients(q, k, v, plan, mask_requires_grad);
  const Tensor dout = detail::like_bhld(grad_output.to(DType::f32), plan.layout);
  const Tensor dq = detail::like_bhld(g.grad_q, plan.layout);
  const Tensor dk = detail::like_bhld(g.grad_k, plan.layout);
  const Tensor dv = detail::like_bhld(g.grad_v, plan.layout);
  const AttentionResult unused = plan.make_result(false);
  const int64_t group = plan.kv_heads > 0 ? plan.heads / plan.kv_heads : 0;
  const int64_t elem = static_cast<int64_t>(dtype_size(plan.q.dtype()));
  const std::unique_ptr<ScoreModGradients> score_grads =
      options.score_mod
          ? options.score_mod->start_gradients(plan.batch, plan.heads, plan.lq, plan.lk)
          : nullptr;
  std::vector<float> row_raw(static_cast<size_t>(plan.lk)), row_grad(row_raw.size());
  for (int64_t b = 0; b < plan.batch; ++b)
    for (int64_t kv = 0; kv < plan.kv_heads; ++kv) {
      std::vector<double> dk_acc(static_cast<size_t>(plan.lk * plan.d), 0.0);
      std::vector<double> dv_acc(static_cast<size_t>(plan.lk * plan.dv), 0.0);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        const kernels::AttentionSlice s = plan.slice(b, h, unused);
        auto qv = [&](int64_t i, int64_t c) {
          return load(static_cast<const char*>(s.q) + i * s.q_stride * elem, c, s.bf16);
        };
        auto kval = [&](int64_t j, int64_t c) {
          return load(static_cast<const char*>(s.k) + j * s.k_stride * elem, c, s.bf16);
        };
        auto vval = [&](int64_t j, int64_t c) {
          return load(static_cast<const char*>(s.v) + j * s.v_stride * elem, c, s.bf16);
        };
        std::vector<double> p(static_cast<size_t>(plan.lk)), ds(static_cast<size_t>(plan.lk)),
            ds_raw(static_cast<size_t>(plan.lk));
        for (int64_t i = 0; i < plan.lq; ++i) {
          probabilities(s, i, p);
          const float* go =
              dout.data<float>() + b * dout.stride(0) + h * dout.stride(1) + i * dout.stride(2);
          double delta = 0;
          for (int64_t j = 0; j < plan.lk; ++j) {
            // The weight that multiplied v_j, and d(loss)/d(P_ij) through it.
            const double keep = detail::dropout_scale(s, i, j);
            double dp = 0;
            for (int64_t c = 0; c < plan.dv; ++c) {
              dp += go[c * dout.stride(3)] * vval(j, c);
              dv_acc[j * plan.dv + c] += p[j] * keep * go[c * dout.stride(3)];
            }
            ds[j] = dp * keep;
            delta += p[j] * ds[j];
          }
          // ds: w.r.t. the final score (the additive mask's gradient); ds_raw:
          // through the score modifier, w.r.t. scale * q.k.
          for (int64_t j = 0; j < plan.lk; ++j) {
            ds[j] = p[j] * (ds[j] - delta);
            ds_raw[j] = ds[j];
            if (s.hooks && s.hooks->has_score_mod())
              ds_raw[j] *= s.hooks->derivative(static_cast<float>(raw_score(s, i, j)), b, h, i, j);
          }
          if (score_grads) {  // the learned biases, one row as a block
            for (int64_t j = 0; j < plan.lk; ++j) {
              row_raw[j] = static_cast<float>(raw_score(s, i, j));
              row_grad[j] = static_cast<float>(ds[j]);
            }
            score_grads->accumulate({b, h, i, i + 1, 0, plan.lk}, row_raw.data(), row_grad.data(),
                                    plan.lk);
          }
          float* dq_row = dq.data<float>() + b * dq.stride(0) + h * dq.stride(1) + i * dq.stride(2);
          for (int64_t c = 0; c < plan.d; ++c) {
            double acc = 0;
            for (int64_t j = 0; j < plan.lk; ++j) acc += ds_raw[j] * kval(j, c);
            dq_row[c * dq.stride(3)] = static_cast<float>(acc * s.scale);
          }
          for (int64_t j = 0; j < plan.lk; ++j) {
            for (int64_t c = 0; c < plan.d; ++c)
              dk_acc[j * plan.d + c] += ds_raw[j] * qv(i, c) * s.scale;
            if (g.grad_mask.defined())
              g.grad_mask.data<float>()[((b * plan.heads + h) * plan.lq + i) * plan.lk + j] =
                  static_cast<float>(ds[j]);
          }
        }
      }
      for (int64_t j = 0; j < plan.lk; ++j) {
        for (int64_t c = 0; c < plan.d; ++c)
          dk.data<float>()[b * dk.stride(0) + kv * dk.stride(1) + j * dk.stride(2) +
                           c * dk.stride(3)] = static_cast<float>(dk_acc[j * plan.d + c]);
        for (int64_t c = 0; c < plan.dv; ++c)
          dv.data<float>()[b * dv.stride(0) + kv * dv.stride(1) + j * dv.stride(2) +
                           c * dv.stride(3)] = static_cast<float>(dv_acc[j * plan.dv + c]);
      }
    }
  if (g.grad_mask.defined())
    g.grad_mask = detail::reduce_to_shape(g.grad_mask, options.mask.shape());
  if (score_grads) g.grad_score_mod = score_grads->finish();
  return g;
}

}  // namespace qkv
