// Positional encodings: ALiBi slopes, sinusoidal tables, rotary embeddings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "qkv/qkv.h"

namespace qkv {
namespace {

TEST(Positions, AlibiSlopes) {
  // Powers of two: 2^(-8 i / n).
  const auto eight = alibi_slopes(8);
  ASSERT_EQ(eight.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(eight[i], std::pow(2.0f, -(i + 1.0f)));
  // Six heads: the four of n = 4, then every other slope of n = 8.
  const auto six = alibi_slopes(6);
  const float want[] = {0.25f, 0.0625f, 0.015625f, 0.00390625f, 0.5f, 0.125f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(six[i], want[i]);
  EXPECT_THROW(alibi_slopes(0), Error);
}

TEST(Positions, Sinusoidal) {
  const Tensor pe = sinusoidal_positions(10, 6);
  EXPECT_EQ(pe.shape(), (Shape{10, 6}));
  EXPECT_NEAR(pe.at({3, 0}), std::sin(3.0), 1e-6);
  EXPECT_NEAR(pe.at({3, 1}), std::cos(3.0), 1e-6);
  EXPECT_NEAR(pe.at({7, 4}), std::sin(7.0 / std::pow(10000.0, 4.0 / 6)), 1e-6);
}

TEST(Positions, RotaryBackwardInvertsForward) {
  Generator gen(3);
  for (const auto style : {RotaryStyle::rotate_half, RotaryStyle::interleaved}) {
    const Tensor x = randn({2, 3, 17, 32}, gen);
    const RotaryOptions o{.offset = 9, .style = style};
    const Tensor y = rotary_embedding(x, o);
    const auto back = rotary_embedding_backward(y, o).to_values(), orig = x.to_values();
    for (size_t i = 0; i < orig.size(); ++i) ASSERT_NEAR(back[i], orig[i], 1e-5);
    // Position 0 without offset is not rotated.
    const Tensor z = rotary_embedding(x, {.style = style});
    for (int64_t c = 0; c < 32; ++c) ASSERT_FLOAT_EQ(z.at({0, 0, 0, c}), x.at({0, 0, 0, c}));
  }
  EXPECT_THROW(rotary_embedding(Tensor::zeros({1, 1, 4, 8}), {.rotary_dim = 3}), Error);
}

// The fused backward gathers T5's table gradient block by block, across
// threads; the oracle row by row in double. Both must agree, on odd sizes with
// several row tiles and key blocks, causal and not.
TEST(Positions, T5BiasGradientFusedEqualsOracle) {
  Generator gen(11);
  for (const bool causal : {false, true}) {
    const int64_t b = 2, h = 3, l = 257, d = 16;  // two row tiles, three key blocks
    const Tensor q = randn({b, h, l, d}, gen), k = randn({b, h, l, d}, gen),
                 v = randn({b, h, l, d}, gen);
    const Tensor table = randn({32, h}, gen);
    const Tensor go = randn({b, h, l, d}, gen);
    AttentionOptions o{.causal = causal ? Causal::top_left : Causal::none, .return_lse = true};
    o.score_mod = t5_bias_score(table, {.bidirectional = !causal});
    const AttentionResult fwd = attention(q, k, v, o);
    const AttentionResult ref = attention_reference(q, k, v, o);
    const auto out = fwd.output.to_values(), want = ref.output.to_values();
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(out[i], want[i], 2e-5) << i;
    const AttentionGradients r = attention_backward_reference(go, q, k, v, o);
    const auto exact = r.grad_score_mod.at(0).to_values();
    double scale = 0;
    for (double x : exact) scale = std::max(scale, std::fabs(x));
    for (const int threads : {1, 2}) {
      set_num_threads(threads);
      const AttentionGradients g = attention_backward(go, q, k, v, fwd, o);
      ASSERT_EQ(g.grad_score_mod.size(), 1u);
      ASSERT_EQ(g.grad_score_mod[0].shape(), (Shape{32, h}));
      const auto got = g.grad_score_mod[0].to_values();
      for (size_t i = 0; i < exact.size(); ++i) ASSERT_NEAR(got[i], exact[i], 1e-5 * scale) << i;
    }
  }
}

TEST(Positions, T5BucketsAndErrors) {
  // Bidirectional, 32 buckets: exact below 8 on each side, the sign in the top half.
  EXPECT_EQ(t5_relative_bucket(0), 0);
  EXPECT_EQ(t5_relative_bucket(-7), 7);
  EXPECT_EQ(t5_relative_bucket(7), 23);
  EXPECT_EQ(t5_relative_bucket(-1000), 15);
  EXPECT_EQ(t5_relative_bucket(1000), 31);
  // Causal: later keys share bucket 0.
  EXPECT_EQ(t5_relative_bucket(5, {.bidirectional = false}), 0);
  EXPECT_THROW(t5_bias_score(Tensor::zeros({32, 2}), {.num_buckets = 3}), Error);
  EXPECT_THROW(t5_bias_score(Tensor::zeros({31, 2})), Error);
}

}  // namespace
}  // namespace qkv
