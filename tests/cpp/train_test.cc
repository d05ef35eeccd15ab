// Losses, optimizers, schedules and clipping (qkv/losses.h, qkv/optim.h)
// against plain double loops and hand-computed steps, and their errors. The
// comparisons with torch itself are in tests/python/test_losses.py and
// test_optim.py.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "qkv/losses.h"
#include "qkv/optim.h"
#include "qkv/tensor.h"

namespace qkv {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();

Tensor Random(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Generator gen(seed);
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  for (double& v : values) v = scale * gen.normal();
  return Tensor::from_values(values, shape, DType::f32);
}

template <class Fn>
void ExpectThrowsWith(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    FAIL() << "expected qkv::Error";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  }
}

// cross-entropy of logits [N, C, D] with targets [N, D] in double: per-element
// losses and d loss / d logits for an upstream gradient of 1 per element.
struct CeReference {
  std::vector<double> loss, grad;
  int64_t counted = 0;
};

CeReference CrossEntropyDouble(const Tensor& logits, const std::vector<int64_t>& targets,
                               int64_t ignore, double eps) {
  const int64_t n = logits.size(0), c = logits.size(1), d = logits.size(2);
  const std::vector<double> x = logits.to_values();
  CeReference r;
  r.loss.assign(static_cast<size_t>(n * d), 0.0);
  r.grad.assign(x.size(), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < d; ++j) {
      const int64_t t = targets[static_cast<size_t>(i * d + j)];
      if (t == ignore) continue;
      ++r.counted;
      const auto at = [&](int64_t k) { return static_cast<size_t>((i * c + k) * d + j); };
      double mx = -1e300, z = 0.0;
      for (int64_t k = 0; k < c; ++k) mx = std::max(mx, x[at(k)]);
      for (int64_t k = 0; k < c; ++k) z += std::exp(x[at(k)] - mx);
      const double lse = mx + std::log(z);
      double smooth = 0.0;
      for (int64_t k = 0; k < c; ++k) smooth -= x[at(k)] - lse;
      r.loss[static_cast<size_t>(i * d + j)] =
          (1 - eps) * -(x[at(t)] - lse) + eps / static_cast<double>(c) * smooth;
      for (int64_t k = 0; k < c; ++k)
        r.grad[at(k)] =
            std::exp(x[at(k)] - lse) - eps / static_cast<double>(c) - (k == t ? 1 - eps : 0.0);
    }
  }
  return r;
}

TEST(CrossEntropy, MatchesDoubleLoopForEveryReduction) {
  const Tensor logits = Random({4, 7, 3}, 1, 3.0);
  std::vector<int64_t> targets;
  for (int64_t i = 0; i < 12; ++i) targets.push_back(i % 4 == 1 ? -100 : (i * 5) % 7);
  std::vector<double> tv(targets.begin(), targets.end());
  const Tensor t = Tensor::from_values(tv, {4, 3}, DType::i64);
  for (const double eps : {0.0, 0.1}) {
    const CeReference ref = CrossEntropyDouble(logits, targets, -100, eps);
    double total = 0.0;
    for (double l : ref.loss) total += l;
    CrossEntropyOptions o{.label_smoothing = eps, .reduction = Reduction::none};
    const std::vector<double> none = cross_entropy(logits, t, o).to_values();
    ASSERT_EQ(none.size(), ref.loss.size());
    for (size_t i = 0; i < none.size(); ++i)
      EXPECT_NEAR(none[i], ref.loss[i], 4 * kEps * (1 + ref.loss[i])) << i;
    o.reduction = Reduction::sum;
    EXPECT_NEAR(cross_entropy(logits, t, o).item(), total, 4 * kEps * total);
    o.reduction = Reduction::mean;
    const double mean = total / static_cast<double>(ref.counted);
    EXPECT_NEAR(cross_entropy(logits, t, o).item(), mean, 4 * kEps * mean);
    // Backward of the mean with upstream 2: 2 / counted times the per-element gradient.
    const std::vector<double> grad =
        cross_entropy_backward(Tensor::full({}, 2.0), logits, t, o).to_values();
    for (size_t i = 0; i < grad.size(); ++i)
      EXPECT_NEAR(grad[i], 2.0 / static_cast<double>(ref.counted) * ref.grad[i], 4 * kEps) << i;
  }
}

TEST(CrossEntropy, AllIgnoredMeanIsNaNAndGradientZero) {
  const Tensor logits = Random({3, 4}, 2);
  const Tensor t = Tensor::from_values({-1, -1, -1}, {3}, DType::i32);
  const CrossEntropyOptions o{.ignore_index = -1};
  EXPECT_TRUE(std::isnan(cross_entropy(logits, t, o).item()));
  for (double g : cross_entropy_backward(Tensor::full({}, 1.0), logits, t, o).to_values())
    EXPECT_EQ(g, 0.0);
}

TEST(CrossEntropy, Errors) {
  const Tensor logits = Random({2, 5}, 3);
  ExpectThrowsWith(
      [&] {
        cross_entropy(logits, Tensor::from_values({1, 5}, {2}, DType::i64));
      },
      {"target 5", "C = 5"});
  ExpectThrowsWith(
      [&] {
        cross_entropy(logits, Tensor::from_values({1, 2, 3}, {3}, DType::i64));
      },
      {"[3]", "[2, 5]", "[2]"});
  ExpectThrowsWith(
      [&] {
        cross_entropy(logits, Tensor::from_values({1, 2}, {2}, DType::f32));
      },
      {"i64 or i32"});
  ExpectThrowsWith(
      [&] {
        cross_entropy(logits, Tensor::from_values({1, 2}, {2}, DType::i64),
                      {.reduction = Reduction::batchmean});
      },
      {"batchmean"});
  ExpectThrowsWith([&] { mse_loss(Random({2, 3}, 4), Random({3, 2}, 5)); }, {"[2, 3]", "[3, 2]"});
}

TEST(KlDivDistillation, MatchesDoubleLoop) {
  const Tensor s = Random({3, 6}, 6, 2.0), t = Random({3, 6}, 7, 2.0);
  const double temp = 2.5;
  const std::vector<double> sv = s.to_values(), tv = t.to_values();
  double total = 0.0;
  for (int64_t i = 0; i < 3; ++i) {
    double zs = 0.0, zt = 0.0;
    for (int64_t k = 0; k < 6; ++k) {
      zs += std::exp(sv[static_cast<size_t>(i * 6 + k)] / temp);
      zt += std::exp(tv[static_cast<size_t>(i * 6 + k)] / temp);
    }
    for (int64_t k = 0; k < 6; ++k) {
      const double ls = sv[static_cast<size_t>(i * 6 + k)] / temp - std::log(zs);
      const double lt = tv[static_cast<size_t>(i * 6 + k)] / temp - std::log(zt);
      total += std::exp(lt) * (lt - ls);
    }
  }
  const double want = temp * temp * total / 3.0;
  EXPECT_NEAR(kl_div_distillation(s, t, temp).item(), want, 1e-5 * std::abs(want) + 1e-6);
}

// ---- optimizers -------------------------------------------------------------------------

TEST(Adam, TwoStepsMatchHandComputedDouble) {
  const std::vector<double> p0{0.5, -1.25, 2.0}, g1{0.1, -0.3, 0.02}, g2{-0.2, 0.4, 0.5};
  Tensor param = Tensor::from_values(p0, {3});
  const AdamOptions o{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1};
  Adam adam({{"w", param, Tensor()}}, o);
  std::vector<double> p = p0, m(3, 0.0), v(3, 0.0);
  int step = 0;
  for (const auto* g : {&g1, &g2}) {
    adam.step({{"w", Tensor::from_values(*g, {3})}});
    ++step;
    for (size_t i = 0; i < 3; ++i) {
      const double d = (*g)[i] + o.weight_decay * p[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * d;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * d * d;
      const double mhat = m[i] / (1 - std::pow(o.beta1, step));
      const double vhat = v[i] / (1 - std::pow(o.beta2, step));
      p[i] -= o.lr * mhat / (std::sqrt(vhat) + o.eps);
    }
    const std::vector<double> got = param.to_values();
    for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(got[i], p[i], 8 * kEps * std::abs(p[i])) << i;
  }
  const std::map<std::string, Tensor> state = adam.state_dict();
  EXPECT_EQ(state.at("w.step").item(), 2.0);
  EXPECT_EQ(state.size(), 3u);
  EXPECT_NEAR(state.at("w.exp_avg").to_values()[1], m[1], 8 * kEps * std::abs(m[1]));
}

TEST(SGD, MomentumAndSkippedParameters) {
  Tensor a = Tensor::from_values({1.0, 2.0}, {2}), b = Tensor::from_values({3.0}, {1});
  SGD sgd({{"a", a, Tensor()}, {"b", b, Tensor()}}, {.lr = 0.5, .momentum = 0.9});
  sgd.step({{"a", Tensor::from_values({1.0, -1.0}, {2})}});
  sgd.step({{"a", Tensor::from_values({1.0, -1.0}, {2})}});
  // buf = g, then 0.9 g + g: a -= 0.5 * (1 + 1.9) g.
  EXPECT_NEAR(a.to_values()[0], 1.0 - 0.5 * 2.9, 4 * kEps);
  EXPECT_NEAR(a.to_values()[1], 2.0 + 0.5 * 2.9, 4 * kEps);
  EXPECT_EQ(b.item(), 3.0);  // never had a gradient
  EXPECT_EQ(sgd.state_dict().size(), 1u);
}

TEST(Optimizer, Errors) {
  Tensor w = Tensor::zeros({2, 3});
  ExpectThrowsWith([&] { Adam({{"w", w, Tensor()}}, {.beta1 = 1.0}); }, {"beta1", "[0, 1)"});
  ExpectThrowsWith([&] { SGD({{"w", w, Tensor()}}, {.nesterov = true}); }, {"nesterov"});
  ExpectThrowsWith([&] { SGD({{"w", w, Tensor()}, {"w", w, Tensor()}}); }, {"'w'", "twice"});
  ExpectThrowsWith([&] { SGD({{"w", Tensor::zeros({2}, DType::bf16), Tensor()}}); }, {"bf16"});
  Adam adam({{"w", w, Tensor()}});
  ExpectThrowsWith([&] { adam.step({{"v", Tensor::zeros({2, 3})}}); }, {"'v'"});
  ExpectThrowsWith([&] { adam.step({{"w", Tensor::zeros({3, 2})}}); }, {"[3, 2]", "[2, 3]"});
  adam.step({{"w", Random({2, 3}, 9)}});
  std::map<std::string, Tensor> state = adam.state_dict();
  ExpectThrowsWith([&] { adam.load_state_dict({{"x.step", Tensor::zeros({})}}); }, {"'x.step'"});
  ExpectThrowsWith(
      [&] {
        adam.load_state_dict({{"w.momentum_buffer", Tensor::zeros({2, 3})}});
      },
      {"momentum_buffer"});
  state.erase("w.exp_avg");
  ExpectThrowsWith([&] { adam.load_state_dict(state); }, {"w.exp_avg"});
  state["w.exp_avg"] = Tensor::zeros({3});
  ExpectThrowsWith([&] { adam.load_state_dict(state); }, {"[3]", "[2, 3]"});
  EXPECT_EQ(adam.state_dict().at("w.step").item(), 1.0);  // unchanged by the failed loads
}

// ---- schedules and clipping ------------------------------------------------------------

TEST(Schedules, Values) {
  EXPECT_EQ(constant_schedule(7), 1.0);
  // Peak of the Transformer schedule at step = warmup: d^-0.5 * warmup^-0.5.
  EXPECT_NEAR(transformer_schedule(4000, 512, 4000), 1.0 / std::sqrt(512.0 * 4000.0), 1e-15);
  EXPECT_EQ(transformer_schedule(0, 512, 4000), transformer_schedule(1, 512, 4000));
  EXPECT_EQ(cosine_schedule_with_warmup(5, 10, 110), 0.5);
  EXPECT_NEAR(cosine_schedule_with_warmup(60, 10, 110), 0.5, 1e-15);
  EXPECT_NEAR(cosine_schedule_with_warmup(110, 10, 110, 0.1), 0.1, 1e-15);
  EXPECT_EQ(linear_schedule_with_warmup(60, 10, 110), 0.5);
}

TEST(ClipGradNorm, ScalesToMaxNorm) {
  Tensor a = Tensor::from_values({3.0, 0.0}, {2}), b = Tensor::from_values({4.0}, {1});
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-12);
  EXPECT_NEAR(a.to_values()[0], 0.6, 4 * kEps);
  EXPECT_NEAR(b.item(), 0.8, 4 * kEps);
  Tensor c = Tensor::from_values({1.0, std::numeric_limits<double>::infinity()}, {2});
  ExpectThrowsWith([&] { clip_grad_norm({c}, 1.0, 2.0, true); }, {"inf", "error_if_nonfinite"});
  EXPECT_EQ(c.to_values()[0], 1.0);  // untouched on error
}

}  // namespace
}  // namespace qkv
