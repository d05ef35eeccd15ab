// Positional encodings: ALiBi slopes, sinusoidal tables, rotary embeddings.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace qkv
