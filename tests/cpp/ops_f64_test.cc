// The f64 path of the ops of qkv/ops.h (what autograd::gradcheck runs on):
// f64 results against double formulas written here (relative error ~1e-13),
// against the f32 path within f32 tolerance, the promotion of mixed operands
// to f64, and that f32 inputs still run the SIMD kernels bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "qkv/ops.h"
#include "qkv/tensor.h"

namespace qkv {
namespace {

constexpr double kF32Eps = std::numeric_limits<float>::epsilon();
// Formulas here and in the library agree to a few double ulp times the
// condition of the formula; 1e-13 leaves room for that, and is far below
// anything an f32 round trip could reach (1e-7).
constexpr double kRel = 1e-13;

// N(0, scale^2) + offset values, deterministic per seed. In f64 they use all
// 53 bits, so any rounding through f32 shows.
Tensor Random(const Shape& shape, uint64_t seed, DType dtype = DType::f64, double scale = 1.0,
              double offset = 0.0) {
  Generator gen(seed);
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  for (double& v : values) v = offset + scale * gen.normal();
  return Tensor::from_values(values, shape, dtype);
}

// Every element within rel * |want| + abs of want.
void ExpectNear(const Tensor& got, const std::vector<double>& want, double rel, double abs,
                const std::string& what) {
  const std::vector<double> values = got.to_values();
  ASSERT_EQ(values.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(values[i], want[i], rel * std::abs(want[i]) + abs) << what << " at " << i;
}

void ExpectF64(const Tensor& got, const std::vector<double>& want, const std::string& what,
               double abs = 0.0) {
  ASSERT_EQ(got.dtype(), DType::f64) << what;
  ExpectNear(got, want, kRel, abs, what);
}

// The f64 result against the same op on f32 copies of the inputs.
void ExpectNearF32Path(const Tensor& f64_result, const Tensor& f32_result, const std::string& what,
                       double abs = 1e-6) {
  ASSERT_EQ(f32_result.dtype(), DType::f32) << what;
  ExpectNear(f64_result, f32_result.to_values(), 16 * kF32Eps, abs, what + " (vs f32)");
}

std::vector<double> Map(const Tensor& x, const std::function<double(double)>& f) {
  std::vector<double> v = x.to_values();
  for (double& e : v) e = f(e);
  return v;
}

// The flat (row-major) indices of every row of `shape` along `dim`.
std::vector<std::vector<size_t>> RowIndices(const Shape& shape, int64_t dim) {
  const int64_t d = wrap_dim(dim, static_cast<int64_t>(shape.size()), "RowIndices");
  const Shape strides = contiguous_strides(shape);
  const int64_t n = shape[static_cast<size_t>(d)], stride = strides[static_cast<size_t>(d)];
  std::vector<std::vector<size_t>> rows;
  for (int64_t flat = 0; flat < shape_numel(shape); ++flat) {
    if (flat / stride % n != 0) continue;  // not the first element of its row
    std::vector<size_t>& row = rows.emplace_back();
    for (int64_t k = 0; k < n; ++k) row.push_back(static_cast<size_t>(flat + k * stride));
  }
  return rows;
}

// softmax (or log_softmax) of x along dim, in double.
std::vector<double> SoftmaxValues(const Tensor& x, int64_t dim, bool log) {
  const std::vector<double> v = x.to_values();
  std::vector<double> out(v.size());
  for (const auto& row : RowIndices(x.shape(), dim)) {
    double max = -INFINITY, sum = 0.0;
    for (size_t i : row) max = std::max(max, v[i]);
    for (size_t i : row) sum += std::exp(v[i] - max);
    for (size_t i : row) out[i] = log ? v[i] - max - std::log(sum) : std::exp(v[i] - max) / sum;
  }
  return out;
}

double Phi(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double GeluTanh(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double Dot(const Tensor& a, const Tensor& b) {
  const std::vector<double> va = a.to_values(), vb = b.to_values();
  double s = 0.0;
  for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
  return s;
}

// d/dh <g, f(x + h v)> at h = 0 by central differences in f64: an
// independent check of a backward's formula (error ~h^2 + 1e-16 / h).
double Directional(const std::function<Tensor(const Tensor&)>& f, const Tensor& x, const Tensor& v,
                   const Tensor& g, double h = 1e-5) {
  return (Dot(g, f(add(x, scale(v, h)))) - Dot(g, f(sub(x, scale(v, h))))) / (2 * h);
}

// ---- forward ---------------------------------------------------------------

TEST(OpsF64, BinaryOpsAreTheExactDoubleOperationsAndBroadcast) {
  const Tensor a = Random({3, 1, 5}, 1), b = Random({4, 5}, 2, DType::f64, 1.0, 3.0);
  const Tensor at = Random({5, 4}, 3).transpose(0, 1);  // non-contiguous [4, 5]
  const Tensor s = Tensor::full({}, 1.0 / 3.0, DType::f64);
  const std::vector<std::pair<Tensor, Tensor>> pairs = {{a, b}, {b, a}, {at, b}, {a, s}, {s, b}};
  for (const auto& [x, y] : pairs) {
    const Shape shape = broadcast_shapes(x.shape(), y.shape(), "test");
    const std::vector<double> vx = x.expand(shape).to_values(), vy = y.expand(shape).to_values();
    const std::vector<std::pair<std::string, std::function<double(double, double)>>> ops = {
        {"add", std::plus<>()},
        {"sub", std::minus<>()},
        {"mul", std::multiplies<>()},
        {"div", std::divides<>()}};
    for (const auto& [name, f] : ops) {
      const Tensor got = name == "add"   ? add(x, y)
                         : name == "sub" ? sub(x, y)
                         : name == "mul" ? mul(x, y)
                                         : div(x, y);
      ASSERT_EQ(got.dtype(), DType::f64) << name;
      ASSERT_EQ(got.shape(), shape) << name;
      const std::vector<double> values = got.to_values();
      for (size_t i = 0; i < values.size(); ++i)
        ASSERT_EQ(values[i], f(vx[i], vy[i])) << name << " " << shape_string(x.shape()) << " "
                                              << shape_string(y.shape()) << " at " << i;
    }
  }
}

TEST(OpsF64, MixedOperandsPromoteToF64) {
  const Tensor a = Random({2, 3, 4}, 4);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor b = Random({4}, 5, dtype);
    const std::vector<double> va = a.to_values(), vb = b.expand(a.shape()).to_values();
    std::vector<double> sum(va.size()), quotient(va.size());
    for (size_t i = 0; i < va.size(); ++i) {
      sum[i] = va[i] + vb[i];
      quotient[i] = vb[i] / va[i];
    }
    const std::string what = dtype_name(dtype);
    ExpectF64(add(a, b), sum, "add(f64, " + what + ")");
    ExpectF64(add(b, a), sum, "add(" + what + ", f64)");
    ExpectF64(div(b, a), quotient, "div(" + what + ", f64)");
  }
  // Without f64 the promotion is as before: f32 with bf16 gives f32.
  EXPECT_EQ(add(Random({3}, 6, DType::f32), Random({3}, 7, DType::bf16)).dtype(), DType::f32);
  EXPECT_EQ(add(Random({3}, 6, DType::bf16), Random({3}, 7, DType::bf16)).dtype(), DType::bf16);
}

TEST(OpsF64, ScaleKeepsTheFactorInDouble) {
  const Tensor x = Random({7, 3}, 8);
  ExpectF64(scale(x, 0.1), Map(x, [](double v) { return v * 0.1; }), "scale");
  ExpectF64(scale(x.transpose(0, 1), -1.0 / 3.0),
            Map(x.transpose(0, 1), [](double v) { return v * (-1.0 / 3.0); }), "scale strided");
}

TEST(OpsF64, ActivationsMatchDoubleFormulas) {
  // Both tails: gelu's negative tail is tiny and must keep its relative accuracy.
  std::vector<double> values = Random({6, 50}, 9, DType::f64, 4.0).to_values();
  values[0] = -12.5, values[1] = 0.0, values[2] = 30.0, values[3] = -0.0;
  const Tensor x = Tensor::from_values(values, {6, 50}, DType::f64);
  const Tensor x32 = x.to(DType::f32);
  struct Case {
    std::string name;
    std::function<Tensor(const Tensor&)> op;
    std::function<double(double)> f;
  };
  const std::vector<Case> cases = {
      {"exp", [](const Tensor& t) { return qkv::exp(t); }, [](double v) { return std::exp(v); }},
      {"relu", [](const Tensor& t) { return relu(t); }, [](double v) { return v > 0 ? v : 0.0; }},
      {"silu", [](const Tensor& t) { return silu(t); }, [](double v) { return v * Sigmoid(v); }},
      {"gelu", [](const Tensor& t) { return gelu(t); }, [](double v) { return v * Phi(v); }},
      // 0.5 (1 + tanh y) cancels for y << 0: there its equal sigmoid(2 y).
      {"gelu tanh", [](const Tensor& t) { return gelu(t, GeluApproximation::tanh); },
       [](double v) {
         const double y = std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v);
         return v < -3 ? v * Sigmoid(2 * y) : GeluTanh(v);
       }},
  };
  for (const Case& c : cases) {
    ExpectF64(c.op(x), Map(x, c.f), c.name);
    ExpectF64(c.op(x.transpose(0, 1)), Map(x.transpose(0, 1), c.f), c.name + " strided");
    // exp(30) in f32 is 1e13 (relative tolerance covers it); tails near 0 need the abs.
    ExpectNearF32Path(c.op(x), c.op(x32), c.name);
  }
}

TEST(OpsF64, SoftmaxAndLogSoftmaxAlongEveryDim) {
  const Tensor x = Random({3, 4, 5}, 10, DType::f64, 3.0);
  for (int64_t dim : {0, 1, 2, -1}) {
    const std::string what = " dim " + std::to_string(dim);
    ExpectF64(softmax(x, dim), SoftmaxValues(x, dim, false), "softmax" + what);
    ExpectF64(log_softmax(x, dim), SoftmaxValues(x, dim, true), "log_softmax" + what, 1e-15);
    ExpectNearF32Path(softmax(x, dim), softmax(x.to(DType::f32), dim), "softmax" + what);
    ExpectNearF32Path(log_softmax(x, dim), log_softmax(x.to(DType::f32), dim),
                      "log_softmax" + what, 1e-5);
  }
  const Tensor one = Tensor::full({}, 0.25, DType::f64);
  ExpectF64(softmax(one, 0), {1.0}, "softmax of a scalar");
}

// layer_norm (or rms_norm when !centre) of x's last dim, in double.
std::vector<double> NormValues(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                               bool centre) {
  const std::vector<double> v = x.to_values();
  const std::vector<double> vw = w.defined() ? w.to_values() : std::vector<double>();
  const std::vector<double> vb = b.defined() ? b.to_values() : std::vector<double>();
  std::vector<double> out(v.size());
  for (const auto& row : RowIndices(x.shape(), -1)) {
    const double n = static_cast<double>(row.size());
    double mean = 0.0, var = 0.0;
    if (centre) {
      for (size_t i : row) mean += v[i];
      mean /= n;
    }
    for (size_t i : row) var += (v[i] - mean) * (v[i] - mean) / n;
    for (size_t k = 0; k < row.size(); ++k) {
      double y = (v[row[k]] - mean) / std::sqrt(var + eps);
      if (!vw.empty()) y *= vw[k];
      if (!vb.empty()) y += vb[k];
      out[row[k]] = y;
    }
  }
  return out;
}

TEST(OpsF64, NormsComputeInDoubleAndPromoteTheirParameters) {
  // A mean far from 0: an f32 round trip would lose the small deviations.
  const Tensor x = Random({5, 8}, 11, DType::f64, 1e-3, 100.0);
  const Tensor w64 = Random({8}, 12), b64 = Random({8}, 13);
  for (DType pdtype : {DType::f64, DType::f32, DType::bf16}) {
    const Tensor w = w64.to(pdtype), b = b64.to(pdtype);
    const std::string what = std::string(" with ") + dtype_name(pdtype) + " parameters";
    ExpectF64(layer_norm(x, w, b, 1e-5), NormValues(x, w, b, 1e-5, true), "layer_norm" + what,
              1e-10);
    ExpectF64(rms_norm(x, w, 1e-6), NormValues(x, w, Tensor(), 1e-6, false), "rms_norm" + what);
  }
  ExpectF64(layer_norm(x, Tensor(), Tensor(), 0.0), NormValues(x, Tensor(), Tensor(), 0.0, true),
            "layer_norm without affine", 1e-10);
  // f32 x with an f64 weight: f64 too (torch's promotion).
  const Tensor x32 = Random({5, 8}, 14, DType::f32);
  ExpectF64(layer_norm(x32, w64, Tensor()), NormValues(x32, w64, Tensor(), 1e-5, true),
            "layer_norm(f32 x, f64 weight)");
  ExpectF64(rms_norm(x32, w64), NormValues(x32, w64, Tensor(), kF32Eps, false),
            "rms_norm(f32 x, f64 weight)");
  ExpectNearF32Path(rms_norm(x32, w64), rms_norm(x32, w64.to(DType::f32)), "rms_norm", 1e-5);
}

TEST(OpsF64, ReductionsWholeAndAlongEveryDim) {
  const Tensor x = Random({3, 4, 5}, 15);
  const std::vector<double> v = x.to_values();
  for (int64_t dim : {0, 1, 2}) {
    std::vector<double> sums, means, maxes;
    for (const auto& row : RowIndices(x.shape(), dim)) {
      double s = 0.0, m = -INFINITY;
      for (size_t i : row) s += v[i], m = std::max(m, v[i]);
      sums.push_back(s);
      means.push_back(s / static_cast<double>(row.size()));
      maxes.push_back(m);
    }
    // RowIndices walks rows in the order of the reduced shape's elements.
    for (bool keepdim : {false, true}) {
      const std::string what = " dim " + std::to_string(dim) + (keepdim ? " keepdim" : "");
      Shape shape = x.shape();
      if (keepdim) {
        shape[static_cast<size_t>(dim)] = 1;
      } else {
        shape.erase(shape.begin() + dim);
      }
      ASSERT_EQ(sum(x, dim, keepdim).shape(), shape) << what;
      ExpectF64(sum(x, dim, keepdim), sums, "sum" + what, 1e-15);
      ExpectF64(mean(x, dim, keepdim), means, "mean" + what, 1e-15);
      ExpectF64(max(x, dim, keepdim), maxes, "max" + what);
    }
  }
  double total = 0.0;
  for (double e : v) total += e;
  ExpectF64(sum(x), {total}, "sum", 1e-15);
  ExpectF64(mean(x), {total / 60.0}, "mean", 1e-15);
  ExpectF64(max(x), {*std::max_element(v.begin(), v.end())}, "max");
  // 1 + 1e-9 - 1 is 0 after an f32 rounding, about 1e-9 in double.
  const Tensor small = Tensor::from_values({1.0, 1e-9, -1.0}, {3}, DType::f64);
  EXPECT_NEAR(sum(small).to_values()[0], 1e-9, 1e-15);
  EXPECT_NEAR(sum(small, 0).to_values()[0], 1e-9, 1e-15);
}

TEST(OpsF64, EmbeddingGathersAndScatterAddsInDouble) {
  const Tensor weight = Random({5, 3}, 16);
  const Tensor ids = Tensor::from_values({4, 0, 4, 2, 4, 1}, {2, 3}, DType::i64);
  const std::vector<double> w = weight.to_values(), id = ids.to_values();
  std::vector<double> rows;
  for (double i : id)
    for (int64_t c = 0; c < 3; ++c) rows.push_back(w[static_cast<size_t>(i) * 3 + c]);
  const Tensor out = embedding(weight, ids);
  ASSERT_EQ(out.shape(), (Shape{2, 3, 3}));
  ExpectF64(out, rows, "embedding");
  ExpectF64(embedding(weight.transpose(0, 1).contiguous().transpose(0, 1), ids), rows,
            "embedding of a strided weight");

  const Tensor grad = Random({2, 3, 3}, 17);
  const std::vector<double> g = grad.to_values();
  for (int64_t padding : {-1, 4}) {
    std::vector<double> want(15, 0.0);
    for (size_t k = 0; k < id.size(); ++k)
      if (static_cast<int64_t>(id[k]) != padding)
        for (size_t c = 0; c < 3; ++c) want[static_cast<size_t>(id[k]) * 3 + c] += g[k * 3 + c];
    ExpectF64(embedding_backward(grad, ids, 5, padding), want,
              "embedding_backward padding " + std::to_string(padding));
  }
  EXPECT_EQ(embedding_backward(grad.to(DType::f32), ids, 5).dtype(), DType::f32);
  EXPECT_EQ(embedding(weight.to(DType::f32), ids).dtype(), DType::f32);
}

// ---- backward --------------------------------------------------------------

TEST(OpsF64, ActivationBackwardsMatchDoubleFormulas) {
  const Tensor x = Random({4, 25}, 18, DType::f64, 3.0), g = Random({4, 25}, 19);
  const std::vector<double> vx = x.to_values(), vg = g.to_values();
  const auto expect = [&](const Tensor& got, const std::function<double(double)>& derivative,
                          const std::string& what) {
    std::vector<double> want(vx.size());
    for (size_t i = 0; i < vx.size(); ++i) want[i] = vg[i] * derivative(vx[i]);
    ExpectF64(got, want, what, 1e-15);
  };
  expect(relu_backward(g, x), [](double v) { return v > 0 ? 1.0 : 0.0; }, "relu_backward");
  expect(silu_backward(g, x), [](double v) { return Sigmoid(v) * (1 + v * (1 - Sigmoid(v))); },
         "silu_backward");
  expect(gelu_backward(g, x),
         [](double v) { return Phi(v) + v * std::exp(-v * v / 2) / std::sqrt(2 * M_PI); },
         "gelu_backward");
  expect(gelu_backward(g, x, GeluApproximation::tanh),
         [](double v) {
           // d/dv 0.5 v (1 + tanh u) with 0.5 (1 + tanh u) = sigmoid(2u) = s and
           // 1 - tanh^2 u = 4 s (1 - s), which do not cancel for u << 0.
           const double k = std::sqrt(2 / M_PI), u = k * (v + 0.044715 * v * v * v);
           const double s = Sigmoid(2 * u), one_minus_s = Sigmoid(-2 * u);
           return s + 2 * v * s * one_minus_s * k * (1 + 3 * 0.044715 * v * v);
         },
         "gelu_backward tanh");
  // Mixed: an f32 grad with an f64 x is promoted.
  const Tensor g32 = g.to(DType::f32);
  const std::vector<double> vg32 = g32.to_values();
  std::vector<double> want(vx.size());
  for (size_t i = 0; i < vx.size(); ++i)
    want[i] = vg32[i] * Sigmoid(vx[i]) * (1 + vx[i] * (1 - Sigmoid(vx[i])));
  ExpectF64(silu_backward(g32, x), want, "silu_backward(f32 grad, f64 x)", 1e-15);
  ExpectNearF32Path(gelu_backward(g, x), gelu_backward(g32, x.to(DType::f32)), "gelu_backward");
}

TEST(OpsF64, SoftmaxBackwardsAlongEveryDim) {
  const Tensor x = Random({3, 4, 5}, 20, DType::f64, 2.0), g = Random({3, 4, 5}, 21);
  const Tensor v = Random({3, 4, 5}, 22);
  const std::vector<double> vg = g.to_values();
  for (int64_t dim : {0, 1, 2}) {
    const std::string what = " dim " + std::to_string(dim);
    const Tensor y = softmax(x, dim), ly = log_softmax(x, dim);
    const std::vector<double> vy = y.to_values();
    std::vector<double> dsoft(vy.size()), dlog(vy.size());
    for (const auto& row : RowIndices(x.shape(), dim)) {
      double dot = 0.0, total = 0.0;
      for (size_t i : row) dot += vg[i] * vy[i], total += vg[i];
      for (size_t i : row) {
        dsoft[i] = vy[i] * (vg[i] - dot);
        dlog[i] = vg[i] - vy[i] * total;
      }
    }
    const Tensor ds = softmax_backward(g, y, dim), dl = log_softmax_backward(g, ly, dim);
    ExpectF64(ds, dsoft, "softmax_backward" + what, 1e-15);
    ExpectF64(dl, dlog, "log_softmax_backward" + what, 1e-15);
    // The formulas themselves, against central differences of the forward.
    EXPECT_NEAR(Dot(ds, v), Directional([&](const Tensor& t) { return softmax(t, dim); }, x, v, g),
                1e-8);
    EXPECT_NEAR(Dot(dl, v),
                Directional([&](const Tensor& t) { return log_softmax(t, dim); }, x, v, g), 1e-8);
    ExpectNearF32Path(ds, softmax_backward(g.to(DType::f32), y.to(DType::f32), dim),
                      "softmax_backward" + what, 1e-5);
  }
}

TEST(OpsF64, NormBackwardsGiveF64Gradients) {
  const Tensor x = Random({6, 7}, 23, DType::f64, 1.0, 0.5), g = Random({6, 7}, 24);
  const Tensor w = Random({7}, 25, DType::f32), b = Random({7}, 26, DType::f32);
  const Tensor v = Random({6, 7}, 27), vw = Random({7}, 28), vb = Random({7}, 29);
  const double eps = 1e-5;
  const std::vector<double> vx = x.to_values(), vgr = g.to_values(), vwt = w.to_values();

  // layer_norm: dx = rstd (gw - mean(gw) - xhat mean(gw xhat)), dw = sum g xhat, db = sum g.
  std::vector<double> dx(vx.size()), dw(7, 0.0), db(7, 0.0);
  for (const auto& row : RowIndices(x.shape(), -1)) {
    double mean = 0.0, var = 0.0;
    for (size_t i : row) mean += vx[i] / 7;
    for (size_t i : row) var += (vx[i] - mean) * (vx[i] - mean) / 7;
    const double rstd = 1 / std::sqrt(var + eps);
    double mean_gw = 0.0, mean_gw_xhat = 0.0;
    for (size_t k = 0; k < 7; ++k) {
      const double xhat = (vx[row[k]] - mean) * rstd, gw = vgr[row[k]] * vwt[k];
      mean_gw += gw / 7, mean_gw_xhat += gw * xhat / 7;
      dw[k] += vgr[row[k]] * xhat, db[k] += vgr[row[k]];
    }
    for (size_t k = 0; k < 7; ++k) {
      const double xhat = (vx[row[k]] - mean) * rstd;
      dx[row[k]] = rstd * (vgr[row[k]] * vwt[k] - mean_gw - xhat * mean_gw_xhat);
    }
  }
  const NormGradients ln = layer_norm_backward(g, x, w, b, eps);
  ExpectF64(ln.input, dx, "layer_norm_backward dx", 1e-14);
  ExpectF64(ln.weight, dw, "layer_norm_backward dweight", 1e-14);
  ExpectF64(ln.bias, db, "layer_norm_backward dbias", 1e-14);
  EXPECT_NEAR(Dot(ln.input, v),
              Directional([&](const Tensor& t) { return layer_norm(t, w, b, eps); }, x, v, g),
              1e-7);
  EXPECT_NEAR(Dot(ln.weight, vw),
              Directional([&](const Tensor& t) { return layer_norm(x, t, b, eps); },
                          w.to(DType::f64), vw, g),
              1e-7);
  EXPECT_NEAR(Dot(ln.bias, vb),
              Directional([&](const Tensor& t) { return layer_norm(x, w, t, eps); },
                          b.to(DType::f64), vb, g),
              1e-7);
  const NormGradients ln32 = layer_norm_backward(g.to(DType::f32), x.to(DType::f32), w, b, eps);
  ExpectNearF32Path(ln.input, ln32.input, "layer_norm_backward dx", 1e-5);
  ExpectNearF32Path(ln.weight, ln32.weight, "layer_norm_backward dweight", 1e-5);
  // Only the bias f64: still the f64 path.
  const NormGradients f64_bias =
      layer_norm_backward(g.to(DType::f32), x.to(DType::f32), w, b.to(DType::f64), eps);
  EXPECT_EQ(f64_bias.bias.dtype(), DType::f64);
  EXPECT_EQ(f64_bias.input.dtype(), DType::f64);

  // rms_norm: dx = r gw - x r^3 mean(gw x), dw = sum g x r.
  std::fill(dw.begin(), dw.end(), 0.0);
  for (const auto& row : RowIndices(x.shape(), -1)) {
    double ms = 0.0, mean_gwx = 0.0;
    for (size_t k = 0; k < 7; ++k) {
      ms += vx[row[k]] * vx[row[k]] / 7;
      mean_gwx += vgr[row[k]] * vwt[k] * vx[row[k]] / 7;
    }
    const double r = 1 / std::sqrt(ms + eps);
    for (size_t k = 0; k < 7; ++k) {
      dx[row[k]] = r * vgr[row[k]] * vwt[k] - vx[row[k]] * r * r * r * mean_gwx;
      dw[k] += vgr[row[k]] * vx[row[k]] * r;
    }
  }
  const NormGradients rms = rms_norm_backward(g, x, w, eps);
  ExpectF64(rms.input, dx, "rms_norm_backward dx", 1e-14);
  ExpectF64(rms.weight, dw, "rms_norm_backward dweight", 1e-14);
  EXPECT_FALSE(rms.bias.defined());
  EXPECT_NEAR(Dot(rms.input, v),
              Directional([&](const Tensor& t) { return rms_norm(t, w, eps); }, x, v, g), 1e-7);
  EXPECT_NEAR(Dot(rms.weight, vw),
              Directional([&](const Tensor& t) { return rms_norm(x, t, eps); }, w.to(DType::f64),
                          vw, g),
              1e-7);
}

TEST(OpsF64, SumToShapeSumsInDouble) {
  const Tensor g = Random({3, 4, 5}, 30);
  const std::vector<double> vg = g.to_values();
  const Shape strides = contiguous_strides(g.shape());
  for (const Shape& shape : {Shape{4, 1}, Shape{5}, Shape{3, 1, 5}, Shape{1, 4, 1}, Shape{},
                             Shape{3, 4, 5}}) {
    std::vector<double> want(static_cast<size_t>(shape_numel(shape)), 0.0);
    const Shape target_strides = contiguous_strides(shape);
    const size_t lead = 3 - shape.size();
    for (int64_t flat = 0; flat < g.numel(); ++flat) {
      int64_t offset = 0;
      for (size_t d = lead; d < 3; ++d) {
        const int64_t index = flat / strides[d] % g.size(static_cast<int64_t>(d));
        if (shape[d - lead] != 1) offset += index * target_strides[d - lead];
      }
      want[static_cast<size_t>(offset)] += vg[static_cast<size_t>(flat)];
    }
    const Tensor got = sum_to_shape(g, shape);
    ASSERT_EQ(got.shape(), shape);
    ExpectF64(got, want, "sum_to_shape " + shape_string(shape), 1e-15);
  }
  EXPECT_EQ(sum_to_shape(g.to(DType::f32), {5}).dtype(), DType::f32);
}

TEST(OpsF64, DropoutHasTheF32MaskAndScalesInDouble) {
  // More elements than one kernel chunk, so chunk offsets are covered too.
  const Tensor x = Random({3, 20000}, 31);
  const double p = 0.3;
  Generator gen32(7), gen64(7);
  const DropoutResult r32 = dropout(x.to(DType::f32), p, gen32);
  const DropoutResult r64 = dropout(x, p, gen64);
  EXPECT_EQ(gen32.seed_state(), gen64.seed_state());
  ASSERT_EQ(r64.mask.dtype(), DType::boolean);
  const std::vector<double> m32 = r32.mask.to_values(), m64 = r64.mask.to_values();
  ASSERT_EQ(m32, m64) << "the mask must not depend on x's dtype";
  const double kept = std::count(m64.begin(), m64.end(), 1.0) / static_cast<double>(m64.size());
  EXPECT_NEAR(kept, 1 - p, 0.01);
  const std::vector<double> vx = x.to_values();
  std::vector<double> want(vx.size());
  for (size_t i = 0; i < vx.size(); ++i) want[i] = m64[i] != 0 ? vx[i] * (1 / (1 - p)) : 0.0;
  ExpectF64(r64.output, want, "dropout");
  ExpectF64(dropout_backward(x, r64.mask, p), want, "dropout_backward");
  ExpectNearF32Path(r64.output, r32.output, "dropout");
  // p == 0: x itself; no mask.
  const DropoutResult none = dropout(x, 0.0, gen64);
  EXPECT_EQ(none.output.storage(), x.storage());
  ExpectF64(dropout_backward(x, Tensor(), 0.0), vx, "dropout_backward p 0");
}

// ---- the f32 path is untouched ----------------------------------------------

// An f32 op's result must be bit for bit the SIMD kernel's on the same floats.
void ExpectBits(const Tensor& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.dtype(), DType::f32) << what;
  const Tensor c = got.contiguous();
  ASSERT_EQ(static_cast<size_t>(c.numel()), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(c.data<float>()[i], want[i]) << what << " at " << i;
}

TEST(OpsF64, F32InputsStillRunTheSimdKernels) {
  const Tensor a = Random({4, 9}, 32, DType::f32), b = Random({4, 9}, 33, DType::f32);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  const size_t n = 36;
  std::vector<float> want(n);
  kernels::Add(pa, pb, want.data(), n);
  ExpectBits(add(a, b), want, "add");
  kernels::Div(pa, pb, want.data(), n);
  ExpectBits(div(a, b), want, "div");
  kernels::GeluErf(pa, want.data(), n);
  ExpectBits(gelu(a), want, "gelu");
  for (size_t r = 0; r < 4; ++r) kernels::Softmax(pa + r * 9, want.data() + r * 9, 9);
  ExpectBits(softmax(a), want, "softmax");
  const Tensor w = Random({9}, 34, DType::f32), bias = Random({9}, 35, DType::f32);
  for (size_t r = 0; r < 4; ++r)
    kernels::LayerNorm(pa + r * 9, w.data<float>(), bias.data<float>(), 1e-5f, want.data() + r * 9,
                       9);
  ExpectBits(layer_norm(a, w, bias), want, "layer_norm");
  for (size_t r = 0; r < 4; ++r)
    kernels::RmsNorm(pa + r * 9, w.data<float>(), std::numeric_limits<float>::epsilon(),
                     want.data() + r * 9, 9);
  ExpectBits(rms_norm(a, w), want, "rms_norm");
  std::vector<float> sums(4);
  for (size_t r = 0; r < 4; ++r) sums[r] = kernels::Sum(pa + r * 9, 9);
  ExpectBits(sum(a, 1), sums, "sum");
  kernels::SiluBackward(pb, pa, want.data(), n);
  ExpectBits(silu_backward(b, a), want, "silu_backward");
  const Tensor y = softmax(a);
  for (size_t r = 0; r < 4; ++r)
    kernels::SoftmaxBackward(pb + r * 9, y.data<float>() + r * 9, want.data() + r * 9, 9);
  ExpectBits(softmax_backward(b, y), want, "softmax_backward");
}

}  // namespace
}  // namespace qkv
