// The ops of qkv/ops.h on tensors: broadcasting, non-contiguous inputs,
// bf16 / f16 inputs, dims, threading, and the validation errors. Values are
// checked against plain double loops over to_values().
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "qkv/ops.h"
#include "qkv/tensor.h"
#include "qkv/threads.h"

namespace qkv {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();
constexpr double kInf = std::numeric_limits<double>::infinity();

// N(0, scale^2) values of `dtype`, deterministic per seed.
Tensor Random(const Shape& shape, uint64_t seed, DType dtype = DType::f32, double scale = 1.0) {
  Generator gen(seed);
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  for (double& v : values) v = scale * gen.normal();
  return Tensor::from_values(values, shape, dtype);
}

// Expects every element within rel * |want| + abs of want (NaN matches NaN).
void ExpectNear(const Tensor& got, const std::vector<double>& want, double rel, double abs,
                const std::string& what) {
  const std::vector<double> values = got.to_values();
  ASSERT_EQ(values.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i])) {
      ASSERT_TRUE(std::isnan(values[i])) << what << " at " << i;
    } else if (std::isinf(want[i])) {
      ASSERT_EQ(values[i], want[i]) << what << " at " << i;
    } else {
      ASSERT_NEAR(values[i], want[i], rel * std::abs(want[i]) + abs) << what << " at " << i;
    }
  }
}

// The value a bf16 result must hold: the f32 result rounded once more.
double RoundToBf16(double v) { return bf16_bits_to_f32(f32_to_bf16_bits(static_cast<float>(v))); }

// Applies f to each element of x (row-major), in double.
std::vector<double> MapValues(const Tensor& x, const std::function<double(double)>& f) {
  std::vector<double> v = x.to_values();
  for (double& e : v) e = f(e);
  return v;
}

// Element i of a broadcast: walks `shape` and reads `t` at the broadcast index.
std::vector<double> BroadcastValues(const Tensor& t, const Shape& shape) {
  return t.expand(shape).to_values();
}

// ---- element-wise ----------------------------------------------------------------

TEST(Ops, AddAndMulBroadcast) {
  const struct {
    Shape a, b;
  } cases[] = {{{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4}, {4}},    {{2, 1, 4}, {3, 1}},
               {{5}, {}},              {{3, 1}, {1, 7}},    {{1}, {2, 3}},
               {{2, 3, 1}, {2, 3, 5}}, {{0, 3}, {3}},       {{2, 3, 4}, {3, 1}}};
  uint64_t seed = 1;
  for (const auto& c : cases) {
    const Tensor a = Random(c.a, seed++), b = Random(c.b, seed++);
    const Shape shape = broadcast_shapes(c.a, c.b, "test");
    const std::vector<double> va = BroadcastValues(a, shape), vb = BroadcastValues(b, shape);
    std::vector<double> sum(va.size()), product(va.size());
    for (size_t i = 0; i < va.size(); ++i) {
      sum[i] = static_cast<float>(va[i] + vb[i]);  // one f32 rounding, as the kernel
      product[i] = static_cast<float>(va[i] * vb[i]);
    }
    const std::string what = shape_string(c.a) + " and " + shape_string(c.b);
    Tensor s = add(a, b), p = mul(a, b);
    EXPECT_EQ(s.shape(), shape) << what;
    EXPECT_TRUE(s.is_contiguous());
    ExpectNear(s, sum, 0, 0, "add " + what);
    ExpectNear(p, product, 0, 0, "mul " + what);
    ExpectNear(add(b, a), sum, 0, 0, "add (swapped) " + what);
  }
}

TEST(Ops, BinaryOpsOnNonContiguousInputs) {
  const Tensor base = Random({6, 8}, 11);
  const Tensor t = base.transpose(0, 1);         // [8, 6], strides [1, 8]
  const Tensor s = base.slice(1, 0, 8, 2);      // [6, 4], inner stride 2
  const Tensor row = Random({8}, 12).slice(0, 1, 7);  // [6], offset view
  for (const auto& [a, b] : {std::pair{t, Random({8, 6}, 13)}, std::pair{s, s},
                             std::pair{t, row}, std::pair{s.transpose(0, 1), row}}) {
    const Shape shape = broadcast_shapes(a.shape(), b.shape(), "test");
    const std::vector<double> va = BroadcastValues(a, shape), vb = BroadcastValues(b, shape);
    std::vector<double> want(va.size());
    for (size_t i = 0; i < va.size(); ++i) want[i] = static_cast<float>(va[i] + vb[i]);
    ExpectNear(add(a, b), want, 0, 0, "add " + shape_string(shape));
  }
}

TEST(Ops, LargeBinaryAndUnaryOpsSplitAcrossThreads) {
  set_num_threads(2);
  const Tensor a = Random({3, 70001}, 21), b = Random({70001}, 22);
  const std::vector<double> va = a.to_values(), vb = BroadcastValues(b, {3, 70001});
  std::vector<double> want(va.size());
  for (size_t i = 0; i < va.size(); ++i) want[i] = static_cast<float>(va[i] * vb[i]);
  ExpectNear(mul(a, b), want, 0, 0, "mul [3, 70001] by [70001]");
  ExpectNear(mul(a.reshape({210003}), a.reshape({210003})),
             MapValues(a, [](double v) { return static_cast<float>(v * v); }), 0, 0, "mul flat");
  ExpectNear(exp(a), MapValues(a, [](double v) { return std::exp(v); }), 2 * kEps, 0, "exp");
}

TEST(Ops, Bf16AndF16InputsComputeInF32AndKeepTheirDtype) {
  for (DType dtype : {DType::bf16, DType::f16}) {
    const Tensor a = Random({4, 33}, 31, dtype), b = Random({33}, 32, dtype);
    const Tensor s = add(a, b);
    EXPECT_EQ(s.dtype(), dtype);
    const std::vector<double> va = a.to_values(), vb = BroadcastValues(b, {4, 33});
    for (size_t i = 0; i < va.size(); ++i) {
      const float f = static_cast<float>(va[i] + vb[i]);
      const double want = dtype == DType::bf16 ? RoundToBf16(f) : f16_bits_to_f32(f32_to_f16_bits(f));
      ASSERT_EQ(s.to_values()[i], want) << dtype_name(dtype) << " at " << i;
    }
    const Tensor g = gelu(a);
    EXPECT_EQ(g.dtype(), dtype);
    const double rel = dtype == DType::bf16 ? 1.0 / 256 : 1.0 / 2048;  // half an ulp of the dtype
    ExpectNear(g, MapValues(a, [](double v) { return 0.5 * v * std::erfc(-v / std::sqrt(2.0)); }),
               rel, 1e-6, std::string("gelu ") + dtype_name(dtype));
  }
  // Mixed dtypes promote to f32, as in torch.
  const Tensor m = mul(Random({3}, 33, DType::bf16), Random({3}, 34));
  EXPECT_EQ(m.dtype(), DType::f32);
  EXPECT_EQ(add(Random({3}, 35, DType::bf16), Random({3}, 36, DType::f16)).dtype(), DType::f32);
}

TEST(Ops, UnaryMaps) {
  const Tensor x = Random({5, 37}, 41, DType::f32).transpose(0, 1);  // non-contiguous
  ExpectNear(scale(x, 0.125), MapValues(x, [](double v) { return v * 0.125; }), 0, 0, "scale");
  ExpectNear(exp(x), MapValues(x, [](double v) { return std::exp(v); }), 2 * kEps, 0, "exp");
  ExpectNear(silu(x), MapValues(x, [](double v) { return v / (1 + std::exp(-v)); }), 8 * kEps,
             1e-30, "silu");
  ExpectNear(gelu(x, GeluApproximation::none),
             MapValues(x, [](double v) { return 0.5 * v * std::erfc(-v / std::sqrt(2.0)); }),
             40 * kEps, 1e-30, "gelu");
  ExpectNear(gelu(x, GeluApproximation::tanh), MapValues(x, [](double v) {
               return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
             }),
             100 * kEps, 1e-12, "gelu tanh");
  EXPECT_EQ(exp(x).shape(), (Shape{37, 5}));
  // The input is not modified, also when the op computes in place on a copy.
  const Tensor y = Random({4}, 42);
  const std::vector<double> before = y.to_values();
  (void)exp(y);
  (void)exp(y.to(DType::bf16));
  EXPECT_EQ(y.to_values(), before);
  // Scalars and empty tensors.
  EXPECT_DOUBLE_EQ(exp(Tensor::full({}, 1.0)).item(), static_cast<float>(std::exp(1.0)));
  EXPECT_EQ(exp(Tensor::empty({0, 3})).shape(), (Shape{0, 3}));
}

// ---- softmax -------------------------------------------------------------------

// Softmax of x along dim, in double, row-major in x's shape.
std::vector<double> SoftmaxValues(const Tensor& x, int64_t dim, bool log) {
  const Shape& shape = x.shape();
  const std::vector<double> v = x.contiguous().to_values();
  int64_t inner = 1;
  for (size_t d = static_cast<size_t>(dim) + 1; d < shape.size(); ++d) inner *= shape[d];
  const int64_t n = shape[static_cast<size_t>(dim)];
  const int64_t outer = static_cast<int64_t>(v.size()) / (n * inner);
  std::vector<double> out(v.size());
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      const auto at = [&](int64_t k) { return static_cast<size_t>((o * n + k) * inner + i); };
      double max = -kInf, sum = 0;
      for (int64_t k = 0; k < n; ++k) max = std::max(max, v[at(k)]);
      for (int64_t k = 0; k < n; ++k) sum += std::exp(v[at(k)] - max);
      for (int64_t k = 0; k < n; ++k)
        out[at(k)] = log ? v[at(k)] - max - std::log(sum) : std::exp(v[at(k)] - max) / sum;
    }
  }
  return out;
}

TEST(Ops, SoftmaxAlongEveryDim) {
  const Tensor x = Random({3, 4, 5}, 51, DType::f32, 3.0);
  for (int64_t dim : {0, 1, 2, -1, -2, -3}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    const std::string what = "dim " + std::to_string(dim);
    const Tensor s = softmax(x, dim);
    EXPECT_EQ(s.shape(), x.shape());
    EXPECT_TRUE(s.is_contiguous());
    ExpectNear(s, SoftmaxValues(x, d, false), 16 * kEps, 1e-30, "softmax " + what);
    ExpectNear(log_softmax(x, dim), SoftmaxValues(x, d, true), 16 * kEps, 16 * kEps,
               "log_softmax " + what);
    // Each slice along dim sums to one.
    ExpectNear(sum(s, dim), std::vector<double>(static_cast<size_t>(60 / x.size(d)), 1.0), 0,
               8 * kEps, "sum of softmax " + what);
  }
  // Non-contiguous input: the same as its contiguous copy.
  const Tensor t = x.transpose(0, 2);
  EXPECT_EQ(softmax(t, 1).to_values(), softmax(t.contiguous(), 1).to_values());
  // bf16 in, bf16 out.
  const Tensor b = softmax(x.to(DType::bf16), 1);
  EXPECT_EQ(b.dtype(), DType::bf16);
  ExpectNear(b, SoftmaxValues(x.to(DType::bf16), 1, false), 1.0 / 128, 1e-6, "softmax bf16");
}

TEST(Ops, SoftmaxOfMaskedRowsIsZeroNotNaN) {
  const Tensor x = Tensor::from_values({-kInf, -kInf, -kInf, 0.5, -kInf, 1.5}, {2, 3});
  const std::vector<double> e = {0, 0, 0, 1 / (1 + std::exp(1.0)), 0, 1 / (1 + std::exp(-1.0))};
  ExpectNear(softmax(x), e, 4 * kEps, 0, "masked softmax");
  ExpectNear(log_softmax(x), {-kInf, -kInf, -kInf, std::log(e[3]), -kInf, std::log(e[5])},
             4 * kEps, 4 * kEps, "masked log_softmax");
  // Along dim 0 only the middle column [-inf, -inf] is fully masked.
  ExpectNear(softmax(x, 0), {0, 0, 0, 1, 0, 1}, 0, 0, "masked softmax dim 0");
  // A scalar is a row of one.
  EXPECT_EQ(softmax(Tensor::full({}, 3.0)).item(), 1.0);
}

// ---- normalisation ---------------------------------------------------------------

std::vector<double> LayerNormValues(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                                    bool rms) {
  const int64_t n = x.size(-1);
  const std::vector<double> v = x.to_values();
  const std::vector<double> vw = w.defined() ? w.to_values() : std::vector<double>(n, 1.0);
  const std::vector<double> vb = b.defined() ? b.to_values() : std::vector<double>(n, 0.0);
  std::vector<double> out(v.size());
  for (size_t r = 0; r < v.size() / n; ++r) {
    const double* row = v.data() + r * n;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += row[i];
    mean = rms ? 0 : mean / n;
    for (int64_t i = 0; i < n; ++i) var += (row[i] - mean) * (row[i] - mean);
    const double rstd = 1 / std::sqrt(var / n + eps);
    for (int64_t i = 0; i < n; ++i) out[r * n + i] = (row[i] - mean) * rstd * vw[i] + vb[i];
  }
  return out;
}

TEST(Ops, LayerNormAndRmsNorm) {
  const Tensor x = Random({3, 5, 48}, 61, DType::f32, 2.0);
  const Tensor w = Random({48}, 62), b = Random({48}, 63);
  const double tol = kEps * 64;
  ExpectNear(layer_norm(x, w, b), LayerNormValues(x, w, b, 1e-5, false), tol, tol, "layer_norm");
  ExpectNear(layer_norm(x, Tensor(), Tensor(), 0.1), LayerNormValues(x, {}, {}, 0.1, false), tol,
             tol, "layer_norm without affine");
  ExpectNear(layer_norm(x, w, Tensor()), LayerNormValues(x, w, {}, 1e-5, false), tol, tol,
             "layer_norm without bias");
  const double feps = std::numeric_limits<float>::epsilon();
  ExpectNear(rms_norm(x, w), LayerNormValues(x, w, {}, feps, true), tol, tol, "rms_norm");
  ExpectNear(rms_norm(x, Tensor()), LayerNormValues(x, {}, {}, feps, true), tol, tol,
             "rms_norm without weight");
  // Non-contiguous x and weight; bf16 x with f32 weight gives bf16.
  const Tensor xt = Random({48, 6}, 64).transpose(0, 1);
  const Tensor ws = Random({96}, 65).slice(0, 0, 96, 2);
  ExpectNear(layer_norm(xt, ws, b), LayerNormValues(xt, ws, b, 1e-5, false), tol, tol,
             "layer_norm non-contiguous");
  const Tensor xb = x.to(DType::bf16);
  const Tensor yb = layer_norm(xb, w, b);
  EXPECT_EQ(yb.dtype(), DType::bf16);
  ExpectNear(yb, LayerNormValues(xb, w, b, 1e-5, false), 1.0 / 128, 1e-5, "layer_norm bf16");
}

// ---- reductions --------------------------------------------------------------------

TEST(Ops, ReductionsAlongDims) {
  const Tensor x = Random({3, 4, 5}, 71);
  const std::vector<double> v = x.to_values();
  for (int64_t dim : {0, 1, 2, -1}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    Shape out_shape = x.shape(), keep_shape = x.shape();
    out_shape.erase(out_shape.begin() + d);
    keep_shape[static_cast<size_t>(d)] = 1;
    const size_t outputs = static_cast<size_t>(60 / x.size(d));
    std::vector<double> s(outputs, 0.0), m(outputs, -kInf);
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 4; ++j)
        for (int64_t k = 0; k < 5; ++k) {
          const int64_t idx[3] = {i, j, k};
          int64_t o = 0;
          for (int64_t a = 0; a < 3; ++a)
            if (a != d) o = o * x.size(a) + idx[a];
          s[static_cast<size_t>(o)] += v[static_cast<size_t>((i * 4 + j) * 5 + k)];
          m[static_cast<size_t>(o)] =
              std::max(m[static_cast<size_t>(o)], v[static_cast<size_t>((i * 4 + j) * 5 + k)]);
        }
    std::vector<double> mn(s);
    for (double& e : mn) e /= static_cast<double>(x.size(d));
    const std::string what = "dim " + std::to_string(dim);
    EXPECT_EQ(sum(x, dim).shape(), out_shape) << what;
    EXPECT_EQ(sum(x, dim, true).shape(), keep_shape) << what;
    ExpectNear(sum(x, dim), s, 0, 8 * kEps * 5, "sum " + what);
    ExpectNear(mean(x, dim, true), mn, 0, 8 * kEps, "mean " + what);
    ExpectNear(max(x, dim), m, 0, 0, "max " + what);
  }
  // Over every element, also for a strided view.
  const Tensor t = x.transpose(0, 2);
  double total = 0, biggest = -kInf;
  for (double e : v) {
    total += e;
    biggest = std::max(biggest, e);
  }
  EXPECT_NEAR(sum(t).item(), total, 60 * kEps * 60);
  EXPECT_NEAR(mean(t).item(), total / 60, 60 * kEps);
  EXPECT_EQ(max(t).item(), biggest);
  EXPECT_EQ(sum(t).shape(), Shape{});
}

TEST(Ops, ReductionEdgeCases) {
  // NaN propagates through max, along a dim and over everything.
  const Tensor x = Tensor::from_values({1, NAN, 3, 4, 5, 6}, {2, 3});
  EXPECT_TRUE(std::isnan(max(x).item()));
  const std::vector<double> m = max(x, 1).to_values();
  EXPECT_TRUE(std::isnan(m[0]));
  EXPECT_EQ(m[1], 6);
  // Empty dims: sum 0, mean NaN (as torch).
  const Tensor e = Tensor::empty({2, 0});
  EXPECT_EQ(sum(e, 1).to_values(), (std::vector<double>{0, 0}));
  EXPECT_TRUE(std::isnan(mean(e, 1).to_values()[0]));
  EXPECT_EQ(sum(e).item(), 0.0);
  EXPECT_TRUE(std::isnan(mean(e).item()));
  EXPECT_EQ(sum(e, 0).shape(), Shape{0});
  // A 0-d tensor reduces over dim 0 / -1 to itself.
  EXPECT_EQ(sum(Tensor::full({}, 2.5), 0).item(), 2.5);
  // bf16 in, bf16 out.
  const Tensor b = sum(Tensor::ones({4, 300}, DType::bf16), 1);
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_EQ(b.to_values(), (std::vector<double>(4, 300.0)));
}

TEST(Ops, FullReductionsDoNotDependOnTheThreadCount) {
  const Tensor x = Random({5, 100003}, 81);
  set_num_threads(1);
  const double s1 = sum(x).item(), m1 = mean(x).item(), x1 = max(x).item();
  const std::vector<double> rows1 = sum(x, 1).to_values();
  set_num_threads(2);
  EXPECT_EQ(sum(x).item(), s1);
  EXPECT_EQ(mean(x).item(), m1);
  EXPECT_EQ(max(x).item(), x1);
  EXPECT_EQ(sum(x, 1).to_values(), rows1);
  double total = 0, abs_total = 0;
  for (double v : x.to_values()) {
    total += v;
    abs_total += std::abs(v);
  }
  EXPECT_NEAR(s1, total, kEps * abs_total);
}

// ---- validation ------------------------------------------------------------------

// Expects fn to throw qkv::Error whose message contains every one of `parts`.
void ExpectError(const std::function<void()>& fn, std::initializer_list<const char*> parts) {
  try {
    fn();
  } catch (const Error& error) {
    const std::string message = error.what();
    for (const char* part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" does not mention \"" << part << "\"";
    return;
  }
  ADD_FAILURE() << "no qkv::Error thrown; expected one mentioning " << *parts.begin();
}

TEST(Ops, ValidationErrorsNameTheOpArgumentAndValue) {
  const Tensor x = Random({2, 3}, 91);
  const Tensor ints = Tensor::zeros({2, 3}, DType::i64);
  EXPECT_THROW(add(x, Tensor()), Error);
  ExpectError([&] { add(x, Tensor()); }, {"add", "argument b", "undefined"});
  ExpectError([&] { exp(ints); }, {"exp", "argument x", "i64"});
  ExpectError([&] { mul(x, Random({4}, 92)); }, {"mul", "[2, 3]", "[4]"});
  ExpectError([&] { softmax(x, 2); }, {"softmax", "dim 2", "rank 2"});
  ExpectError([&] { log_softmax(x, -3); }, {"log_softmax", "dim -3"});
  ExpectError([&] { softmax(Tensor::full({}, 1.0), 1); }, {"softmax", "dim 1"});
  ExpectError([&] { layer_norm(x, Random({4}, 93), Tensor()); },
              {"layer_norm", "weight", "[4]", "[3]"});
  ExpectError([&] { layer_norm(x, Tensor(), Random({3, 1}, 94)); },
              {"layer_norm", "bias", "[3, 1]"});
  ExpectError([&] { layer_norm(x, Tensor(), Tensor(), -1.0); }, {"layer_norm", "eps", "-1"});
  ExpectError([&] { layer_norm(Tensor::full({}, 1.0), Tensor(), Tensor()); },
              {"layer_norm", "scalar"});
  ExpectError([&] { rms_norm(x, Tensor::ones({3}, DType::i32)); }, {"rms_norm", "weight", "i32"});
  ExpectError([&] { sum(x, -4); }, {"sum", "dim -4"});
  ExpectError([&] { mean(ints, 0); }, {"mean", "i64"});
  ExpectError([&] { max(Tensor::empty({2, 0}), 1); }, {"max", "dim 1", "size 0", "[2, 0]"});
  ExpectError([&] { max(Tensor::empty({0})); }, {"max", "[0]"});
  ExpectError([&] { gelu(ints); }, {"gelu", "i64"});
  ExpectError([&] { scale(Tensor(), 2.0); }, {"scale", "undefined"});
}

}  // namespace
}  // namespace qkv
