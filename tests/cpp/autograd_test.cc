// The tape: accumulation, no-grad, detach, graph reuse, shared inputs, and
// every op's backward against central finite differences of its own forward.
#include "qkv/autograd.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

namespace qkv::autograd {
namespace {

Tensor values(std::initializer_list<double> v, const Shape& shape) {
  return Tensor::from_values(v, shape);
}

TEST(Autograd, ChainAndAccumulation) {
  Variable x(values({1, 2, 3}, {3}), true);
  // y = sum(x * x) -> dy/dx = 2x; a second backward adds again.
  for (int round = 1; round <= 2; ++round) {
    Variable y = sum(mul(x, x));
    y.backward();
    for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(x.grad().at({i}), 2.0 * (i + 1) * round);
  }
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, DiamondGraphSumsBothPaths) {
  Variable x(values({0.5, -1.5}, {2}), true);
  Variable a = scale(x, 3.0), b = mul(x, x);
  Variable y = sum(add(a, b));  // dy/dx = 3 + 2x
  y.backward();
  EXPECT_FLOAT_EQ(x.grad().at({0}), 4.0f);
  EXPECT_FLOAT_EQ(x.grad().at({1}), 0.0f);
}

TEST(Autograd, NoGradDetachAndErrors) {
  Variable x(values({1, 2}, {2}), true);
  {
    NoGradGuard guard;
    Variable y = scale(x, 2.0);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_THROW(y.backward(), Error);
  }
  EXPECT_TRUE(grad_enabled());
  Variable d = x.detach();
  EXPECT_FALSE(d.requires_grad());
  Variable y = scale(x, 2.0);
  EXPECT_FALSE(y.is_leaf());
  EXPECT_THROW(y.set_requires_grad(false), Error);
  EXPECT_THROW(y.backward(), Error);  // not a scalar
  Variable s = sum(y);
  s.backward(Tensor(), /*retain_graph=*/true);
  s.backward();  // the graph was kept once
  EXPECT_FLOAT_EQ(x.grad().at({1}), 4.0f);
  EXPECT_THROW(s.backward(), Error);  // freed now
  EXPECT_THROW(Variable(Tensor::zeros({2}, DType::i64), true), Error);
}

TEST(Autograd, RetainGradOnAnIntermediate) {
  Variable x(values({1, 2}, {2}), true);
  Variable h = scale(x, 3.0);
  h.retain_grad();
  sum(mul(h, h)).backward();
  EXPECT_FLOAT_EQ(h.grad().at({1}), 12.0f);  // 2h
  EXPECT_FLOAT_EQ(x.grad().at({1}), 36.0f);  // 2h * 3
}

// d f / d x_i by central differences of f's forward (in f32: smooth
// functions, steps of 1e-2, tolerance relative to the gradient's scale).
void check_gradients(const std::function<Variable(const std::vector<Variable>&)>& f,
                     std::vector<Tensor> inputs, double tolerance = 2e-2) {
  std::vector<Variable> vars;
  for (const Tensor& t : inputs) vars.emplace_back(t.clone(), true);
  f(vars).backward();
  for (size_t n = 0; n < inputs.size(); ++n) {
    const Tensor analytic = vars[n].grad();
    ASSERT_TRUE(analytic.defined()) << "input " << n;
    double scale = 1e-3;
    for (double g : analytic.to_values()) scale = std::max(scale, std::fabs(g));
    Tensor& x = inputs[n];
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float saved = p[i];
      const double h = 1e-2;
      auto eval = [&](double at) {
        p[i] = static_cast<float>(at);
        std::vector<Variable> in;
        for (const Tensor& t : inputs) in.emplace_back(t.clone(), false);
        return f(in).value().item();
      };
      const double numeric = (eval(saved + h) - eval(saved - h)) / (2 * h);
      p[i] = saved;
      EXPECT_NEAR(analytic.to_values()[i], numeric, tolerance * scale)
          << "input " << n << " element " << i;
    }
  }
}

TEST(Autograd, OpsAgainstFiniteDifferences) {
  Generator gen(3);
  const Tensor a = randn({3, 5}, gen), b = randn({5, 4}, gen), row = randn({5}, gen);
  check_gradients([](const auto& v) { return sum(matmul(v[0], v[1])); }, {a, b});
  check_gradients(
      [](const auto& v) { return sum(mul(matmul(v[0], v[1], {.transpose_b = true}), v[2])); },
      {randn({3, 4}, gen), randn({5, 4}, gen), randn({3, 5}, gen)});
  check_gradients(
      [](const auto& v) { return sum(mul(matmul(v[0], v[1], {.transpose_a = true}), v[2])); },
      {randn({2, 4, 3}, gen), randn({4, 5}, gen), randn({2, 3, 5}, gen)});
  check_gradients([](const auto& v) { return mean(linear(v[0], v[1], v[2])); },
                  {randn({2, 3, 5}, gen), randn({4, 5}, gen), randn({4}, gen)});
  check_gradients([](const auto& v) { return sum(mul(add(v[0], v[1]), sub(v[0], v[1]))); },
                  {a, row});
  check_gradients([](const auto& v) { return sum(mul(gelu(v[0]), silu(v[0]))); }, {a});
  check_gradients([](const auto& v) { return sum(mul(softmax(v[0]), v[1])); },
                  {a, randn({3, 5}, gen)});
  check_gradients([](const auto& v) { return sum(mul(log_softmax(v[0], 0), v[1])); },
                  {a, randn({3, 5}, gen)});
  check_gradients([](const auto& v) { return sum(mul(layer_norm(v[0], v[1], v[2]), v[3])); },
                  {a, row, randn({5}, gen), randn({3, 5}, gen)});
  check_gradients([](const auto& v) { return sum(mul(rms_norm(v[0], v[1], 1e-6), v[2])); },
                  {a, row, randn({3, 5}, gen)});
  check_gradients(
      [](const auto& v) {
        return sum(mul(transpose(reshape(v[0], {5, 3}), 0, 1), v[1]));
      },
      {a, randn({3, 5}, gen)});
  check_gradients([](const auto& v) { return sum(mul(mean(v[0], 1, true), v[1])); },
                  {a, randn({3, 1}, gen)});
  // relu away from its kink (inputs shifted off 0 by more than the step).
  check_gradients(
      [](const auto& v) { return sum(mul(relu(v[0]), v[1])); },
      {Tensor::from_values({-1.5, -0.4, 0.3, 2.0, 0.7, -2.2}, {2, 3}), randn({2, 3}, gen)});
  check_gradients([](const auto& v) { return mse_loss(scale(v[0], 1.5), v[1]); },
                  {a, randn({3, 5}, gen)});
  const Tensor teacher = randn({3, 5}, gen);
  check_gradients([&](const auto& v) { return kl_div_distillation(v[0], teacher, 2.0); }, {a});
  check_gradients([](const auto& v) { return sum(mul(narrow(v[0], 1, 1, 3), select(v[1], 0, 2))); },
                  {a, randn({4, 3, 3}, gen)});
  check_gradients([](const auto& v) { return sum(mul(sum(v[0], 0), v[1])); }, {a, row});
  check_gradients([](const auto& v) { return sum(mul(to(v[0], DType::f32), v[0])); }, {a});
  {
    // Dropout with a fixed generator state: the same mask in every evaluation.
    check_gradients(
        [](const auto& v) {
          Generator g(42);
          return sum(mul(dropout(v[0], 0.3, g), v[1]));
        },
        {a, randn({3, 5}, gen)});
  }
  const Tensor targets = Tensor::from_values({1, 0, 4}, {3}, DType::i64);
  check_gradients(
      [&](const auto& v) { return cross_entropy(v[0], targets, {.label_smoothing = 0.1}); }, {a});
  const Tensor ids = Tensor::from_values({2, 0, 2}, {3}, DType::i64);
  check_gradients([&](const auto& v) { return sum(mul(embedding(v[0], ids), v[1])); },
                  {randn({4, 5}, gen), randn({3, 5}, gen)});
  check_gradients(
      [](const auto& v) {
        return sum(mul(attention(v[0], v[1], v[2], {.causal = Causal::top_left}), v[3]));
      },
      {randn({1, 2, 4, 3}, gen), randn({1, 2, 4, 3}, gen), randn({1, 2, 4, 3}, gen),
       randn({1, 2, 4, 3}, gen)});
}

}  // namespace
}  // namespace qkv::autograd
