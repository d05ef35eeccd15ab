// The Highway kernels of kernels/cpu/elementwise.h against their scalar,
// double-accumulating twins in kernels/ref: on every compiled target this CPU
// supports, for every length 0..2N (N a few vector widths) and misaligned
// starts, with tolerances of the form epsilon x magnitude.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/ref/elementwise_ref.h"
#include "qkv/tensor.h"

namespace qkv::kernels {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();
// Absolute slack for results in the subnormal range, where relative bounds mean nothing.
constexpr double kTiny = 8.0 * std::numeric_limits<float>::min();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// 2N for N = 80 floats: five AVX-512 vectors, so every tail and unroll path runs.
constexpr size_t kMaxLength = 160;
constexpr size_t kMaxOffset = 3;

// Calls body(target name) with dispatch forced to each compiled target this
// CPU supports, and restores normal dispatch afterwards (also on failure).
void ForEachTarget(const std::function<void(const char*)>& body) {
  struct Restore {
    ~Restore() { hwy::SetSupportedTargetsForTest(0); }
  } restore;
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    const char* name = hwy::TargetName(target);
    SCOPED_TRACE(std::string("target ") + name);
    ASSERT_EQ(DispatchedTarget(), target) << "dispatch did not switch to " << name;
    body(name);
  }
}

// offset + n floats at a 64-byte aligned address, sized exactly so that
// AddressSanitizer catches any read or write past the run.
class Floats {
 public:
  Floats(size_t n, size_t offset)
      : base_(static_cast<float*>(::operator new((n + offset + 1) * sizeof(float),
                                                 std::align_val_t{64}))),
        n_(n),
        offset_(offset) {}
  Floats(const Floats&) = delete;
  Floats& operator=(const Floats&) = delete;
  ~Floats() { ::operator delete(base_, std::align_val_t{64}); }
  float* data() { return base_ + offset_; }
  float& operator[](size_t i) { return base_[offset_ + i]; }
  size_t size() const { return n_; }

 private:
  float* base_;
  size_t n_, offset_;
};

void FillNormal(Floats& run, double scale, uint64_t seed, double mean = 0.0) {
  Generator gen(seed);
  for (size_t i = 0; i < run.size(); ++i)
    run[i] = static_cast<float>(mean + scale * gen.normal());
}

// got within tol of want; NaN matches only NaN and infinities only themselves.
bool Matches(float got, float want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::abs(static_cast<double>(got) - want) <= tol;
}

// Compares a run element by element; reports the first mismatch with its context.
::testing::AssertionResult RunMatches(const char* target, const std::string& what, const float* x,
                                      const float* got, const float* want, size_t n,
                                      size_t offset, const std::function<double(size_t)>& tol) {
  for (size_t i = 0; i < n; ++i) {
    if (Matches(got[i], want[i], tol(i))) continue;
    return ::testing::AssertionFailure()
           << what << " on " << target << ", n=" << n << ", offset=" << offset << ", i=" << i
           << ": x=" << (x ? x[i] : 0.0f) << " got " << got[i] << ", want " << want[i]
           << " (tolerance " << tol(i) << ")";
  }
  return ::testing::AssertionSuccess();
}

// ---- element-wise maps -------------------------------------------------------

using Unary = void (*)(const float*, float*, size_t);

struct UnaryCase {
  const char* name;
  Unary simd;
  Unary ref;
  double input_scale;
  double (*tolerance)(float x, float want);
};

double ExpTolerance(float, float want) { return 2 * kEps * std::abs(want) + kTiny; }
double SiluTolerance(float, float want) { return 8 * kEps * std::abs(want) + kTiny; }
// The erfc fit is good to about 1 ulp; forming x^2/2 in f32 adds eps * x^2/2
// relative on the negative tail (see ErfcOfAbsXOverSqrt2).
double GeluErfTolerance(float x, float want) {
  const double x2 = double{x} * x;
  return kEps * (8 + 0.5 * (std::isfinite(x2) ? x2 : 0)) * std::abs(want) + kTiny;
}
// -2y is formed with four f32 roundings (and a rounded constant): a relative
// error up to 3 eps, which exp(-2y) turns into 3 eps |2y| relative.
double GeluTanhTolerance(float x, float want) {
  const double y = 0.7978845608 * (x + 0.044715 * double{x} * x * x);
  return kEps * (8 + 6 * (std::isfinite(y) ? std::abs(y) : 0)) * std::abs(want) + kTiny;
}

void ScaleBy3(const float* x, float* out, size_t n) { Scale(x, 3.1f, out, n); }
void RefScaleBy3(const float* x, float* out, size_t n) { ref::Scale(x, 3.1f, out, n); }
void AddMinus2(const float* x, float* out, size_t n) { AddScalar(x, -2.7f, out, n); }
void RefAddMinus2(const float* x, float* out, size_t n) { ref::AddScalar(x, -2.7f, out, n); }
double Exact(float, float) { return 0.0; }

const UnaryCase kUnaryCases[] = {
    {"Exp", Exp, ref::Exp, 30.0, ExpTolerance},
    {"Silu", Silu, ref::Silu, 10.0, SiluTolerance},
    {"GeluErf", GeluErf, ref::GeluErf, 4.0, GeluErfTolerance},
    {"GeluTanh", GeluTanh, ref::GeluTanh, 4.0, GeluTanhTolerance},
    {"Scale", ScaleBy3, RefScaleBy3, 100.0, Exact},
    {"AddScalar", AddMinus2, RefAddMinus2, 100.0, Exact},
};

TEST(Kernels, UnaryMapsMatchReferenceAtEveryLengthAndOffset) {
  ForEachTarget([](const char* target) {
    for (const UnaryCase& c : kUnaryCases) {
      for (size_t n = 0; n <= kMaxLength; ++n) {
        for (size_t offset = 0; offset <= kMaxOffset; ++offset) {
          Floats x(n, offset), got(n, offset), want(n, offset);
          FillNormal(x, c.input_scale, n * 7 + offset);
          c.simd(x.data(), got.data(), n);
          c.ref(x.data(), want.data(), n);
          ASSERT_TRUE(RunMatches(target, c.name, x.data(), got.data(), want.data(), n, offset,
                                 [&](size_t i) { return c.tolerance(x[i], want[i]); }));
          // In place (out == x) gives the same values.
          c.simd(x.data(), x.data(), n);
          ASSERT_TRUE(RunMatches(target, std::string(c.name) + " in place", nullptr, x.data(),
                                 got.data(), n, offset, [](size_t) { return 0.0; }));
        }
      }
    }
  });
}

// Special values at every position of the body and of the tail.
const float kSpecials[] = {0.0f,   -0.0f,  1.0f,    -1.0f,  1e-30f,  -1e-30f, 5.0f,   -5.0f,
                           10.0f,  -10.0f, 20.0f,   -20.0f, 88.7f,   88.8f,   89.0f,  -87.0f,
                           -88.0f, -100.f, -104.0f, -105.f, 1e4f,    -1e4f,   3e38f,  -3e38f,
                           kInf,   -kInf,  kNaN,    1e-45f, -1e-45f, 0.5f,    -0.5f,  2.0f};

TEST(Kernels, UnaryMapsHandleSpecialValues) {
  constexpr size_t n = sizeof(kSpecials) / sizeof(kSpecials[0]);
  ForEachTarget([](const char* target) {
    for (const UnaryCase& c : kUnaryCases) {
      for (size_t shift = 0; shift < n; ++shift) {
        const size_t len = n - shift % 7;  // varies which values land in the tail
        Floats x(len, 1), got(len, 1), want(len, 1);
        for (size_t i = 0; i < len; ++i) x[i] = kSpecials[(i + shift) % n];
        c.simd(x.data(), got.data(), len);
        c.ref(x.data(), want.data(), len);
        ASSERT_TRUE(RunMatches(target, c.name, x.data(), got.data(), want.data(), len, 1,
                               [&](size_t i) { return c.tolerance(x[i], want[i]); }));
      }
    }
  });
}

TEST(Kernels, ExpLimits) {
  ForEachTarget([](const char*) {
    const float x[] = {-kInf, kInf, kNaN, 89.0f, 3e38f, -3e38f, -104.5f, 0.0f, 88.72f};
    float out[9];
    Exp(x, out, 9);
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_EQ(out[1], kInf);
    EXPECT_TRUE(std::isnan(out[2]));
    EXPECT_EQ(out[3], kInf);
    EXPECT_EQ(out[4], kInf);
    EXPECT_EQ(out[5], 0.0f);
    EXPECT_EQ(out[6], 0.0f);
    EXPECT_EQ(out[7], 1.0f);
    EXPECT_TRUE(std::isfinite(out[8]));
    EXPECT_NEAR(out[8], std::exp(double{x[8]}), 2 * kEps * std::exp(double{x[8]}));
  });
}

using Binary = void (*)(const float*, const float*, float*, size_t);

TEST(Kernels, AddAndMulAreExactlyRounded) {
  const struct {
    const char* name;
    Binary simd, ref;
  } cases[] = {{"Add", Add, ref::Add}, {"Mul", Mul, ref::Mul}};
  ForEachTarget([&](const char* target) {
    for (const auto& c : cases) {
      for (size_t n = 0; n <= kMaxLength; ++n) {
        for (size_t offset = 0; offset <= kMaxOffset; ++offset) {
          Floats a(n, offset), b(n, (offset + 1) % 4), got(n, (offset + 2) % 4), want(n, 0);
          FillNormal(a, 1e3, n + 1000 * offset);
          FillNormal(b, 1e-2, n + 1000 * offset + 1);
          if (n > 2) b[n / 2] = kNaN;
          if (n > 3) a[n / 3] = kInf;
          c.simd(a.data(), b.data(), got.data(), n);
          c.ref(a.data(), b.data(), want.data(), n);
          ASSERT_TRUE(RunMatches(target, c.name, a.data(), got.data(), want.data(), n, offset,
                                 [](size_t) { return 0.0; }));
        }
      }
    }
  });
}

// ---- softmax and log-softmax ---------------------------------------------------

double RowMax(const float* x, size_t n) {
  double max = -INFINITY;
  for (size_t i = 0; i < n; ++i) max = std::fmax(max, x[i]);
  return max;
}

// exp(x - max) carries the rounding of x - max (eps |x - max|) and a few ulp;
// the sum adds at most n eps relative.
void CheckSoftmaxRow(const char* target, Floats& x, size_t offset) {
  const size_t n = x.size();
  Floats got(n, offset), want(n, offset);
  Softmax(x.data(), got.data(), n);
  ref::Softmax(x.data(), want.data(), n);
  const double max = RowMax(x.data(), n);
  ASSERT_TRUE(RunMatches(target, "Softmax", x.data(), got.data(), want.data(), n, offset,
                         [&](size_t i) {
                           const double gap = std::isfinite(x[i] - max) ? std::abs(x[i] - max) : 0;
                           return kEps * (8 + gap + n) * want[i] + kTiny;
                         }));
  LogSoftmax(x.data(), got.data(), n);
  ref::LogSoftmax(x.data(), want.data(), n);
  ASSERT_TRUE(RunMatches(target, "LogSoftmax", x.data(), got.data(), want.data(), n, offset,
                         [&](size_t i) {
                           const double gap = std::isfinite(x[i] - max) ? std::abs(x[i] - max) : 0;
                           return kEps * (2 * std::abs(want[i]) + 2 * gap + n + 16);
                         }));
  const float lse = LogSumExp(x.data(), n);
  const float lse_want = ref::LogSumExp(x.data(), n);
  ASSERT_TRUE(Matches(lse, lse_want, kEps * (2 * std::abs(lse_want) + n + 8)))
      << "LogSumExp on " << target << ", n=" << n << ": got " << lse << ", want " << lse_want;
}

TEST(Kernels, SoftmaxMatchesReferenceAtEveryLengthAndOffset) {
  ForEachTarget([](const char* target) {
    for (double scale : {1.0, 30.0}) {
      for (size_t n = 0; n <= kMaxLength; ++n) {
        for (size_t offset = 0; offset <= kMaxOffset; ++offset) {
          Floats x(n, offset);
          FillNormal(x, scale, 31 * n + offset);
          CheckSoftmaxRow(target, x, offset);
        }
      }
    }
  });
}

TEST(Kernels, SoftmaxEdgeCases) {
  ForEachTarget([](const char* target) {
    for (size_t n = 1; n <= 40; ++n) {
      Floats x(n, n % 4), out(n, 0);
      // Huge logits: the max dominates, nothing overflows.
      for (float big : {1e4f, 3e38f}) {
        for (size_t i = 0; i < n; ++i) x[i] = (i % 3 == 0 ? big : -big) + static_cast<float>(i);
        CheckSoftmaxRow(target, x, n % 4);
      }
      // -inf entries (masked keys) get exactly 0.
      for (size_t i = 0; i < n; ++i) x[i] = i % 3 == 1 ? -kInf : 0.1f * static_cast<float>(i);
      CheckSoftmaxRow(target, x, n % 4);
      Softmax(x.data(), out.data(), n);
      for (size_t i = 1; i < n; i += 3) EXPECT_EQ(out[i], 0.0f) << target << " n=" << n;
      // An all -inf row (every key masked): zeros, and -inf log-probabilities; never NaN.
      for (size_t i = 0; i < n; ++i) x[i] = -kInf;
      Softmax(x.data(), out.data(), n);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 0.0f) << target << " n=" << n;
      LogSoftmax(x.data(), out.data(), n);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], -kInf) << target << " n=" << n;
      EXPECT_EQ(LogSumExp(x.data(), n), -kInf);
      // NaN or +inf anywhere makes the whole row NaN, as in PyTorch.
      for (float bad : {kNaN, kInf}) {
        for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i);
        x[(n * 5) / 7] = bad;
        Softmax(x.data(), out.data(), n);
        for (size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isnan(out[i])) << target << " n=" << n;
        LogSoftmax(x.data(), out.data(), n);
        for (size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isnan(out[i])) << target << " n=" << n;
      }
    }
    // One-element rows are exactly 1 / 0.
    const float one = 123.0f;
    float out = -1;
    Softmax(&one, &out, 1);
    EXPECT_EQ(out, 1.0f);
    LogSoftmax(&one, &out, 1);
    EXPECT_EQ(out, 0.0f);
    EXPECT_EQ(LogSumExp(nullptr, 0), -kInf);
  });
}

TEST(Kernels, SoftmaxSumsToOne) {
  ForEachTarget([](const char* target) {
    for (size_t n = 1; n <= kMaxLength; n += 13) {
      Floats x(n, 2), out(n, 1);
      FillNormal(x, 5.0, n);
      Softmax(x.data(), out.data(), n);
      double sum = 0;
      for (size_t i = 0; i < n; ++i) sum += out[i];
      EXPECT_NEAR(sum, 1.0, kEps * (n + 4)) << target << " n=" << n;
    }
  });
}

// ---- normalisation -------------------------------------------------------------

TEST(Kernels, LayerNormMatchesReference) {
  ForEachTarget([](const char* target) {
    // A mean of 1e4 over a std of 1: the naive E[x^2] - E[x]^2 in f32 loses
    // every digit of the variance here; the corrected two-pass keeps them.
    for (double mean : {0.0, 1e4}) {
      for (int affine = 0; affine < 3; ++affine) {
        for (size_t n = 1; n <= kMaxLength; ++n) {
          const size_t offset = n % 4;
          Floats x(n, offset), w(n, (offset + 1) % 4), b(n, (offset + 2) % 4);
          Floats got(n, (offset + 3) % 4), want(n, offset);
          FillNormal(x, 1.0, n, mean);
          FillNormal(w, 1.0, n + 500);
          FillNormal(b, 1.0, n + 900);
          const float* pw = affine >= 1 ? w.data() : nullptr;
          const float* pb = affine == 2 ? b.data() : nullptr;
          LayerNorm(x.data(), pw, pb, 1e-5f, got.data(), n);
          ref::LayerNorm(x.data(), pw, pb, 1e-5f, want.data(), n);
          ASSERT_TRUE(RunMatches(target, "LayerNorm", x.data(), got.data(), want.data(), n,
                                 offset, [&](size_t i) {
                                   const double wi = pw ? std::abs(pw[i]) : 1.0;
                                   const double bi = pb ? pb[i] : 0.0;
                                   return kEps * (8 + n) * (std::abs(want[i] - bi) + wi) +
                                          4 * kEps * std::abs(bi);
                                 }));
        }
      }
    }
    // A constant row has variance 0: the output is the bias, not NaN.
    Floats x(37, 1), b(37, 0), out(37, 2);
    for (size_t i = 0; i < 37; ++i) {
      x[i] = 2.5f;
      b[i] = static_cast<float>(i);
    }
    LayerNorm(x.data(), nullptr, b.data(), 1e-5f, out.data(), 37);
    for (size_t i = 0; i < 37; ++i) ASSERT_EQ(out[i], b[i]) << target;
  });
}

TEST(Kernels, RmsNormMatchesReference) {
  ForEachTarget([](const char* target) {
    for (int affine = 0; affine < 2; ++affine) {
      for (size_t n = 1; n <= kMaxLength; ++n) {
        const size_t offset = (n + 2) % 4;
        Floats x(n, offset), w(n, (offset + 1) % 4), got(n, offset), want(n, 0);
        FillNormal(x, 3.0, n, 1.0);
        FillNormal(w, 1.0, n + 77);
        const float* pw = affine ? w.data() : nullptr;
        const float eps = std::numeric_limits<float>::epsilon();
        RmsNorm(x.data(), pw, eps, got.data(), n);
        ref::RmsNorm(x.data(), pw, eps, want.data(), n);
        ASSERT_TRUE(RunMatches(target, "RmsNorm", x.data(), got.data(), want.data(), n, offset,
                               [&](size_t i) { return kEps * (8 + n) * std::abs(want[i]); }));
      }
    }
  });
}

// ---- reductions ----------------------------------------------------------------

TEST(Kernels, ReductionsMatchReference) {
  ForEachTarget([](const char* target) {
    for (size_t n = 0; n <= kMaxLength; ++n) {
      for (size_t offset = 0; offset <= kMaxOffset; ++offset) {
        Floats x(n, offset);
        FillNormal(x, 10.0, 3 * n + offset, 5.0);
        double abs_sum = 0;
        for (size_t i = 0; i < n; ++i) abs_sum += std::abs(x[i]);
        // Any summation order is within (n - 1) eps sum|x| of the exact sum.
        const float sum = Sum(x.data(), n), sum_want = ref::Sum(x.data(), n);
        EXPECT_NEAR(sum, sum_want, kEps * (n + 1) * abs_sum)
            << "Sum on " << target << ", n=" << n << ", offset=" << offset;
        if (n == 0) {
          EXPECT_EQ(sum, 0.0f);
          EXPECT_TRUE(std::isnan(Mean(x.data(), n))) << target;
          EXPECT_EQ(Max(x.data(), n), -kInf) << target;
          continue;
        }
        const float mean_want = ref::Mean(x.data(), n);
        EXPECT_NEAR(Mean(x.data(), n), mean_want,
                    kEps * ((n + 1) * abs_sum / n + std::abs(mean_want)))
            << "Mean on " << target << ", n=" << n << ", offset=" << offset;
        EXPECT_EQ(Max(x.data(), n), ref::Max(x.data(), n))
            << "Max on " << target << ", n=" << n << ", offset=" << offset;
      }
    }
  });
}

TEST(Kernels, MaxAndSumPropagateNaNAndInfinity) {
  ForEachTarget([](const char* target) {
    for (size_t n = 1; n <= 70; ++n) {
      for (size_t at = 0; at < n; ++at) {
        Floats x(n, at % 4);
        for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i) - 20.0f;
        x[at] = kNaN;
        ASSERT_TRUE(std::isnan(Max(x.data(), n))) << target << " n=" << n << " at=" << at;
        ASSERT_TRUE(std::isnan(Sum(x.data(), n))) << target << " n=" << n << " at=" << at;
        x[at] = kInf;
        ASSERT_EQ(Max(x.data(), n), kInf) << target << " n=" << n << " at=" << at;
        ASSERT_EQ(Sum(x.data(), n), kInf) << target << " n=" << n << " at=" << at;
        x[at] = -kInf;
        ASSERT_EQ(Sum(x.data(), n), -kInf) << target;
        for (size_t i = 0; i < n; ++i) x[i] = -3e38f;
        x[at] = -1e38f;
        ASSERT_EQ(Max(x.data(), n), -1e38f) << target << " n=" << n << " at=" << at;
      }
    }
  });
}

}  // namespace
}  // namespace qkv::kernels
