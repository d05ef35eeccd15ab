// The attention backward front door: checks the saved forward state and dO,
// then runs the fused backward once per (batch, K/V head) group.
#include <memory>
#include <utility>
#include <vector>

#include "attention/plan.h"
#include "core/parallel.h"
#include "kernels/cpu/attention.h"
#include "qkv/ops.h"

namespace qkv {
namespace detail {

Tensor like_bhld(const Tensor& t, AttentionLayout layout) {
  return layout == AttentionLayout::bhld ? t : t.permute({0, 2, 1, 3});
}

AttentionGradients allocate_gradients(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const AttentionPlan& plan, bool mask_grad) {
  const DType dtype = plan.result_dtype();
  AttentionGradients g;
  g.grad_q = Tensor::zeros(q.shape(), dtype);
  g.grad_k = Tensor::zeros(k.shape(), dtype);
  g.grad_v = Tensor::zeros(v.shape(), dtype);
  if (mask_grad) g.grad_mask = Tensor::zeros({plan.batch, plan.heads, plan.lq, plan.lk}, dtype);
  return g;
}

// Sums the full [B, H, Lq, Lk] mask gradient over the dims `mask` broadcast over.
Tensor reduce_to_shape(const Tensor& full, const Shape& shape) {
  Tensor out = full;
  const int64_t lead = 4 - static_cast<int64_t>(shape.size());
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t want = i < lead ? 1 : shape[i - lead];
    if (want == 1 && full.size(i) != 1) out = sum(out, i, /*keepdim=*/true);
  }
  return out.reshape(shape);
}

void check_backward_args(const Tensor& grad_output, const AttentionPlan& plan,
                         const AttentionOptions& options, bool mask_requires_grad, const char* op) {
  QKV_CHECK(grad_output.defined(), op, ": argument grad_output is an undefined tensor");
  QKV_CHECK(is_floating(grad_output.dtype()), op, ": argument grad_output has dtype ",
            dtype_name(grad_output.dtype()), "; expected a float dtype");
  const Shape out_shape = plan.layout == AttentionLayout::bhld
                              ? Shape{plan.batch, plan.heads, plan.lq, plan.dv}
                              : Shape{plan.batch, plan.lq, plan.heads, plan.dv};
  QKV_CHECK(grad_output.shape() == out_shape, op, ": argument grad_output has shape ",
            shape_string(grad_output.shape()), "; expected the output's shape ",
            shape_string(out_shape));
  if (mask_requires_grad)
    QKV_CHECK(plan.bias.defined(), op,
              ": mask_requires_grad needs a float (additive) mask; the mask is ",
              options.mask.defined() ? dtype_name(options.mask.dtype()) : "absent");
}

}  // namespace detail

namespace detail {

AttentionGradients attention_backward_with(const Tensor& grad_output, const Tensor& q,
                                           const Tensor& k, const Tensor& v,
                                           const AttentionResult& forward,
                                           const AttentionOptions& options, bool mask_requires_grad,
                                           ScoreModPtr grad_probability_term, const char* op) {
  // f64 (for checking) runs the oracle, in double throughout; it recomputes
  // what the forward saved.
  if (q.dtype() == DType::f64 || k.dtype() == DType::f64 || v.dtype() == DType::f64)
    return attention_backward_reference_with(grad_output, q, k, v, options, mask_requires_grad,
                                             grad_probability_term.get(), op);
  detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, op);
  const std::unique_ptr<ScoreModGradients> score_grads =
      options.score_mod
          ? options.score_mod->start_gradients(plan.batch, plan.heads, plan.lq, plan.lk)
          : nullptr;
  if (score_grads || grad_probability_term)
    plan.hooks = std::make_shared<detail::ModifierHooks>(
        options.mask_mod, options.score_mod, score_grads.get(), std::move(grad_probability_term));
  detail::check_backward_args(grad_output, plan, options, mask_requires_grad, op);
  const Shape out_shape = grad_output.shape();
  QKV_CHECK(forward.output.defined() && forward.output.shape() == out_shape &&
                forward.output.dtype() == DType::f32,
            op, ": argument forward.output must be the f32 output of attention() with shape ",
            shape_string(out_shape));
  QKV_CHECK(
      forward.lse.defined() && forward.lse.shape() == (Shape{plan.batch, plan.heads, plan.lq}), op,
      ": argument forward.lse is missing or has the wrong shape; run attention() with "
      "return_lse = true");
  AttentionResult saved{forward.output.contiguous(), forward.lse.contiguous()};
  const Tensor dout = detail::like_bhld(grad_output.to(DType::f32), plan.layout).contiguous();
  AttentionGradients g = detail::allocate_gradients(q, k, v, plan, mask_requires_grad);
  const Tensor dq = detail::like_bhld(g.grad_q, plan.layout);
  const Tensor dk = detail::like_bhld(g.grad_k, plan.layout);
  const Tensor dv = detail::like_bhld(g.grad_v, plan.layout);
  const int64_t group = plan.kv_heads > 0 ? plan.heads / plan.kv_heads : 0;
  const size_t workspace_floats =
      kernels::AttentionBackwardWorkspaceFloats(plan.d, plan.dv, plan.lq, group);
  float* dq_base = dq.data<float>();
  if (group > 0) {  // else no query heads: nothing to differentiate
    detail::parallel_for(0, plan.batch * plan.kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> workspace(workspace_floats);
      std::vector<kernels::AttentionGradSlice> heads(static_cast<size_t>(group));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / plan.kv_heads, kv = task % plan.kv_heads;
        for (int64_t i = 0; i < group; ++i) {
          const int64_t h = kv * group + i;
          kernels::AttentionGradSlice& s = heads[static_cast<size_t>(i)];
          s.forward = plan.slice(b, h, saved);
          s.grad_out = dout.data<float>() + b * dout.stride(0) + h * dout.stride(1);
          s.grad_out_stride = dout.stride(2);
          s.grad_q = dq_base + b * dq.stride(0) + h * dq.stride(1);
          s.grad_q_stride = dq.stride(2);
          if (g.grad_mask.defined()) {
            s.grad_bias = g.grad_mask.data<float>() + (b * plan.heads + h) * plan.lq * plan.lk;
            s.grad_bias_stride = plan.lk;
          }
        }
        kernels::FlashAttentionBackward(
            heads.data(), group, dk.data<float>() + b * dk.stride(0) + kv * dk.stride(1),
            dk.stride(2), dv.data<float>() + b * dv.stride(0) + kv * dv.stride(1), dv.stride(2),
            workspace.data());
      }
    });
  }
  if (g.grad_mask.defined())
    g.grad_mask = detail::reduce_to_shape(g.grad_mask, options.mask.shape());
  if (score_grads) g.grad_score_mod = score_grads->finish();
  return g;
}

}  // namespace detail

AttentionGradients attention_backward(const Tensor& grad_output, const Tensor& q, const Tensor& k,
                                      const Tensor& v, const AttentionResult& forward,
                                      const AttentionOptions& options, bool mask_requires_grad) {
  return detail::attention_backward_with(grad_output, q, k, v, forward, options, mask_requires_grad,
                                         nullptr, "attention_backward");
}

}  // namespace qkv
