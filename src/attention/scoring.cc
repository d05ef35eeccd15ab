// General (Luong) and additive (Bahdanau) scoring. General is a projection in
// front of the fused kernel; additive materialises a row of scores at a time
// in double through the oracle's row helpers (dense.h).
#include "qkv/scoring.h"

#include <cmath>
#include <vector>

#include "attention/dense.h"
#include "attention/plan.h"
#include "core/parallel.h"
#include "qkv/matmul.h"

namespace qkv {
namespace {

AttentionOptions with_unit_scale(AttentionOptions options) {
  options.scale = options.scale.value_or(1.0);
  return options;
}

void check_weight(const Tensor& w, const Shape& shape, const char* op, const char* name) {
  QKV_CHECK(w.defined() && w.shape() == shape, op, ": argument ", name, " has shape ",
            w.defined() ? shape_string(w.shape()) : "undefined", "; expected ", shape_string(shape));
  QKV_CHECK(is_floating(w.dtype()), op, ": argument ", name, " has dtype ", dtype_name(w.dtype()),
            "; expected a float dtype");
}

// Rows of a [.., D] tensor as a [N, D] matrix.
Tensor rows(const Tensor& t) { return t.reshape({-1, t.size(-1)}); }

// The additive score's per-slice state: the projections of every query and key.
struct AdditiveSlice {
  int64_t a = 0;
  std::vector<double> wq, wk, va;   // the weights, in double
  std::vector<double> pq, pk;       // [Lq, A] and [Lk, A]: W_q q_i and W_k k_j

  AdditiveSlice(const AdditiveScoreWeights& w)
      : a(w.v.size(0)), wq(w.w_q.to_values()), wk(w.w_k.to_values()), va(w.v.to_values()) {}

  void project(const kernels::AttentionSlice& s) {
    const int64_t elem = detail::element_size(s);
    auto proj = [&](const void* base, int64_t stride, int64_t n, const std::vector<double>& w,
                    std::vector<double>& out) {
      out.assign(static_cast<size_t>(n * a), 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const char* row = static_cast<const char*>(base) + i * stride * elem;
        for (int64_t r = 0; r < a; ++r) {
          double acc = 0;
          for (int64_t c = 0; c < s.d; ++c) acc += w[r * s.d + c] * detail::load(s, row, c);
          out[i * a + r] = acc;
        }
      }
    };
    proj(s.q, s.q_stride, s.lq, wq, pq);
    proj(s.k, s.k_stride, s.lk, wk, pk);
  }
  double score(const kernels::AttentionSlice& s, int64_t i, int64_t j) const {
    double acc = 0;
    for (int64_t r = 0; r < a; ++r) acc += va[r] * std::tanh(pq[i * a + r] + pk[j * a + r]);
    return acc * s.scale;
  }
};

// Element `at` of t (f32 or f64) set to value.
void store(const Tensor& t, int64_t at, double value) {
  if (t.dtype() == DType::f64)
    t.data<double>()[at] = value;
  else
    t.data<float>()[at] = static_cast<float>(value);
}

// Element `at` of t (f32 or f64).
double load_at(const Tensor& t, int64_t at) {
  return t.dtype() == DType::f64 ? t.data<double>()[at] : t.data<float>()[at];
}

}  // namespace

AttentionResult general_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& w, AttentionOptions options) {
  QKV_CHECK(q.defined() && k.defined(), "general_attention: q and k must be defined");
  check_weight(w, {q.size(-1), k.size(-1)}, "general_attention", "w");
  return attention(matmul(q, w.to(q.dtype())).to(q.dtype()), k, v, with_unit_scale(options));
}

GeneralAttentionGradients general_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                     const Tensor& k, const Tensor& v,
                                                     const Tensor& w,
                                                     const AttentionResult& forward,
                                                     AttentionOptions options,
                                                     bool mask_requires_grad) {
  check_weight(w, {q.size(-1), k.size(-1)}, "general_attention_backward", "w");
  const Tensor qw = matmul(q, w.to(q.dtype())).to(q.dtype());
  GeneralAttentionGradients g;
  g.inputs = attention_backward(grad_output, qw, k, v, forward, with_unit_scale(options),
                                mask_requires_grad);
  // q' = q W: dq = dq' W^T, dW = q^T dq' over every row.
  const Tensor dqw = g.inputs.grad_q;  // f32, or f64 on the f64 path
  g.inputs.grad_q = matmul(dqw, w.to(dqw.dtype()), {.transpose_b = true});
  g.grad_w = matmul(rows(q.to(dqw.dtype())), rows(dqw), {.transpose_a = true});
  return g;
}

AttentionResult additive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const AdditiveScoreWeights& weights, AttentionOptions options) {
  const char* op = "additive_attention";
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, with_unit_scale(options), op);
  const int64_t a = weights.v.defined() ? weights.v.size(0) : 0;
  check_weight(weights.v, {a}, op, "weights.v");
  check_weight(weights.w_q, {a, plan.d}, op, "weights.w_q");
  check_weight(weights.w_k, {a, plan.d}, op, "weights.w_k");
  AttentionResult result = plan.make_result(options.return_lse);
  const Tensor out = detail::AttentionPlan::output_bhld(result, plan.layout);
  const int64_t weights_count = static_cast<int64_t>(plan.weights_heads.size());
  detail::parallel_for(0, plan.batch * plan.heads, 1, [&](int64_t begin, int64_t end) {
    AdditiveSlice add(weights);
    std::vector<double> p(static_cast<size_t>(plan.lk));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / plan.heads, h = bh % plan.heads;
      const kernels::AttentionSlice s = plan.slice(b, h, result);
      const int64_t elem = detail::element_size(s);
      add.project(s);
      for (int64_t i = 0; i < s.lq; ++i) {
        for (int64_t j = 0; j < s.lk; ++j) p[j] = add.score(s, i, j);
        const double lse = detail::softmax_row(s, i, p);
        if (result.lse.defined()) store(result.lse, bh * s.lq + i, lse);
        for (int64_t w = 0; w < weights_count; ++w)
          if (plan.weights_heads[w] == h)
            for (int64_t j = 0; j < s.lk; ++j)
              store(result.weights, ((b * weights_count + w) * s.lq + i) * s.lk + j, p[j]);
        const int64_t row = b * out.stride(0) + h * out.stride(1) + i * out.stride(2);
        for (int64_t c = 0; c < s.dv; ++c) {
          double acc = 0;
          for (int64_t j = 0; j < s.lk; ++j)
            acc += p[j] * detail::dropout_scale(s, i, j) *
                   detail::load(s, static_cast<const char*>(s.v) + j * s.v_stride * elem, c);
          store(out, row + c * out.stride(3), acc);
        }
      }
    }
  });
  return result;
}

AdditiveAttentionGradients additive_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                       const Tensor& k, const Tensor& v,
                                                       const AdditiveScoreWeights& weights,
                                                       AttentionOptions options) {
  const char* op = "additive_attention_backward";
  options = with_unit_scale(options);
  const detail::AttentionPlan plan = detail::plan_attention(q, k, v, options, op);
  detail::check_backward_args(grad_output, plan, options, false, op);
  const int64_t a = weights.v.defined() ? weights.v.size(0) : 0;
  check_weight(weights.v, {a}, op, "weights.v");
  check_weight(weights.w_q, {a, plan.d}, op, "weights.w_q");
  check_weight(weights.w_k, {a, plan.d}, op, "weights.w_k");
  AdditiveAttentionGradients g;
  const DType dtype = plan.result_dtype();
  g.inputs = detail::allocate_gradients(q, k, v, plan, false);
  const Tensor dout = detail::like_bhld(grad_output.to(dtype), plan.layout);
  const Tensor dq = detail::like_bhld(g.inputs.grad_q, plan.layout);
  const Tensor dk = detail::like_bhld(g.inputs.grad_k, plan.layout);
  const Tensor dv = detail::like_bhld(g.inputs.grad_v, plan.layout);
  const AttentionResult unused = plan.make_result(false);
  const int64_t group = plan.kv_heads > 0 ? plan.heads / plan.kv_heads : 0;
  const int64_t d = plan.d, elem = static_cast<int64_t>(dtype_size(plan.q.dtype()));
  std::vector<double> gwq(static_cast<size_t>(a * d), 0.0), gwk(gwq.size(), 0.0),
      gva(static_cast<size_t>(a), 0.0);
  AdditiveSlice add(weights);
  // Sequential over (batch, K/V head): the weight gradients are shared sums.
  for (int64_t b = 0; b < plan.batch; ++b)
    for (int64_t kv = 0; kv < plan.kv_heads; ++kv) {
      std::vector<double> dk_acc(static_cast<size_t>(plan.lk * d), 0.0);
      std::vector<double> dv_acc(static_cast<size_t>(plan.lk * plan.dv), 0.0);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        const kernels::AttentionSlice s = plan.slice(b, h, unused);
        add.project(s);
        std::vector<double> p(static_cast<size_t>(s.lk)), ds(p.size());
        std::vector<double> dpk(static_cast<size_t>(s.lk * a), 0.0);  // d loss / d (W_k k_j)
        for (int64_t i = 0; i < s.lq; ++i) {
          for (int64_t j = 0; j < s.lk; ++j) p[j] = add.score(s, i, j);
          detail::softmax_row(s, i, p);
          const int64_t go = b * dout.stride(0) + h * dout.stride(1) + i * dout.stride(2);
          double delta = 0;
          for (int64_t j = 0; j < s.lk; ++j) {
            const double keep = detail::dropout_scale(s, i, j);
            const char* vrow = static_cast<const char*>(s.v) + j * s.v_stride * elem;
            double dp = 0;
            for (int64_t c = 0; c < s.dv; ++c) {
              const double gc = load_at(dout, go + c * dout.stride(3));
              dp += gc * detail::load(s, vrow, c);
              dv_acc[j * s.dv + c] += p[j] * keep * gc;
            }
            ds[j] = dp * keep;
            delta += p[j] * ds[j];
          }
          std::vector<double> dpq(static_cast<size_t>(a), 0.0);  // d loss / d (W_q q_i)
          for (int64_t j = 0; j < s.lk; ++j) {
            double g_score = p[j] * (ds[j] - delta);
            if (g_score == 0) continue;
            if (s.hooks && s.hooks->has_score_mod())
              g_score *= s.hooks->derivative(add.score(s, i, j), b, h, i, j);
            g_score *= s.scale;
            for (int64_t r = 0; r < a; ++r) {
              const double t = std::tanh(add.pq[i * a + r] + add.pk[j * a + r]);
              gva[r] += g_score * t;
              const double du = g_score * add.va[r] * (1 - t * t);
              dpq[r] += du;
              dpk[j * a + r] += du;
            }
          }
          // Through W_q: dq_i = W_q^T dpq, dW_q += dpq q_i^T.
          const char* qrow = static_cast<const char*>(s.q) + i * s.q_stride * elem;
          const int64_t dq_row = b * dq.stride(0) + h * dq.stride(1) + i * dq.stride(2);
          for (int64_t c = 0; c < d; ++c) {
            double acc = 0;
            for (int64_t r = 0; r < a; ++r) {
              acc += add.wq[r * d + c] * dpq[r];
              gwq[r * d + c] += dpq[r] * detail::load(s, qrow, c);
            }
            store(dq, dq_row + c * dq.stride(3), acc);
          }
        }
        for (int64_t j = 0; j < s.lk; ++j) {  // through W_k
          const char* krow = static_cast<const char*>(s.k) + j * s.k_stride * elem;
          for (int64_t c = 0; c < d; ++c) {
            double acc = 0;
            for (int64_t r = 0; r < a; ++r) {
              acc += add.wk[r * d + c] * dpk[j * a + r];
              gwk[r * d + c] += dpk[j * a + r] * detail::load(s, krow, c);
            }
            dk_acc[j * d + c] += acc;
          }
        }
      }
      for (int64_t j = 0; j < plan.lk; ++j) {
        for (int64_t c = 0; c < d; ++c)
          store(dk, b * dk.stride(0) + kv * dk.stride(1) + j * dk.stride(2) + c * dk.stride(3),
                dk_acc[j * d + c]);
        for (int64_t c = 0; c < plan.dv; ++c)
          store(dv, b * dv.stride(0) + kv * dv.stride(1) + j * dv.stride(2) + c * dv.stride(3),
                dv_acc[j * plan.dv + c]);
      }
    }
  auto as_tensor = [dtype](const std::vector<double>& values, const Shape& shape) {
    return Tensor::from_values(values, shape, dtype);
  };
  g.grad_w_q = as_tensor(gwq, {a, d});
  g.grad_w_k = as_tensor(gwk, {a, d});
  g.grad_v_a = as_tensor(gva, {a});
  return g;
}

}  // namespace qkv
