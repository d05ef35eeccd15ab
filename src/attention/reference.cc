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

// One (batch, head) slice of the forward, every row, in double, into o
// (row stride o_stride) and lse (or null) of element type T: f32, or f64
// for an f64 slice.
template <class T>
void reference_slice(const kernels::AttentionSlice& s, T* o, int64_t o_stride, T* lse) {
  const int64_t elem = detail::element_size(s);
  std::vector<double> p(static_cast<size_t>(s.lk));
  for (int64_t i = 0; i < s.lq; ++i) {
    const double row_lse = probabilities(s, i, p);
    if (s.dropout > 0)
      for (int64_t j = 0; j < s.lk; ++j) p[j] *= detail::dropout_scale(s, i, j);
    T* out = o + i * o_stride;
    for (int64_t c = 0; c < s.dv; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < s.lk; ++j)
        acc += p[j] * load(s, static_cast<const char*>(s.v) + j * s.v_stride * elem, c);
      out[c] = static_cast<T>(acc);
    }
    if (lse) lse[i] = static_cast<T>(row_lse);
  }
}

}  // namespace

AttentionResult attention_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options) {
  const detail::AttentionPlan plan =
      detail::plan_attention(q, k, v, options, "attention_reference");
  AttentionResult result = plan.make_result(options.return_lse);
  const Tensor outputs = detail::AttentionPlan::output_bhld(result, plan.layout);
  detail::parallel_for(0, plan.batch * plan.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / plan.heads, h = bh % plan.heads;
      const kernels::AttentionSlice s = plan.slice(b, h, result);
      if (!s.f64) {
        reference_slice(s, s.o, s.o_stride, s.lse);
        continue;
      }
      double* lse = result.lse.defined() ? result.lse.data<double>() + bh * plan.lq : nullptr;
      reference_slice(s, outputs.data<double>() + b * outputs.stride(0) + h * outputs.stride(1),
                      outputs.stride(2), lse);
    }
  });
  const int64_t count = static_cast<int64_t>(plan.weights_heads.size());
  std::vector<double> p(static_cast<size_t>(plan.lk));
  for (int64_t b = 0; b < plan.batch; ++b)
    for (int64_t w = 0; w < count; ++w) {
      const kernels::AttentionSlice s = plan.slice(b, plan.weights_heads[w], result);
      const int64_t base = (b * count + w) * plan.lq * plan.lk;
      for (int64_t i = 0; i < plan.lq; ++i) {
        probabilities(s, i, p);
        for (int64_t j = 0; j < plan.lk; ++j) {
          if (s.f64)
            result.weights.data<double>()[base + i * plan.lk + j] = p[j];
          else
            result.weights.data<float>()[base + i * plan.lk + j] = static_cast<float>(p[j]);
        }
      }
    }
  return result;
}

}  // namespace qkv

namespace qkv {

namespace {

// The backward oracle with gradients of element type T: f32, or f64 (every
// gradient, the mask's too) for an f64 plan.
template <class T>
AttentionGradients backward_reference_as(const detail::AttentionPlan& plan,
                                         const Tensor& grad_output, const Tensor& q,
                                         const Tensor& k, const Tensor& v,
                                         const AttentionOptions& options, bool mask_requires_grad,
                                         const ScoreMod* grad_probability_term) {
  constexpr DType kType = dtype_of<T>::value;
  AttentionGradients g = detail::allocate_gradients(q, k, v, plan, mask_requires_grad);
  const Tensor dout = detail::like_bhld(grad_output.to(kType), plan.layout);
  const Tensor dq = detail::like_bhld(g.grad_q, plan.layout);
  const Tensor dk = detail::like_bhld(g.grad_k, plan.layout);
  const Tensor dv = detail::like_bhld(g.grad_v, plan.layout);
  const AttentionResult unused = plan.make_result(false);
  const int64_t group = plan.kv_heads > 0 ? plan.heads / plan.kv_heads : 0;
  const int64_t elem = static_cast<int64_t>(dtype_size(plan.q.dtype()));
  const double scale = kType == DType::f64 ? plan.scale_f64 : plan.scale;
  const std::unique_ptr<ScoreModGradients> score_grads =
      options.score_mod
          ? options.score_mod->start_gradients(plan.batch, plan.heads, plan.lq, plan.lk)
          : nullptr;
  std::vector<double> row_raw(static_cast<size_t>(plan.lk));
  for (int64_t b = 0; b < plan.batch; ++b)
    for (int64_t kv = 0; kv < plan.kv_heads; ++kv) {
      std::vector<double> dk_acc(static_cast<size_t>(plan.lk * plan.d), 0.0);
      std::vector<double> dv_acc(static_cast<size_t>(plan.lk * plan.dv), 0.0);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        const kernels::AttentionSlice s = plan.slice(b, h, unused);
        auto qv = [&](int64_t i, int64_t c) {
          return load(s, static_cast<const char*>(s.q) + i * s.q_stride * elem, c);
        };
        auto kval = [&](int64_t j, int64_t c) {
          return load(s, static_cast<const char*>(s.k) + j * s.k_stride * elem, c);
        };
        auto vval = [&](int64_t j, int64_t c) {
          return load(s, static_cast<const char*>(s.v) + j * s.v_stride * elem, c);
        };
        std::vector<double> p(static_cast<size_t>(plan.lk)), ds(static_cast<size_t>(plan.lk)),
            ds_raw(static_cast<size_t>(plan.lk));
        for (int64_t i = 0; i < plan.lq; ++i) {
          probabilities(s, i, p);
          const T* go =
              dout.data<T>() + b * dout.stride(0) + h * dout.stride(1) + i * dout.stride(2);
          double delta = 0;
          for (int64_t j = 0; j < plan.lk; ++j) {
            // The weight that multiplied v_j, and d(loss)/d(P_ij) through it.
            const double keep = detail::dropout_scale(s, i, j);
            double dp = 0;
            for (int64_t c = 0; c < plan.dv; ++c) {
              dp += go[c * dout.stride(3)] * vval(j, c);
              dv_acc[j * plan.dv + c] += p[j] * keep * go[c * dout.stride(3)];
            }
            if (grad_probability_term) dp = grad_probability_term->score(dp, b, h, i, j);
            ds[j] = dp * keep;
            delta += p[j] * ds[j];
          }
          // ds: w.r.t. the final score (the additive mask's gradient); ds_raw:
          // through the score modifier, w.r.t. scale * q.k.
          for (int64_t j = 0; j < plan.lk; ++j) {
            ds[j] = p[j] * (ds[j] - delta);
            ds_raw[j] = ds[j];
            if (s.hooks && s.hooks->has_score_mod())
              ds_raw[j] *= s.hooks->derivative(raw_score(s, i, j), b, h, i, j);
          }
          if (score_grads) {  // the learned biases, one row as a block
            for (int64_t j = 0; j < plan.lk; ++j) row_raw[j] = raw_score(s, i, j);
            score_grads->accumulate_f64({b, h, i, i + 1, 0, plan.lk}, row_raw.data(), ds.data(),
                                        plan.lk);
          }
          T* dq_row = dq.data<T>() + b * dq.stride(0) + h * dq.stride(1) + i * dq.stride(2);
          for (int64_t c = 0; c < plan.d; ++c) {
            double acc = 0;
            for (int64_t j = 0; j < plan.lk; ++j) acc += ds_raw[j] * kval(j, c);
            dq_row[c * dq.stride(3)] = static_cast<T>(acc * scale);
          }
          for (int64_t j = 0; j < plan.lk; ++j) {
            for (int64_t c = 0; c < plan.d; ++c)
              dk_acc[j * plan.d + c] += ds_raw[j] * qv(i, c) * scale;
            if (g.grad_mask.defined())
              g.grad_mask.data<T>()[((b * plan.heads + h) * plan.lq + i) * plan.lk + j] =
                  static_cast<T>(ds[j]);
          }
        }
      }
      for (int64_t j = 0; j < plan.lk; ++j) {
        for (int64_t c = 0; c < plan.d; ++c)
          dk.data<T>()[b * dk.stride(0) + kv * dk.stride(1) + j * dk.stride(2) +
                       c * dk.stride(3)] = static_cast<T>(dk_acc[j * plan.d + c]);
        for (int64_t c = 0; c < plan.dv; ++c)
          dv.data<T>()[b * dv.stride(0) + kv * dv.stride(1) + j * dv.stride(2) +
                       c * dv.stride(3)] = static_cast<T>(dv_acc[j * plan.dv + c]);
      }
    }
  if (g.grad_mask.defined())
    g.grad_mask = detail::reduce_to_shape(g.grad_mask, options.mask.shape());
  if (score_grads) g.grad_score_mod = score_grads->finish();
  return g;
}

}  // namespace

AttentionGradients detail::attention_backward_reference_with(
    const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v,
    const AttentionOptions& options, bool mask_requires_grad, const ScoreMod* grad_probability_term,
    const char* op) {
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, op);
  detail::check_backward_args(grad_output, plan, options, mask_requires_grad, op);
  if (plan.q.dtype() == DType::f64)
    return backward_reference_as<double>(plan, grad_output, q, k, v, options, mask_requires_grad,
                                         grad_probability_term);
  return backward_reference_as<float>(plan, grad_output, q, k, v, options, mask_requires_grad,
                                      grad_probability_term);
}

AttentionGradients attention_backward_reference(const Tensor& grad_output, const Tensor& q,
                                                const Tensor& k, const Tensor& v,
                                                const AttentionOptions& options,
                                                bool mask_requires_grad) {
  return detail::attention_backward_reference_with(grad_output, q, k, v, options,
                                                   mask_requires_grad, nullptr,
                                                   "attention_backward_reference");
}

}  // namespace qkv
