// Linformer, linear attention and Performer against a naive double-precision
// implementation of each defining formula (the explicit L x L form); the
// gradients against central differences of that naive form.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "qkv/qkv.h"

namespace qkv {
namespace {

using Values = std::vector<double>;

struct Shapes {
  int64_t b, h, lq, lk, d, dv;
};

// One problem: inputs in double (already rounded to f32), row-major [B, H, L, D].
struct Problem {
  Shapes s;
  Values q, k, v;
  Values e, f;  // Linformer: [kproj, Lk] (per_head: [H, kproj, Lk])
  Values w;     // Performer: [m, D]
  int64_t kproj = 0, m = 0;
  bool per_head = false;
};

Values rounded_normal(int64_t n, Generator& gen, double scale) {
  Values out(static_cast<size_t>(n));
  for (double& x : out) x = static_cast<float>(gen.normal() * scale);
  return out;
}

Tensor tensor(const Values& x, const Shape& shape) {
  return Tensor::from_values(x, shape);
}

// --- the naive forms, in double ---------------------------------------------

// phi of the rows of head bh.
using FeatureFn = std::function<Values(const Values& x, int64_t rows, bool queries, int64_t bh)>;

// out_i = sum_{j allowed} (phi_q_i . phi_k_j) v_j / (sum_{j allowed} phi_q_i . phi_k_j + eps).
Values naive_kernelised(const Problem& p, const Values& q, const Values& k, const Values& v,
                        const FeatureFn& phi, int64_t m, bool causal, double eps) {
  const Shapes& s = p.s;
  Values out(static_cast<size_t>(s.b * s.h * s.lq * s.dv));
  for (int64_t bh = 0; bh < s.b * s.h; ++bh) {
    const Values pq =
        phi(Values(q.begin() + bh * s.lq * s.d, q.begin() + (bh + 1) * s.lq * s.d), s.lq, true, bh);
    const Values pk = phi(Values(k.begin() + bh * s.lk * s.d, k.begin() + (bh + 1) * s.lk * s.d),
                          s.lk, false, bh);
    for (int64_t i = 0; i < s.lq; ++i) {
      double den = eps;
      Values num(static_cast<size_t>(s.dv), 0.0);
      for (int64_t j = 0; j < s.lk && (!causal || j <= i); ++j) {
        double a = 0;
        for (int64_t r = 0; r < m; ++r) a += pq[i * m + r] * pk[j * m + r];
        den += a;
        for (int64_t c = 0; c < s.dv; ++c) num[c] += a * v[(bh * s.lk + j) * s.dv + c];
      }
      for (int64_t c = 0; c < s.dv; ++c) out[(bh * s.lq + i) * s.dv + c] = num[c] / den;
    }
  }
  return out;
}

Values elu_plus_one(const Values& x, int64_t, bool, int64_t) {
  Values out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] > 0 ? x[i] + 1 : std::exp(x[i]);
  return out;
}

// phi(x) = exp(W x' - |x'|^2/2 - c) / sqrt(m), c = the row max (queries) or the
// max over every key of the head. The backward treats c as a constant, so the
// central differences run with the c of the unperturbed inputs (`frozen`):
// where a denominator is not large against eps, c does not cancel exactly.
struct PerformerPhi {
  Values w;
  int64_t m, d;
  bool frozen = false;
  std::vector<Values> c_q, c_k;  // per head: per query row / one for the keys

  Values operator()(const Values& x, int64_t rows, bool queries, int64_t bh) {
    const double s = std::pow(static_cast<double>(d), -0.25);
    Values a(static_cast<size_t>(rows * m));
    for (int64_t i = 0; i < rows; ++i) {
      double sq = 0;
      for (int64_t c = 0; c < d; ++c) sq += x[i * d + c] * s * x[i * d + c] * s;
      for (int64_t r = 0; r < m; ++r) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += w[r * d + c] * x[i * d + c] * s;
        a[i * m + r] = dot - sq / 2;
      }
    }
    std::vector<Values>& saved = queries ? c_q : c_k;
    if (!frozen) {
      if (static_cast<int64_t>(saved.size()) <= bh) saved.resize(static_cast<size_t>(bh + 1));
      Values& c = saved[static_cast<size_t>(bh)];
      c.assign(static_cast<size_t>(rows), *std::max_element(a.begin(), a.end()));
      if (queries)
        for (int64_t i = 0; i < rows; ++i)
          c[i] = *std::max_element(a.begin() + i * m, a.begin() + (i + 1) * m);
    }
    const Values& c = saved[static_cast<size_t>(bh)];
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t r = 0; r < m; ++r)
        a[i * m + r] = std::exp(a[i * m + r] - c[i]) / std::sqrt(static_cast<double>(m));
    return a;
  }
};

Values naive_linformer(const Problem& p, const Values& q, const Values& k, const Values& v,
                       const Values& e, const Values& f) {
  const Shapes& s = p.s;
  const double scale = 1 / std::sqrt(static_cast<double>(s.d));
  Values out(static_cast<size_t>(s.b * s.h * s.lq * s.dv));
  for (int64_t b = 0; b < s.b; ++b)
    for (int64_t h = 0; h < s.h; ++h) {
      const int64_t bh = b * s.h + h, off = p.per_head ? h * p.kproj * s.lk : 0;
      Values kp(static_cast<size_t>(p.kproj * s.d), 0.0),
          vp(static_cast<size_t>(p.kproj * s.dv), 0.0);
      for (int64_t r = 0; r < p.kproj; ++r)
        for (int64_t j = 0; j < s.lk; ++j) {
          for (int64_t c = 0; c < s.d; ++c)
            kp[r * s.d + c] += e[off + r * s.lk + j] * k[(bh * s.lk + j) * s.d + c];
          for (int64_t c = 0; c < s.dv; ++c)
            vp[r * s.dv + c] += f[off + r * s.lk + j] * v[(bh * s.lk + j) * s.dv + c];
        }
      for (int64_t i = 0; i < s.lq; ++i) {
        Values sc(static_cast<size_t>(p.kproj));
        for (int64_t r = 0; r < p.kproj; ++r) {
          double dot = 0;
          for (int64_t c = 0; c < s.d; ++c) dot += q[(bh * s.lq + i) * s.d + c] * kp[r * s.d + c];
          sc[r] = dot * scale;
        }
        const double top = *std::max_element(sc.begin(), sc.end());
        double total = 0;
        for (double& x : sc) total += (x = std::exp(x - top));
        for (int64_t c = 0; c < s.dv; ++c) {
          double acc = 0;
          for (int64_t r = 0; r < p.kproj; ++r) acc += sc[r] * vp[r * s.dv + c];
          out[(bh * s.lq + i) * s.dv + c] = acc / total;
        }
      }
    }
  return out;
}

// --- comparison helpers -------------------------------------------------------

void expect_close(const Tensor& got, const Values& want, double rtol, const std::string& what) {
  const Values g = got.to_values();
  ASSERT_EQ(g.size(), want.size()) << what;
  // Relative to the largest value, with a floor of 1e-7 absolute: f32
  // rounding of O(1) intermediates (a gradient that is ~0 because only eps
  // keeps it from cancelling, as for L = 1, is only that accurate).
  double scale = 0;
  for (double x : want) scale = std::max(scale, std::abs(x));
  const double tol = rtol * scale + 1e-7;
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_NEAR(g[i], want[i], tol) << what << " at " << i << " (scale " << scale << ")";
}

// d(sum(grad_out * forward)) / d input[i] by central differences of the naive
// double form, for every element of `input`.
Values numeric_grad(const std::function<Values()>& forward, Values& input, const Values& grad_out) {
  Values grad(input.size());
  for (size_t i = 0; i < input.size(); ++i) {
    const double x = input[i], h = 1e-6 * std::max(1.0, std::abs(x));
    auto loss = [&](double at) {
      input[i] = at;
      const Values out = forward();
      double l = 0;
      for (size_t j = 0; j < out.size(); ++j) l += out[j] * grad_out[j];
      return l;
    };
    grad[i] = (loss(x + h) - loss(x - h)) / (2 * h);
    input[i] = x;
  }
  return grad;
}

Problem make_problem(Shapes s, uint64_t seed, double scale = 1.0) {
  Generator gen(seed);
  Problem p;
  p.s = s;
  p.q = rounded_normal(s.b * s.h * s.lq * s.d, gen, scale);
  p.k = rounded_normal(s.b * s.h * s.lk * s.d, gen, scale);
  p.v = rounded_normal(s.b * s.h * s.lk * s.dv, gen, 1.0);
  return p;
}

Shape q_shape(const Shapes& s) {
  return {s.b, s.h, s.lq, s.d};
}
Shape k_shape(const Shapes& s) {
  return {s.b, s.h, s.lk, s.d};
}
Shape v_shape(const Shapes& s) {
  return {s.b, s.h, s.lk, s.dv};
}
Shape o_shape(const Shapes& s) {
  return {s.b, s.h, s.lq, s.dv};
}

// f32 accumulation over a few hundred terms: 1e-5 of the largest value.
constexpr double kForwardTol = 1e-5;
// The central differences themselves carry ~1e-7 relative error.
constexpr double kGradTol = 2e-5;

// --- tests --------------------------------------------------------------------

void check_linear(Shapes s, bool causal, int64_t chunk, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "L=" << s.lq << " causal=" << causal << " chunk=" << chunk);
  Problem p = make_problem(s, seed);
  const LinearAttentionOptions o{.causal = causal, .eps = 1e-6, .chunk = chunk};
  auto naive = [&] { return naive_kernelised(p, p.q, p.k, p.v, elu_plus_one, s.d, causal, 1e-6); };
  const Tensor q = tensor(p.q, q_shape(s)), k = tensor(p.k, k_shape(s)),
               v = tensor(p.v, v_shape(s));
  expect_close(linear_attention(q, k, v, o), naive(), kForwardTol, "output");
  Generator gen(seed + 100);
  const Values go = rounded_normal(s.b * s.h * s.lq * s.dv, gen, 1.0);
  const LinearAttentionGradients g = linear_attention_backward(tensor(go, o_shape(s)), q, k, v, o);
  expect_close(g.grad_q, numeric_grad(naive, p.q, go), kGradTol, "grad_q");
  expect_close(g.grad_k, numeric_grad(naive, p.k, go), kGradTol, "grad_k");
  expect_close(g.grad_v, numeric_grad(naive, p.v, go), kGradTol, "grad_v");
}

TEST(LinearAttention, MatchesNaiveForm) {
  check_linear({2, 3, 7, 7, 4, 5}, false, 64, 1);
  check_linear({1, 2, 9, 13, 6, 3}, false, 64, 2);  // Lq != Lk
  check_linear({2, 2, 11, 11, 4, 3}, true, 4, 3);   // partial last chunk
  check_linear({1, 3, 12, 12, 5, 5}, true, 3, 4);   // whole chunks
  check_linear({1, 1, 1, 1, 3, 2}, true, 64, 5);
}

void check_performer(Shapes s, int64_t m, bool causal, int64_t chunk, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "L=" << s.lq << " m=" << m << " causal=" << causal);
  Problem p = make_problem(s, seed, 0.7);
  const Tensor w = performer_projection(m, s.d, seed);
  const Values wv = w.to_values();
  const LinearAttentionOptions o{.causal = causal, .eps = 1e-6, .chunk = chunk};
  PerformerPhi phi{wv, m, s.d};
  auto naive = [&] { return naive_kernelised(p, p.q, p.k, p.v, std::ref(phi), m, causal, 1e-6); };
  const Tensor q = tensor(p.q, q_shape(s)), k = tensor(p.k, k_shape(s)),
               v = tensor(p.v, v_shape(s));
  expect_close(performer_attention(q, k, v, w, o), naive(), kForwardTol, "output");
  phi.frozen = true;
  Generator gen(seed + 100);
  const Values go = rounded_normal(s.b * s.h * s.lq * s.dv, gen, 1.0);
  const LinearAttentionGradients g =
      performer_attention_backward(tensor(go, o_shape(s)), q, k, v, w, o);
  expect_close(g.grad_q, numeric_grad(naive, p.q, go), kGradTol, "grad_q");
  expect_close(g.grad_k, numeric_grad(naive, p.k, go), kGradTol, "grad_k");
  expect_close(g.grad_v, numeric_grad(naive, p.v, go), kGradTol, "grad_v");
}

TEST(PerformerAttention, MatchesNaiveForm) {
  check_performer({2, 2, 9, 9, 4, 3}, 12, false, 64, 11);
  check_performer({1, 2, 10, 10, 8, 4}, 20, true, 4, 12);
}

TEST(PerformerProjection, OrthogonalBlocksAndSeeds) {
  const int64_t m = 21, d = 8;
  const Tensor w = performer_projection(m, d, 7);
  ASSERT_EQ(w.shape(), (Shape{m, d}));
  const Values x = w.to_values();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = i + 1; j < m && j / d == i / d; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < d; ++c) dot += x[i * d + c] * x[j * d + c];
      EXPECT_NEAR(dot, 0.0, 1e-5) << "rows " << i << ", " << j;
    }
  EXPECT_EQ(performer_projection(m, d, 7).to_values(), x);
  EXPECT_NE(performer_projection(m, d, 8).to_values(), x);
  PerformerFeatures features(m, d, 7);
  EXPECT_EQ(features.projection().to_values(), x);
  features.redraw(8);
  EXPECT_EQ(features.projection().to_values(), performer_projection(m, d, 8).to_values());
}

void check_linformer(Shapes s, int64_t kproj, bool per_head, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "kproj=" << kproj << " per_head=" << per_head);
  Problem p = make_problem(s, seed);
  p.kproj = kproj;
  p.per_head = per_head;
  Generator gen(seed + 50);
  const int64_t n = (per_head ? s.h : 1) * kproj * s.lk;
  p.e = rounded_normal(n, gen, 0.3);
  p.f = rounded_normal(n, gen, 0.3);
  const Shape pshape = per_head ? Shape{s.h, kproj, s.lk} : Shape{kproj, s.lk};
  auto naive = [&] { return naive_linformer(p, p.q, p.k, p.v, p.e, p.f); };
  const Tensor q = tensor(p.q, q_shape(s)), k = tensor(p.k, k_shape(s)),
               v = tensor(p.v, v_shape(s));
  const Tensor e = tensor(p.e, pshape), f = tensor(p.f, pshape);
  const AttentionResult r = linformer_attention(q, k, v, e, f);
  expect_close(r.output, naive(), kForwardTol, "output");
  const Values go = rounded_normal(s.b * s.h * s.lq * s.dv, gen, 1.0);
  const LinformerGradients g =
      linformer_attention_backward(tensor(go, o_shape(s)), q, k, v, e, f, r);
  expect_close(g.grad_q, numeric_grad(naive, p.q, go), kGradTol, "grad_q");
  expect_close(g.grad_k, numeric_grad(naive, p.k, go), kGradTol, "grad_k");
  expect_close(g.grad_v, numeric_grad(naive, p.v, go), kGradTol, "grad_v");
  expect_close(g.grad_e, numeric_grad(naive, p.e, go), kGradTol, "grad_e");
  expect_close(g.grad_f, numeric_grad(naive, p.f, go), kGradTol, "grad_f");
}

TEST(LinformerAttention, MatchesNaiveForm) {
  check_linformer({2, 3, 7, 11, 4, 5}, 3, false, 21);
  check_linformer({2, 2, 5, 9, 6, 3}, 4, true, 22);
}

template <class Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(LinearAttention, ArgumentErrors) {
  const Tensor x = Tensor::zeros({1, 2, 5, 4}), y = Tensor::zeros({1, 2, 6, 4});
  expect_error(
      [&] {
        linear_attention(Tensor::zeros({2, 5, 4}), x, x);
      },
      "linear_attention: argument q must be [B, H, L, D], got shape [2, 5, 4]");
  expect_error([&] { linear_attention(x, x, y); }, "linear_attention: k has 5 keys but v has 6");
  expect_error([&] { linear_attention(x, y, y, {.causal = true}); },
               "causal needs as many queries as keys, got Lq = 5 and Lk = 6");
  expect_error([&] { linear_attention(x, x, x, {.chunk = 0}); }, "options.chunk is 0");
  expect_error([&] { linear_attention(x, x, x, {.eps = -1}); }, "options.eps is -1");
  expect_error(
      [&] {
        linear_attention(x, x, Tensor::zeros({1, 2, 5, 4}, DType::i32));
      },
      "argument v has dtype i32");
  expect_error([&] { linear_attention_backward(y, x, x, x); },
               "linear_attention_backward: argument grad_output has shape [1, 2, 6, 4]; expected "
               "[1, 2, 5, 4]");
  expect_error(
      [&] {
        performer_attention(x, x, x, Tensor::zeros({8, 3}));
      },
      "performer_attention: argument w has shape [8, 3]; expected [m, 4]");
  expect_error([&] { performer_projection(0, 4, 1); },
               "performer_projection: argument features is 0");
  const Tensor e = Tensor::zeros({3, 5});
  expect_error(
      [&] {
        linformer_attention(x, x, x, e, Tensor::zeros({3, 6}));
      },
      "linformer_attention: argument f has shape [3, 6]; expected [kproj, 5] or [2, kproj, 5]");
  expect_error(
      [&] {
        linformer_attention(x, x, x, e, Tensor::zeros({2, 5}));
      },
      "e projects to 3 keys but f to 2 values");
  expect_error([&] { linformer_attention(x, x, x, e, e, {.causal = Causal::top_left}); },
               "linformer_attention: options.causal is not supported");
  expect_error([&] { linformer_attention_backward(x, x, x, x, e, e, AttentionResult{}); },
               "argument forward must hold");
}

}  // namespace
}  // namespace qkv
