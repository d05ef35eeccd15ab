// The f64 path of the linear-attention family (qkv/linear_attention.h):
// Linformer, linear attention and Performer computed in double when an input
// is f64. Each is checked against its f32 path, against a plain double form of
// its formula, and by gradcheck (central differences in f64) through its
// explicit backward recorded as one autograd op (the MultiHeadAttention
// kernels built on them: gradcheck_test's MultiHeadAttentionLinearKernels).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "qkv/gradcheck.h"
#include "qkv/qkv.h"

namespace qkv::autograd {
namespace {

using Values = std::vector<double>;

Variable leaf(const Shape& shape, Generator& gen, double scale = 1.0) {
  return Variable(qkv::scale(randn(shape, gen, DType::f64), scale), true);
}

void expect_gradcheck(const std::function<Variable()>& f, const std::vector<Variable>& leaves,
                      const GradcheckOptions& options = {}) {
  const GradcheckResult r = gradcheck(f, leaves, options);
  EXPECT_TRUE(r) << r.failures;
  EXPECT_GT(r.checks, 0);
}

// |got - want| <= rtol * max |want| everywhere; `got` must be f64.
void expect_close(const Tensor& got, const Tensor& want, double rtol, const std::string& what) {
  EXPECT_EQ(got.dtype(), DType::f64) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const Values g = got.to_values(), w = want.to_values();
  double scale = 0;
  for (double x : w) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_NEAR(g[i], w[i], rtol * scale) << what << " at " << i << " (scale " << scale << ")";
}

Tensor f32(const Tensor& t) {
  return t.to(DType::f32);
}

struct Qkv {
  Variable q, k, v;
};
Qkv qkv_leaves(Generator& gen, int64_t b, int64_t lq, int64_t lk, int64_t d, int64_t dv) {
  const int64_t h = 2;
  return {leaf({b, h, lq, d}, gen), leaf({b, h, lk, d}, gen), leaf({b, h, lk, dv}, gen)};
}

// ---- the plain double forms ------------------------------------------------------------

// A feature map phi of one row of d values.
using Phi = std::function<Values(const double* x, int64_t d)>;

// out_i = sum_j (phi(q_i) . phi(k_j)) v_j / (sum_j phi(q_i) . phi(k_j) + eps), over
// every key, or j <= i when causal.
Tensor naive_kernelised(const Tensor& q, const Tensor& k, const Tensor& v, const Phi& phi,
                        bool causal, double eps) {
  const Values qs = q.to_values(), ks = k.to_values(), vs = v.to_values();
  const int64_t heads = q.size(0) * q.size(1), lq = q.size(2), lk = k.size(2), d = q.size(3),
                dv = v.size(3);
  Values out(static_cast<size_t>(heads * lq * dv));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < lq; ++i) {
      const Values pq = phi(&qs[(h * lq + i) * d], d);
      double den = eps;
      Values num(static_cast<size_t>(dv), 0.0);
      for (int64_t j = 0; j < lk && (!causal || j <= i); ++j) {
        const Values pk = phi(&ks[(h * lk + j) * d], d);
        double a = 0;
        for (size_t r = 0; r < pq.size(); ++r) a += pq[r] * pk[r];
        den += a;
        for (int64_t c = 0; c < dv; ++c) num[c] += a * vs[(h * lk + j) * dv + c];
      }
      for (int64_t c = 0; c < dv; ++c) out[(h * lq + i) * dv + c] = num[c] / den;
    }
  return Tensor::from_values(out, {q.size(0), q.size(1), lq, dv}, DType::f64);
}

Values elu_plus_one(const double* x, int64_t d) {
  Values out(static_cast<size_t>(d));
  for (int64_t c = 0; c < d; ++c) out[c] = x[c] > 0 ? x[c] + 1 : std::exp(x[c]);
  return out;
}

// phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x d^(-1/4), without the
// stabiliser (it cancels in the ratio when eps = 0).
Phi positive_random_features(const Tensor& w) {
  const Values ws = w.to_values();
  const int64_t m = w.size(0);
  return [ws, m](const double* x, int64_t d) {
    const double s = std::pow(static_cast<double>(d), -0.25);
    double sq = 0;
    for (int64_t c = 0; c < d; ++c) sq += x[c] * s * x[c] * s;
    Values out(static_cast<size_t>(m));
    for (int64_t r = 0; r < m; ++r) {
      double dot = 0;
      for (int64_t c = 0; c < d; ++c) dot += ws[r * d + c] * x[c] * s;
      out[r] = std::exp(dot - sq / 2) / std::sqrt(static_cast<double>(m));
    }
    return out;
  };
}

// softmax(q (E k)^T / sqrt(D)) (F v), E and F [kproj, Lk] or [H, kproj, Lk].
Tensor naive_linformer(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& e,
                       const Tensor& f) {
  const Values qs = q.to_values(), ks = k.to_values(), vs = v.to_values(), es = e.to_values(),
               fs = f.to_values();
  const int64_t batch = q.size(0), heads = q.size(1), lq = q.size(2), lk = k.size(2), d = q.size(3),
                dv = v.size(3), kp = e.size(-2);
  const double scale = 1 / std::sqrt(static_cast<double>(d));
  Values out(static_cast<size_t>(batch * heads * lq * dv));
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const int64_t off = e.dim() == 3 ? bh % heads * kp * lk : 0;
    Values kproj(static_cast<size_t>(kp * d), 0.0), vproj(static_cast<size_t>(kp * dv), 0.0);
    for (int64_t r = 0; r < kp; ++r)
      for (int64_t j = 0; j < lk; ++j) {
        for (int64_t c = 0; c < d; ++c)
          kproj[r * d + c] += es[off + r * lk + j] * ks[(bh * lk + j) * d + c];
        for (int64_t c = 0; c < dv; ++c)
          vproj[r * dv + c] += fs[off + r * lk + j] * vs[(bh * lk + j) * dv + c];
      }
    for (int64_t i = 0; i < lq; ++i) {
      Values p(static_cast<size_t>(kp));
      for (int64_t r = 0; r < kp; ++r) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += qs[(bh * lq + i) * d + c] * kproj[r * d + c];
        p[r] = dot * scale;
      }
      const double top = *std::max_element(p.begin(), p.end());
      double total = 0;
      for (double& x : p) total += (x = std::exp(x - top));
      for (int64_t c = 0; c < dv; ++c) {
        double acc = 0;
        for (int64_t r = 0; r < kp; ++r) acc += p[r] * vproj[r * dv + c];
        out[(bh * lq + i) * dv + c] = acc / total;
      }
    }
  }
  return Tensor::from_values(out, {batch, heads, lq, dv}, DType::f64);
}

// ---- the ops as autograd functions (qkv/autograd.h): the explicit backward recorded ------

Variable linformer_op(const Qkv& t, const Variable& e, const Variable& f) {
  return autograd::linformer_attention(t.q, t.k, t.v, e, f);
}

Variable linear_op(const Qkv& t, const LinearAttentionOptions& o) {
  return autograd::linear_attention(t.q, t.k, t.v, o);
}

Variable performer_op(const Qkv& t, const Tensor& w, const LinearAttentionOptions& o) {
  return autograd::performer_attention(t.q, t.k, t.v, w, o);
}

// ---- forward: the f32 path and the formula ---------------------------------------------

// The f32 path sees the f64 inputs rounded to f32 and rounds its own
// intermediates: ~1e-6 of the largest value at these sizes.
constexpr double kVsF32 = 1e-5;
// The double formula and the double path differ by summation order only.
constexpr double kVsFormula = 1e-12;

TEST(LinearAttentionF64, LinformerForward) {
  Generator gen(1);
  const Qkv t = qkv_leaves(gen, 2, 5, 7, 3, 4);
  const Tensor q = t.q.value(), k = t.k.value(), v = t.v.value();
  for (bool per_head : {false, true}) {
    SCOPED_TRACE(per_head ? "per-head projections" : "shared projections");
    const Shape shape = per_head ? Shape{2, 3, 7} : Shape{3, 7};
    const Tensor e = qkv::scale(randn(shape, gen, DType::f64), 0.5),
                 f = qkv::scale(randn(shape, gen, DType::f64), 0.5);
    const AttentionResult r = linformer_attention(q, k, v, e, f);
    expect_close(r.output, naive_linformer(q, k, v, e, f), kVsFormula, "output vs formula");
    expect_close(r.output,
                 linformer_attention(f32(q), f32(k), f32(v), f32(e), f32(f)).output.to(DType::f64),
                 kVsF32, "output vs f32");
    const LinformerGradients g =
        linformer_attention_backward(randn(r.output.shape(), gen, DType::f64), q, k, v, e, f, r);
    for (const Tensor* grad : {&g.grad_q, &g.grad_k, &g.grad_v, &g.grad_e, &g.grad_f})
      EXPECT_EQ(grad->dtype(), DType::f64);
  }
}

TEST(LinearAttentionF64, LinearForward) {
  Generator gen(2);
  const Qkv t = qkv_leaves(gen, 2, 7, 7, 4, 3);
  const Tensor q = t.q.value(), k = t.k.value(), v = t.v.value();
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal, chunks of 3" : "non-causal");
    const LinearAttentionOptions o{.causal = causal, .chunk = 3};
    const Tensor out = linear_attention(q, k, v, o);
    expect_close(out, naive_kernelised(q, k, v, elu_plus_one, causal, o.eps), kVsFormula,
                 "output vs formula");
    expect_close(out, linear_attention(f32(q), f32(k), f32(v), o).to(DType::f64), kVsF32,
                 "output vs f32");
    const LinearAttentionGradients g =
        linear_attention_backward(randn(out.shape(), gen, DType::f64), q, k, v, o);
    for (const Tensor* grad : {&g.grad_q, &g.grad_k, &g.grad_v})
      EXPECT_EQ(grad->dtype(), DType::f64);
  }
  // Lq != Lk (non-causal only).
  const Tensor q3 = randn({2, 2, 3, 4}, gen, DType::f64);
  expect_close(linear_attention(q3, k, v), naive_kernelised(q3, k, v, elu_plus_one, false, 1e-6),
               kVsFormula, "Lq != Lk");
}

TEST(LinearAttentionF64, PerformerForward) {
  Generator gen(3);
  const Qkv t = qkv_leaves(gen, 2, 7, 7, 4, 3);
  const Tensor q = qkv::scale(t.q.value(), 0.7), k = qkv::scale(t.k.value(), 0.7), v = t.v.value();
  const Tensor w = performer_projection(10, 4, 5).to(DType::f64);
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal, chunks of 3" : "non-causal");
    // eps = 0: the stabilisers then cancel exactly, so the formula can leave them out.
    const LinearAttentionOptions exact{.causal = causal, .eps = 0, .chunk = 3};
    expect_close(performer_attention(q, k, v, w, exact),
                 naive_kernelised(q, k, v, positive_random_features(w), causal, 0), kVsFormula,
                 "output vs formula");
    const LinearAttentionOptions o{.causal = causal, .chunk = 3};
    const Tensor out = performer_attention(q, k, v, w, o);
    expect_close(out, performer_attention(f32(q), f32(k), f32(v), f32(w), o).to(DType::f64), kVsF32,
                 "output vs f32");
    const LinearAttentionGradients g =
        performer_attention_backward(randn(out.shape(), gen, DType::f64), q, k, v, w, o);
    for (const Tensor* grad : {&g.grad_q, &g.grad_k, &g.grad_v})
      EXPECT_EQ(grad->dtype(), DType::f64);
  }
}

// Any f64 input makes the whole computation f64 (torch's promotion); bf16 and
// f32 alone stay f32.
TEST(LinearAttentionF64, OneF64InputPromotes) {
  Generator gen(4);
  const Tensor x = randn({1, 2, 5, 3}, gen), x64 = x.to(DType::f64);
  const Tensor w = performer_projection(6, 3, 1);
  EXPECT_EQ(linear_attention(x, x, x64).dtype(), DType::f64);
  EXPECT_EQ(linear_attention_backward(x, x64, x, x).grad_v.dtype(), DType::f64);
  EXPECT_EQ(performer_attention(x, x, x, w.to(DType::f64)).dtype(), DType::f64);
  const Tensor e = randn({2, 5}, gen);
  const AttentionResult r = linformer_attention(x, x, x, e.to(DType::f64), e);
  EXPECT_EQ(r.output.dtype(), DType::f64);
  EXPECT_EQ(linformer_attention_backward(x, x, x, x, e.to(DType::f64), e, r).grad_e.dtype(),
            DType::f64);
  const Tensor bf = x.to(DType::bf16);
  EXPECT_EQ(linear_attention(bf, bf, bf).dtype(), DType::f32);
  EXPECT_EQ(performer_attention(bf, x, x, w).dtype(), DType::f32);
  EXPECT_EQ(linformer_attention(bf, bf, bf, e, e.to(DType::bf16)).output.dtype(), DType::f32);
}

// ---- gradcheck -------------------------------------------------------------------------

TEST(GradcheckLinearAttention, Linformer) {
  Generator gen(5);
  const Qkv t = qkv_leaves(gen, 2, 5, 6, 3, 4);
  for (bool per_head : {false, true}) {
    SCOPED_TRACE(per_head ? "per-head projections" : "shared projections");
    const Shape shape = per_head ? Shape{2, 3, 6} : Shape{3, 6};
    const Variable e = leaf(shape, gen, 0.5), f = leaf(shape, gen, 0.5);
    expect_gradcheck([&] { return linformer_op(t, e, f); }, {t.q, t.k, t.v, e, f});
  }
}

TEST(GradcheckLinearAttention, LinearAndPerformer) {
  Generator gen(6);
  const Tensor w = performer_projection(16, 4, 3).to(DType::f64);
  for (int64_t batch : {1, 2}) {
    const Qkv t = qkv_leaves(gen, batch, 7, 7, 4, 3);
    for (bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "B=" << batch << (causal ? " causal" : " non-causal"));
      const LinearAttentionOptions o{.causal = causal, .chunk = 3};
      expect_gradcheck([&] { return linear_op(t, o); }, {t.q, t.k, t.v});
      // Performer's stabilisers c are constants to its backward (as in the
      // paper's code): the exact gradient only where they cancel, eps = 0.
      // With eps > 0 (out = n e^-c / (den e^-c + eps)) the backward misses
      // c's share, beyond gradcheck's tolerance for a row whose stabilised
      // denominator is small (the f32 tests difference with c frozen instead).
      LinearAttentionOptions exact = o;
      exact.eps = 0;
      expect_gradcheck([&] { return performer_op(t, w, exact); }, {t.q, t.k, t.v});
    }
  }
  // Lq != Lk, and an f32 projection promoted by the f64 inputs.
  const Qkv u = qkv_leaves(gen, 1, 5, 6, 3, 3);
  expect_gradcheck([&] { return linear_op(u, {}); }, {u.q, u.k, u.v});
  const Tensor w32 = performer_projection(7, 3, 4);
  expect_gradcheck([&] { return performer_op(u, w32, {.eps = 0}); }, {u.q, u.k, u.v});
}

}  // namespace
}  // namespace qkv::autograd
