// The backward ops of qkv/ops.h: the SIMD kernels of kernels/cpu/backward.h
// against their double twins in kernels/ref on every target, length 0..2N and
// misaligned starts; the new forward kernels (Sub, Div, Relu, ...) bit for
// bit; sum_to_shape and dropout by their definitions; errors; and results
// that do not depend on the thread count. (Values against torch autograd:
// tests/python/test_ops_backward.py.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/ref/backward_ref.h"
#include "kernels/ref/elementwise_ref.h"
#include "qkv/ops.h"
#include "qkv/threads.h"

namespace qkv {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();
constexpr double kTiny = 8.0 * std::numeric_limits<float>::min();
constexpr size_t kMaxLength = 160;  // 2N for N = five AVX-512 vectors
constexpr size_t kMaxOffset = 3;

void ForEachTarget(const std::function<void(const char*)>& body) {
  struct Restore {
    ~Restore() { hwy::SetSupportedTargetsForTest(0); }
  } restore;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(std::string("target ") + hwy::TargetName(target));
    ASSERT_EQ(kernels::DispatchedTarget(), target);
    body(hwy::TargetName(target));
  }
}

// n normal values (scale, mean) behind `offset` unused floats, so runs start misaligned.
std::vector<float> Normal(size_t n, size_t offset, double scale, uint64_t seed, double mean = 0) {
  Generator gen(seed);
  std::vector<float> v(n + offset, 0.0f);
  for (size_t i = 0; i < n; ++i) v[offset + i] = static_cast<float>(mean + scale * gen.normal());
  return v;
}

::testing::AssertionResult Close(const std::string& what, const float* got, const float* want,
                                 size_t n, const std::function<double(size_t)>& tol) {
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(want[i])   ? std::isnan(got[i])
        : std::isinf(want[i]) ? got[i] == want[i]
                              : std::abs(double{got[i]} - want[i]) <= tol(i))
      continue;
    return ::testing::AssertionFailure() << what << ", n=" << n << ", i=" << i << ": got " << got[i]
                                         << ", want " << want[i] << " (tol " << tol(i) << ")";
  }
  return ::testing::AssertionSuccess();
}

double RowMax(const float* v, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(double{v[i]}));
  return m;
}

// ---- kernels against their twins ---------------------------------------------------

using GradKernel = void (*)(const float*, const float*, float*, size_t);

struct GradCase {
  const char* name;
  GradKernel simd, ref;
  double x_scale;
  // The allowed error at an element, from x, grad and the reference result.
  double (*tolerance)(float x, float g, float want);
};

double Exact(float, float, float) {
  return 0.0;
}
double SiluTol(float, float g, float want) {
  return 16 * kEps * (std::abs(want) + std::abs(g)) + kTiny;
}
// x^2 rounded in f32 feeds exp: relative eps x^2 (as GeluErfTolerance in kernels_test).
double GeluTol(float x, float g, float want) {
  return kEps * (32 + 2.0 * x * x) * (std::abs(want) + std::abs(g)) + kTiny;
}

const GradCase kGradCases[] = {
    {"ReluBackward", kernels::ReluBackward, kernels::ref::ReluBackward, 3.0, Exact},
    {"SiluBackward", kernels::SiluBackward, kernels::ref::SiluBackward, 10.0, SiluTol},
    {"GeluErfBackward", kernels::GeluErfBackward, kernels::ref::GeluErfBackward, 4.0, GeluTol},
    {"GeluTanhBackward", kernels::GeluTanhBackward, kernels::ref::GeluTanhBackward, 4.0, GeluTol},
    {"Sub", kernels::Sub, kernels::ref::Sub, 100.0, Exact},
    {"Div", kernels::Div, kernels::ref::Div, 100.0, Exact},
};

TEST(BackwardKernels, ElementwiseMatchReferenceAtEveryLengthAndOffset) {
  ForEachTarget([](const char*) {
    for (const GradCase& c : kGradCases) {
      for (size_t n = 0; n <= kMaxLength; ++n) {
        for (size_t off = 0; off <= kMaxOffset; ++off) {
          const std::vector<float> g = Normal(n, off, 2.0, n * 5 + off);
          const std::vector<float> x = Normal(n, off, c.x_scale, n * 7 + off + 1000);
          std::vector<float> got(n + off), want(n + off);
          c.simd(g.data() + off, x.data() + off, got.data() + off, n);
          c.ref(g.data() + off, x.data() + off, want.data() + off, n);
          ASSERT_TRUE(Close(c.name, got.data() + off, want.data() + off, n, [&](size_t i) {
            return c.tolerance(x[off + i], g[off + i], want[off + i]);
          }));
        }
      }
    }
  });
}

TEST(BackwardKernels, ElementwiseSpecialValues) {
  const float kInf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {0.0f,   -0.0f,  1e-30f,        -1e-30f, 5.0f,   -5.0f, 19.0f,
                                -19.0f, 21.0f,  -21.f,         88.0f,   -104.f, 1e30f, -1e30f,
                                3e38f,  -3e38f, std::nanf(""), 0.5f,    -0.75f, -1.28f};
  const std::vector<float> g(x.size(), 1.5f);
  ForEachTarget([&](const char*) {
    for (const GradCase& c : kGradCases) {
      if (c.name == std::string("Sub")) break;  // the derivatives only
      std::vector<float> got(x.size()), want(x.size());
      c.simd(g.data(), x.data(), got.data(), x.size());
      c.ref(g.data(), x.data(), want.data(), x.size());
      for (float v : got) EXPECT_FALSE(std::isinf(v)) << c.name;
      ASSERT_TRUE(Close(c.name, got.data(), want.data(), x.size(), [&](size_t i) {
        return c.tolerance(std::min(std::abs(x[i]), 20.0f), g[i], want[i]);
      }));
    }
    // The limits of each derivative far out on both sides.
    const float far[] = {-kInf, -1e30f, 1e30f, kInf};
    const float ones[] = {1, 1, 1, 1};
    float out[4];
    kernels::GeluTanhBackward(ones, far + 1, out, 2);
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_EQ(out[1], 1.0f);
    kernels::GeluErfBackward(ones, far + 1, out, 2);
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_EQ(out[1], 1.0f);
    kernels::SiluBackward(ones, far + 1, out, 2);
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_EQ(out[1], 1.0f);
  });
}

// The scalar-broadcast forms of sub and div are exactly rounded too.
TEST(BackwardKernels, ScalarBinaryKernelsAreExact) {
  ForEachTarget([](const char*) {
    for (size_t n = 0; n <= kMaxLength; n += 7) {
      const std::vector<float> x = Normal(n, 1, 50.0, n);
      std::vector<float> got(n + 1), want(n + 1);
      using Scalar = void (*)(const float*, float, float*, size_t);
      const std::pair<Scalar, Scalar> cases[] = {{kernels::DivScalar, kernels::ref::DivScalar},
                                                 {kernels::ScalarMinus, kernels::ref::ScalarMinus},
                                                 {kernels::ScalarOver, kernels::ref::ScalarOver}};
      for (auto [simd, ref] : cases) {
        simd(x.data() + 1, -3.7f, got.data() + 1, n);
        ref(x.data() + 1, -3.7f, want.data() + 1, n);
        ASSERT_TRUE(
            Close("scalar op", got.data() + 1, want.data() + 1, n, [](size_t) { return 0.0; }));
      }
      kernels::Relu(x.data() + 1, got.data() + 1, n);
      kernels::ref::Relu(x.data() + 1, want.data() + 1, n);
      ASSERT_TRUE(Close("Relu", got.data() + 1, want.data() + 1, n, [](size_t) { return 0.0; }));
    }
    const float nan_in[] = {std::nanf(""), -2.0f, 3.0f};
    float out[3];
    kernels::Relu(nan_in, out, 3);
    EXPECT_TRUE(std::isnan(out[0]));
    EXPECT_EQ(out[1], 0.0f);
    EXPECT_EQ(out[2], 3.0f);
  });
}

TEST(BackwardKernels, SoftmaxRowsMatchReference) {
  ForEachTarget([](const char*) {
    for (size_t n = 0; n <= kMaxLength; ++n) {
      for (size_t off = 0; off <= kMaxOffset; off += 3) {
        const std::vector<float> g = Normal(n, off, 2.0, n + 11 * off);
        std::vector<float> logits = Normal(n, off, 3.0, n + 13 * off + 500);
        std::vector<float> y(n + off), ly(n + off), got(n + off), want(n + off);
        kernels::ref::Softmax(logits.data() + off, y.data() + off, n);
        kernels::ref::LogSoftmax(logits.data() + off, ly.data() + off, n);
        double sum_gy = 0, sum_g = 0;
        for (size_t i = 0; i < n; ++i) {
          sum_gy += std::abs(double{g[off + i]} * y[off + i]);
          sum_g += std::abs(g[off + i]);
        }
        const double k = kEps * (4.0 + static_cast<double>(n) / 4);
        kernels::SoftmaxBackward(g.data() + off, y.data() + off, got.data() + off, n);
        kernels::ref::SoftmaxBackward(g.data() + off, y.data() + off, want.data() + off, n);
        ASSERT_TRUE(Close("SoftmaxBackward", got.data() + off, want.data() + off, n, [&](size_t i) {
          return k * y[off + i] * (std::abs(g[off + i]) + sum_gy) + kTiny;
        }));
        kernels::LogSoftmaxBackward(g.data() + off, ly.data() + off, got.data() + off, n);
        kernels::ref::LogSoftmaxBackward(g.data() + off, ly.data() + off, want.data() + off, n);
        ASSERT_TRUE(Close(
            "LogSoftmaxBackward", got.data() + off, want.data() + off, n,
            [&](size_t i) { return k * (std::abs(g[off + i]) + y[off + i] * sum_g) + kTiny; }));
      }
    }
  });
}

TEST(BackwardKernels, NormRowsMatchReference) {
  ForEachTarget([](const char*) {
    for (size_t n = 1; n <= kMaxLength; ++n) {
      for (bool affine : {false, true}) {
        const size_t off = n % 4;
        const std::vector<float> g = Normal(n, off, 1.0, n * 3);
        // |mean| >> std: the shifted one-pass moments must hold up.
        const std::vector<float> x = Normal(n, off, 0.5, n * 3 + 1, 300.0);
        const std::vector<float> w = Normal(n, off, 1.0, n * 3 + 2, 1.0);
        const float* pw = affine ? w.data() + off : nullptr;
        std::vector<float> dx(n + off), dx_ref(n + off);
        std::vector<float> dw(n + off, 0.25f), dw_ref(n + off, 0.25f);
        std::vector<float> db(n + off, -0.5f), db_ref(n + off, -0.5f);
        kernels::LayerNormBackward(g.data() + off, x.data() + off, pw, 1e-5, dx.data() + off,
                                   dw.data() + off, db.data() + off, n);
        kernels::ref::LayerNormBackward(g.data() + off, x.data() + off, pw, 1e-5,
                                        dx_ref.data() + off, dw_ref.data() + off,
                                        db_ref.data() + off, n);
        // Relative to the row's largest result or its largest term grad * weight / std
        // (the terms of dx cancel where a row is nearly constant, or for n == 1).
        const auto row_tol = [&](const std::vector<float>& v, double inv_std = 0) {
          double terms = 0;
          for (size_t i = 0; i < n; ++i)
            terms = std::max(terms, std::abs(g[off + i] * (pw ? pw[i] : 1.0)) * inv_std);
          const double t = 64 * kEps * std::max(RowMax(v.data() + off, n), terms) + kTiny;
          return [t](size_t) { return t; };
        };
        double mean = 0, var = 0, ms = 0;
        for (size_t i = 0; i < n; ++i) mean += x[off + i] / static_cast<double>(n);
        for (size_t i = 0; i < n; ++i) {
          var += (x[off + i] - mean) * (x[off + i] - mean) / static_cast<double>(n);
          ms += double{x[off + i]} * x[off + i] / static_cast<double>(n);
        }
        const double rstd = 1 / std::sqrt(var + 1e-5), rrms = 1 / std::sqrt(ms + 1e-6);
        ASSERT_TRUE(Close("LayerNormBackward dx", dx.data() + off, dx_ref.data() + off, n,
                          row_tol(dx_ref, rstd)));
        ASSERT_TRUE(Close("LayerNormBackward dw", dw.data() + off, dw_ref.data() + off, n,
                          row_tol(dw_ref)));
        ASSERT_TRUE(Close("LayerNormBackward db", db.data() + off, db_ref.data() + off, n,
                          [](size_t) { return 0.0; }));
        kernels::RmsNormBackward(g.data() + off, x.data() + off, pw, 1e-6, dx.data() + off,
                                 dw.data() + off, n);
        kernels::ref::RmsNormBackward(g.data() + off, x.data() + off, pw, 1e-6, dx_ref.data() + off,
                                      dw_ref.data() + off, n);
        ASSERT_TRUE(Close("RmsNormBackward dx", dx.data() + off, dx_ref.data() + off, n,
                          row_tol(dx_ref, rrms)));
        ASSERT_TRUE(
            Close("RmsNormBackward dw", dw.data() + off, dw_ref.data() + off, n, row_tol(dw_ref)));
      }
    }
  });
}

// ---- ops ---------------------------------------------------------------------------

bool BitwiseEqual(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// fn() run with 1 and with 2 threads gives the same bits.
template <class Fn>
void ExpectThreadIndependent(Fn fn) {
  const int before = num_threads();
  set_num_threads(1);
  const auto one = fn();
  set_num_threads(2);
  const auto two = fn();
  set_num_threads(before);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i)
    EXPECT_TRUE(BitwiseEqual(one[i], two[i])) << "result " << i;
}

TEST(BackwardOps, LayerNormAndRmsNormBackwardDoNotDependOnThreadCount) {
  Generator gen(1);
  const Tensor x = randn({301, 385}, gen), g = randn({301, 385}, gen);
  const Tensor w = randn({385}, gen), b = randn({385}, gen);
  ExpectThreadIndependent([&] {
    const NormGradients l = layer_norm_backward(g, x, w, b);
    const NormGradients r = rms_norm_backward(g, x, w);
    return std::vector<Tensor>{l.input, l.weight, l.bias, r.input, r.weight};
  });
  const NormGradients l = layer_norm_backward(g, x, w, b);
  EXPECT_EQ(l.weight.shape(), Shape{385});
  // dbias is the column sum of grad.
  const Tensor col = sum_to_shape(g, {385});
  for (int64_t j = 0; j < 385; ++j) EXPECT_NEAR(l.bias.at({j}), col.at({j}), 1e-4) << j;
  const NormGradients bare = layer_norm_backward(g, x, Tensor(), Tensor());
  EXPECT_FALSE(bare.weight.defined());
  EXPECT_FALSE(bare.bias.defined());
}

TEST(BackwardOps, DropoutIsDeterministicAndThreadIndependent) {
  Generator data(2);
  const Tensor x = randn({257, 1031}, data);
  ExpectThreadIndependent([&] {
    Generator gen(42);
    const DropoutResult r = dropout(x, 0.3, gen);
    return std::vector<Tensor>{r.output, r.mask, dropout_backward(r.output, r.mask, 0.3)};
  });
  Generator gen(42);
  const DropoutResult r = dropout(x, 0.3, gen);
  ASSERT_EQ(r.mask.dtype(), DType::boolean);
  const float* px = x.data<float>();
  const float* po = r.output.data<float>();
  const bool* pm = r.mask.data<bool>();
  const float scale = static_cast<float>(1.0 / 0.7);
  int64_t kept = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    kept += pm[i];
    ASSERT_EQ(po[i], pm[i] ? px[i] * scale : 0.0f) << i;
  }
  const double n = static_cast<double>(x.numel()), rate = static_cast<double>(kept) / n;
  EXPECT_NEAR(rate, 0.7, 4 * std::sqrt(0.7 * 0.3 / n));
  // The next call draws a fresh mask; p == 0 is the identity without a mask.
  EXPECT_FALSE(BitwiseEqual(dropout(x, 0.3, gen).mask, r.mask));
  const DropoutResult none = dropout(x, 0.0, gen);
  EXPECT_EQ(none.output.storage(), x.storage());
  EXPECT_FALSE(none.mask.defined());
  EXPECT_THROW(dropout(x, 1.0, gen), Error);
  EXPECT_THROW(dropout(x, -0.1, gen), Error);
  EXPECT_THROW(dropout_backward(x, Tensor(), 0.5), Error);
}

TEST(BackwardOps, SumToShapeSumsTheBroadcastDims) {
  Generator gen(3);
  const Tensor g = randn({4, 3, 5}, gen);
  const std::vector<double> v = g.to_values();
  const auto at = [&](int64_t i, int64_t j, int64_t k) { return v[(i * 3 + j) * 5 + k]; };
  const Tensor cols = sum_to_shape(g, {5});
  const Tensor mid = sum_to_shape(g, {3, 1});
  const Tensor outer = sum_to_shape(g, {4, 1, 5});
  const Tensor all = sum_to_shape(g, {});
  double total = 0;
  for (int64_t k = 0; k < 5; ++k) {
    double s = 0;
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 3; ++j) s += at(i, j, k);
    EXPECT_FLOAT_EQ(cols.at({k}), s);
    total += s;
  }
  for (int64_t j = 0; j < 3; ++j) {
    double s = 0;
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t k = 0; k < 5; ++k) s += at(i, j, k);
    EXPECT_FLOAT_EQ(mid.at({j, 0}), s);
  }
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t k = 0; k < 5; ++k) {
      double s = 0;
      for (int64_t j = 0; j < 3; ++j) s += at(i, j, k);
      EXPECT_FLOAT_EQ(outer.at({i, 0, k}), s);
    }
  EXPECT_EQ(all.shape(), Shape{});
  EXPECT_NEAR(all.item(), total, 1e-4);
  EXPECT_TRUE(BitwiseEqual(sum_to_shape(g, {4, 3, 5}), g));
  EXPECT_THROW(sum_to_shape(g, {2, 5}), Error);
  EXPECT_THROW(sum_to_shape(g, {1, 4, 3, 5}), Error);
  const Tensor big = randn({1000, 600}, gen);
  ExpectThreadIndependent([&] {
    return std::vector<Tensor>{sum_to_shape(big, {600}), sum_to_shape(big, {1000, 1})};
  });
}

TEST(BackwardOps, ErrorsNameTheOpAndTheShapes) {
  const Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({3, 2});
  try {
    softmax_backward(a, b);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("softmax_backward"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(layer_norm_backward(a, a, Tensor::zeros({2}), Tensor()), Error);
  EXPECT_THROW(gelu_backward(a, Tensor::zeros({2, 3}, DType::i32)), Error);
  EXPECT_THROW(relu_backward(a, Tensor()), Error);
}

}  // namespace
}  // namespace qkv
