// The optimizer kernels of kernels/cpu/optim.h against their scalar twins in
// kernels/ref (the loops optim.cc ran before): on every compiled target this
// CPU supports, for every length 0..160 and misaligned starts. Targets with
// fma (AVX2, AVX-512) must match bit for bit; SSE4, SSSE3, EMU128 and SCALAR round
// the fused steps twice and are held to a few ulp of the operands' size.
// Then the optimizers themselves: 1 and 2 threads give identical bits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "hwy/targets.h"
#include "kernels/cpu/optim.h"
#include "kernels/ref/optim_ref.h"
#include "qkv/optim.h"
#include "qkv/tensor.h"
#include "qkv/threads.h"

namespace qkv::kernels {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();
constexpr double kTiny = 8.0 * std::numeric_limits<float>::min();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr size_t kMaxLength = 160;  // five AVX-512 vectors, twice
constexpr size_t kMaxOffset = 3;

// x86 targets with a native fma: HWY_AVX2 and every better one (lower bit).
bool HasFma(int64_t target) {
  return target <= HWY_AVX2;
}

// Calls body(target, name) with dispatch forced to each compiled target this
// CPU supports, and restores normal dispatch afterwards (also on failure).
void ForEachTarget(const std::function<void(int64_t, const char*)>& body) {
  struct Restore {
    ~Restore() { hwy::SetSupportedTargetsForTest(0); }
  } restore;
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    const char* name = hwy::TargetName(target);
    SCOPED_TRACE(std::string("target ") + name);
    ASSERT_EQ(OptimDispatchedTarget(), target) << "dispatch did not switch to " << name;
    body(target, name);
  }
}

// offset + n floats at a 64-byte aligned address, sized exactly so that
// AddressSanitizer catches any access past the run.
class Floats {
 public:
  Floats(size_t n, size_t offset)
      : base_(static_cast<float*>(
            ::operator new ((n + offset + 1) * sizeof(float), std::align_val_t{64}))),
        n_(n),
        offset_(offset) {}
  Floats(const Floats& other) : Floats(other.n_, other.offset_) {
    std::memcpy(data(), other.data(), n_ * sizeof(float));
  }
  Floats& operator=(const Floats&) = delete;
  ~Floats() { ::operator delete (base_, std::align_val_t{64}); }
  float* data() const { return base_ + offset_; }
  float& operator[](size_t i) const { return base_[offset_ + i]; }
  size_t size() const { return n_; }

 private:
  float* base_;
  size_t n_, offset_;
};

Floats Normal(size_t n, size_t offset, double scale, uint64_t seed) {
  Floats run(n, offset);
  Generator gen(seed);
  for (size_t i = 0; i < n; ++i) run[i] = static_cast<float>(scale * gen.normal());
  return run;
}

// Non-negative, as exp_avg_sq is: squares of normals.
Floats Squares(size_t n, size_t offset, double scale, uint64_t seed) {
  Floats run = Normal(n, offset, 1.0, seed);
  for (size_t i = 0; i < n; ++i) run[i] = static_cast<float>(scale * run[i] * run[i]);
  return run;
}

bool SameBits(float a, float b) {
  return std::memcmp(&a, &b, sizeof(float)) == 0;
}

// Every element of got equals want (bitwise, when exact), or lies within
// tol(i) of it; reports the first mismatch.
::testing::AssertionResult Compare(const std::string& what, const Floats& got, const Floats& want,
                                   bool exact, const std::function<double(size_t)>& tol) {
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = got[i], w = want[i];
    bool ok;
    if (exact) {
      ok = SameBits(g, w);
    } else if (std::isnan(w) || std::isinf(w)) {
      ok = std::isnan(w) ? std::isnan(g) : g == w;
    } else {
      ok = std::abs(double{g} - w) <= tol(i) + kTiny;
    }
    if (!ok)
      return ::testing::AssertionFailure()
             << what << ", n=" << got.size() << ", i=" << i << ": got " << g << ", want " << w
             << (exact ? " (bitwise)" : " (tolerance " + std::to_string(tol(i)) + ")");
  }
  return ::testing::AssertionSuccess();
}

// ---- SGD ---------------------------------------------------------------------------

struct SgdCase {
  const char* name;
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first;
};

SgdStep MakeSgd(const SgdCase& c) {
  SgdStep s;
  s.decay = c.weight_decay != 0.0;
  s.weight_decay = static_cast<float>(c.weight_decay);
  s.momentum = static_cast<float>(c.momentum);
  s.keep = static_cast<float>(1.0 - c.dampening);
  s.neg_lr = static_cast<float>(-c.lr);
  s.nesterov = c.nesterov;
  s.maximize = c.maximize;
  s.first = c.first;
  return s;
}

const SgdCase kSgdCases[] = {
    {"plain", 0.1, 0.0, 0.0, 0.0, false, false, false},
    {"decay maximize", 0.05, 0.0, 0.0, 0.3, false, true, false},
    {"momentum first", 0.1, 0.9, 0.0, 0.01, false, false, true},
    {"momentum dampening", 0.1, 0.9, 0.25, 0.01, false, false, false},
    {"nesterov decay maximize", 0.03, 0.8, 0.0, 0.1, true, true, false},
};

TEST(OptimKernels, SgdMatchesTwinAtEveryLengthAndOffset) {
  ForEachTarget([](int64_t target, const char* name) {
    const bool exact = HasFma(target);
    for (const SgdCase& c : kSgdCases) {
      const SgdStep s = MakeSgd(c);
      const bool momentum = c.momentum != 0.0;
      for (size_t n = 0; n <= kMaxLength; ++n) {
        for (size_t offset = 0; offset <= kMaxOffset; ++offset) {
          const uint64_t seed = 1000 * n + offset;
          const Floats p0 = Normal(n, offset, 1.0, seed), g = Normal(n, offset, 1.0, seed + 1);
          const Floats b0 = Normal(n, offset, 1.0, seed + 2);
          Floats p = p0, b = b0, p_ref = p0, b_ref = b0;
          SgdUpdate(p.data(), g.data(), momentum ? b.data() : nullptr, n, s);
          ref::SgdUpdate(p_ref.data(), g.data(), momentum ? b_ref.data() : nullptr, n, s);
          // Without fma each fused step rounds twice: an error of an ulp of its
          // largest operand, a few times over.
          const auto tol = [&](size_t i) {
            const double d = std::abs(g[i]) + c.weight_decay * std::abs(p0[i]);
            const double buf = std::abs(b0[i]) * c.momentum + d + std::abs(b_ref[i]);
            return 8 * kEps * (std::abs(p0[i]) + c.lr * (d + 2 * buf));
          };
          const std::string what =
              std::string("SGD ") + c.name + " on " + name + ", offset=" + std::to_string(offset);
          ASSERT_TRUE(Compare(what + " param", p, p_ref, exact, tol));
          if (momentum) {
            const auto tol_buf = [&](size_t i) {
              const double d = std::abs(g[i]) + c.weight_decay * std::abs(p0[i]);
              return 8 * kEps * (std::abs(b0[i]) * c.momentum + d);
            };
            ASSERT_TRUE(Compare(what + " momentum_buffer", b, b_ref, exact, tol_buf));
          }
        }
      }
    }
  });
}

// ---- Adam / AdamW ---------------------------------------------------------------------

struct AdamCase {
  const char* name;
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
  bool decoupled, amsgrad, maximize;
};

// The scalars as Adam::update computes them.
AdamStep MakeAdam(const AdamCase& c) {
  const double step = static_cast<double>(c.step);
  const double bias_correction1 = 1.0 - std::pow(c.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(c.beta2, step);
  AdamStep s;
  s.decay = c.weight_decay != 0.0;
  s.decoupled = c.decoupled;
  s.maximize = c.maximize;
  s.weight_decay = static_cast<float>(c.weight_decay);
  s.shrink = static_cast<float>(1.0 - c.lr * c.weight_decay);
  s.w1 = static_cast<float>(1.0 - c.beta1);
  s.beta2 = static_cast<float>(c.beta2);
  s.w2 = static_cast<float>(1.0 - c.beta2);
  s.bc2_sqrt = static_cast<float>(std::pow(bias_correction2, 0.5));
  s.eps = static_cast<float>(c.eps);
  s.neg_step_size = static_cast<float>(-c.lr / bias_correction1);
  return s;
}

const AdamCase kAdamCases[] = {
    {"Adam", 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, false, false, false},
    {"Adam L2 maximize amsgrad", 1e-2, 0.9, 0.99, 1e-8, 0.1, 7, false, true, true},
    {"AdamW", 1e-3, 0.9, 0.999, 1e-8, 0.01, 3, true, false, false},
    {"AdamW amsgrad maximize", 3e-3, 0.8, 0.95, 1e-6, 0.05, 12, true, true, true},
    {"Adam beta1 0.3 (lerp's other branch)", 1e-2, 0.3, 0.9, 1e-8, 0.0, 2, false, false, false},
    {"AdamW eps 0", 1e-3, 0.9, 0.999, 0.0, 0.01, 5, true, true, false},
};

TEST(OptimKernels, AdamMatchesTwinAtEveryLengthAndOffset) {
  ForEachTarget([](int64_t target, const char* name) {
    const bool exact = HasFma(target);
    for (const AdamCase& c : kAdamCases) {
      const AdamStep s = MakeAdam(c);
      for (size_t n = 0; n <= kMaxLength; ++n) {
        for (size_t offset = 0; offset <= kMaxOffset; ++offset) {
          const uint64_t seed = 7000 * n + offset;
          const Floats p0 = Normal(n, offset, 1.0, seed), g = Normal(n, offset, 1.0, seed + 1);
          const Floats m0 = Normal(n, offset, 0.1, seed + 2);
          const Floats v0 = Squares(n, offset, 0.01, seed + 3);
          const Floats vmax0 = Squares(n, offset, 0.01, seed + 4);
          Floats p = p0, m = m0, v = v0, vmax = vmax0;
          Floats p_ref = p0, m_ref = m0, v_ref = v0, vmax_ref = vmax0;
          AdamUpdate(p.data(), g.data(), m.data(), v.data(), c.amsgrad ? vmax.data() : nullptr, n,
                     s);
          ref::AdamUpdate(p_ref.data(), g.data(), m_ref.data(), v_ref.data(),
                          c.amsgrad ? vmax_ref.data() : nullptr, n, s);
          // Bounds for double rounding of the fused steps: d, m and v carry a
          // few ulp of their operands; the update m / denom carries that of m
          // over denom (sqrt halves v's).
          const auto d_size = [&](size_t i) {
            return std::abs(g[i]) + (c.decoupled ? 0.0 : c.weight_decay * std::abs(p0[i]));
          };
          const auto tol_m = [&](size_t i) {
            return 8 * kEps * (std::abs(m0[i]) + d_size(i) + std::abs(m_ref[i]));
          };
          const auto tol_v = [&](size_t i) {
            return 8 * kEps * (std::abs(v0[i]) + d_size(i) * d_size(i) + std::abs(v_ref[i]));
          };
          const auto tol_p = [&](size_t i) {
            const double second = c.amsgrad ? vmax_ref[i] : v_ref[i];
            const double denom = std::sqrt(second) / s.bc2_sqrt + s.eps;
            const double step = std::abs(s.neg_step_size) / denom;
            return 16 * kEps *
                   (std::abs(p0[i]) + step * (tol_m(i) / (8 * kEps)) + step * std::abs(m_ref[i]));
          };
          const std::string what =
              std::string(c.name) + " on " + name + ", offset=" + std::to_string(offset);
          ASSERT_TRUE(Compare(what + " param", p, p_ref, exact, tol_p));
          ASSERT_TRUE(Compare(what + " exp_avg", m, m_ref, exact, tol_m));
          ASSERT_TRUE(Compare(what + " exp_avg_sq", v, v_ref, exact, tol_v));
          if (c.amsgrad) {
            const auto tol_vmax = [&](size_t i) {
              return tol_v(i) + 8 * kEps * std::abs(vmax_ref[i]);
            };
            ASSERT_TRUE(Compare(what + " max_exp_avg_sq", vmax, vmax_ref, exact, tol_vmax));
          }
        }
      }
    }
  });
}

// torch.maximum's NaN and std::max's signed zeros, on every target exactly:
// none of it depends on fma.
TEST(OptimKernels, AmsgradMaximumKeepsNaNAndSignedZeros) {
  ForEachTarget([](int64_t, const char* name) {
    AdamCase c{"amsgrad", 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, false, true, false};
    const AdamStep s = MakeAdam(c);
    for (size_t n = 1; n <= 40; ++n) {
      Floats p(n, 1), g(n, 1), m(n, 1), v(n, 1), vmax(n, 1);
      for (size_t i = 0; i < n; ++i) {
        p[i] = 1.0f;
        g[i] = 0.0f;
        m[i] = 0.0f;
        v[i] = i % 3 == 2 ? kNaN : 0.0f;      // v stays +0 (or NaN)
        vmax[i] = i % 3 == 1 ? kNaN : -0.0f;  // max(-0, +0) keeps -0, as std::max
      }
      Floats p_ref = p, m_ref = m, v_ref = v, vmax_ref = vmax;
      AdamUpdate(p.data(), g.data(), m.data(), v.data(), vmax.data(), n, s);
      ref::AdamUpdate(p_ref.data(), g.data(), m_ref.data(), v_ref.data(), vmax_ref.data(), n, s);
      for (size_t i = 0; i < n; ++i) {
        SCOPED_TRACE(std::string(name) + ", n=" + std::to_string(n) + ", i=" + std::to_string(i));
        if (i % 3 == 0) {
          EXPECT_TRUE(std::signbit(vmax[i]) && vmax[i] == 0.0f) << vmax[i];
        } else {
          EXPECT_TRUE(std::isnan(vmax[i]) && std::isnan(p[i]));
        }
        EXPECT_TRUE(SameBits(vmax[i], vmax_ref[i]) ||
                    (std::isnan(vmax[i]) && std::isnan(vmax_ref[i])));
        EXPECT_TRUE(SameBits(p[i], p_ref[i]) || (std::isnan(p[i]) && std::isnan(p_ref[i])));
      }
    }
  });
}

// ---- the optimizers: thread-count independence --------------------------------------

std::vector<NamedParameter> Parameters(uint64_t seed) {
  // Sizes that split into uneven chunks between threads (grain 2^14).
  const std::vector<Shape> shapes = {{3, 33331}, {70001}, {5}};
  std::vector<NamedParameter> out;
  Generator gen(seed);
  for (size_t k = 0; k < shapes.size(); ++k) {
    Tensor t = Tensor::empty(shapes[k]);
    float* x = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) x[i] = static_cast<float>(gen.normal());
    out.push_back({std::string(1, static_cast<char>('a' + k)), t, Tensor()});
  }
  return out;
}

std::map<std::string, Tensor> Gradients(const std::vector<NamedParameter>& params, uint64_t seed) {
  std::map<std::string, Tensor> out;
  Generator gen(seed);
  for (const NamedParameter& p : params) {
    Tensor t = Tensor::empty(p.value.shape());
    float* x = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) x[i] = static_cast<float>(gen.normal());
    out.emplace(p.name, t);
  }
  return out;
}

// Every parameter and state tensor after 4 steps, as raw bytes.
using Make = std::function<std::unique_ptr<Optimizer>(std::vector<NamedParameter>)>;

std::vector<std::vector<char>> RunFourSteps(const Make& make, int threads) {
  const int saved = num_threads();
  set_num_threads(threads);
  std::unique_ptr<Optimizer> opt = make(Parameters(11));
  for (uint64_t step = 0; step < 4; ++step) opt->step(Gradients(opt->parameters(), 100 + step));
  set_num_threads(saved);
  std::vector<std::vector<char>> out;
  const auto bytes = [&](const Tensor& t) {
    const char* b = reinterpret_cast<const char*>(t.data<float>());
    out.emplace_back(b, b + t.numel() * sizeof(float));
  };
  for (const NamedParameter& p : opt->parameters()) bytes(p.value);
  for (const auto& [key, t] : opt->state_dict())
    if (t.dtype() == DType::f32) bytes(t);
  return out;
}

TEST(OptimKernels, OneAndTwoThreadsGiveIdenticalBits) {
  const std::vector<std::pair<const char*, Make>> makers = {
      {"SGD nesterov",
       [](std::vector<NamedParameter> p) -> std::unique_ptr<Optimizer> {
         return std::make_unique<SGD>(
             std::move(p),
             SgdOptions{.lr = 0.1, .momentum = 0.9, .nesterov = true, .weight_decay = 0.01});
       }},
      {"Adam amsgrad",
       [](std::vector<NamedParameter> p) -> std::unique_ptr<Optimizer> {
         return std::make_unique<Adam>(
             std::move(p), AdamOptions{.lr = 1e-2, .weight_decay = 0.1, .amsgrad = true});
       }},
      {"AdamW",
       [](std::vector<NamedParameter> p) -> std::unique_ptr<Optimizer> {
         return std::make_unique<AdamW>(std::move(p));
       }},
  };
  for (const auto& [name, make] : makers) {
    SCOPED_TRACE(name);
    const auto one = RunFourSteps(make, 1), two = RunFourSteps(make, 2);
    ASSERT_EQ(one.size(), two.size());
    for (size_t k = 0; k < one.size(); ++k) EXPECT_TRUE(one[k] == two[k]) << "tensor " << k;
  }
}

}  // namespace
}  // namespace qkv::kernels
