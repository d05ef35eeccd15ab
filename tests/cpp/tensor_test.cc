// Tensors: dtypes, views without copies, contiguous(), conversion, printing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "qkv/qkv.h"

namespace qkv {
namespace {

Tensor iota(const Shape& shape, DType dtype = DType::f32) {
  return Tensor::arange(shape_numel(shape), dtype).view(shape);
}

TEST(Tensor, FactoriesAndAlignment) {
  for (int i = 0; i < kNumDTypes; ++i) {
    const auto dtype = static_cast<DType>(i);
    Tensor t = Tensor::zeros({3, 5}, dtype);
    EXPECT_EQ(t.numel(), 15);
    EXPECT_EQ(t.nbytes(), 15 * dtype_size(dtype));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % kStorageAlignment, 0u);
    EXPECT_EQ(t.at({2, 4}), 0.0);
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_EQ(t.device(), Device{});
  }
  EXPECT_EQ(Tensor::full({2}, 7.5).at({1}), 7.5);
  EXPECT_EQ(Tensor::empty({0, 4}).numel(), 0);
  EXPECT_EQ(Tensor::zeros({}).numel(), 1);
  EXPECT_THROW(Tensor::empty({-1, 2}), Error);
  EXPECT_FALSE(Tensor().defined());
}

TEST(Storage, LargeBlocksAreReusedAndReleasable) {
  release_cached_storage();
  void* first = nullptr;
  {
    Tensor big = Tensor::empty({3 << 20});  // 12 MiB
    first = big.raw_data();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % kStorageAlignment, 0u);
  }
  EXPECT_GE(cached_storage_bytes(), size_t{12} << 20);
  Tensor again = Tensor::empty({3 << 20});
  EXPECT_EQ(again.raw_data(), first);  // the freed block, not fresh pages
  EXPECT_EQ(cached_storage_bytes(), 0u);
  again = Tensor();
  release_cached_storage();
  EXPECT_EQ(cached_storage_bytes(), 0u);
  Tensor small = Tensor::empty({100});  // small blocks are not cached
  small = Tensor();
  EXPECT_EQ(cached_storage_bytes(), 0u);
}

TEST(Tensor, SliceSelectNarrowShareStorage) {
  Tensor t = iota({4, 6});
  Tensor s = t.slice(1, 1, 6, 2);  // columns 1, 3, 5
  EXPECT_EQ(s.shape(), (Shape{4, 3}));
  EXPECT_EQ(s.storage(), t.storage());
  EXPECT_EQ(s.at({2, 1}), 15.0);
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(t.slice(0, -2, 100).shape(), (Shape{2, 6}));  // Python-style clamping
  EXPECT_EQ(t.slice(0, 3, 1).numel(), 0);
  EXPECT_EQ(t.select(0, -1).at({0}), 18.0);
  EXPECT_EQ(t.narrow(1, 2, 3).at({1, 0}), 8.0);
  EXPECT_THROW(t.narrow(1, 4, 3), Error);
  EXPECT_THROW(t.select(2, 0), Error);
  EXPECT_THROW(t.select(0, 4), Error);
  EXPECT_THROW(t.slice(0, 0, 2, 0), Error);
}

TEST(Tensor, PermuteTransposeContiguous) {
  Tensor t = iota({2, 3, 4});
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.strides(), (Shape{1, 12, 4}));
  EXPECT_EQ(p.at({3, 1, 2}), t.at({1, 2, 3}));
  Tensor c = p.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_NE(c.storage(), t.storage());
  for (int64_t a = 0; a < 4; ++a)
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t d = 0; d < 3; ++d) EXPECT_EQ(c.at({a, b, d}), t.at({b, d, a}));
  EXPECT_EQ(t.contiguous().storage(), t.storage());  // already contiguous: no copy
  EXPECT_EQ(t.transpose(0, -1).shape(), (Shape{4, 3, 2}));
  EXPECT_THROW(t.permute({0, 0, 1}), Error);
  EXPECT_THROW(t.permute({0, 1}), Error);
}

TEST(Tensor, ViewAndReshape) {
  Tensor t = iota({2, 3, 4});
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  EXPECT_EQ(v.storage(), t.storage());
  EXPECT_EQ(v.at({5, 3}), 23.0);
  // A transposed tensor cannot be flattened without a copy ...
  Tensor tt = t.transpose(1, 2);
  EXPECT_THROW(tt.view({-1}), Error);
  // ... but merging dims that stay contiguous within themselves is fine.
  Tensor sliced = iota({4, 2, 3}).slice(0, 0, 4, 2);  // [2, 2, 3], stride 12 on dim 0
  Tensor merged = sliced.view({2, 6});
  EXPECT_EQ(merged.storage(), sliced.storage());
  EXPECT_EQ(merged.at({1, 5}), 17.0);
  Tensor r = tt.reshape({-1});
  EXPECT_NE(r.storage(), t.storage());
  EXPECT_EQ(r.at({1}), 4.0);
  EXPECT_EQ(t.reshape({24}).storage(), t.storage());
  EXPECT_THROW(t.view({5, -1}), Error);
  EXPECT_THROW(t.view({-1, -1}), Error);
  EXPECT_EQ(Tensor::full({}, 3.0).view({1, 1}).at({0, 0}), 3.0);
}

TEST(Tensor, ExpandUnsqueezeSqueeze) {
  Tensor t = iota({3, 1});
  Tensor e = t.expand({2, 3, 4});
  EXPECT_EQ(e.strides(), (Shape{0, 1, 0}));
  EXPECT_EQ(e.at({1, 2, 3}), 2.0);
  EXPECT_EQ(e.contiguous().to_values().size(), 24u);
  EXPECT_THROW(t.expand({3, 2, 2}), Error);
  EXPECT_EQ(t.expand({-1, 5}).shape(), (Shape{3, 5}));
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 3, 1}));
  EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{3, 1, 1}));
  EXPECT_EQ(t.squeeze(1).shape(), (Shape{3}));
  EXPECT_EQ(t.squeeze(0).shape(), (Shape{3, 1}));
  EXPECT_EQ(broadcast_shapes({3, 1}, {4}, "test"), (Shape{3, 4}));
  EXPECT_THROW(broadcast_shapes({3, 2}, {4}, "test"), Error);
}

TEST(Tensor, DataTypeChecks) {
  Tensor t = Tensor::zeros({2}, DType::bf16);
  EXPECT_NO_THROW(t.data<bf16>());
  EXPECT_THROW(t.data<float>(), Error);
  EXPECT_THROW(Tensor().raw_data(), Error);
  EXPECT_THROW(Tensor::zeros({2}).item(), Error);
  EXPECT_EQ(dtype_from_name("bf16"), DType::bf16);
  EXPECT_EQ(dtype_from_name("f64"), DType::f64);
  EXPECT_THROW(dtype_from_name("f128"), Error);
}

TEST(Tensor, F64KeepsDoublePrecision) {
  const double third = 1.0 / 3.0;
  const Tensor t = Tensor::full({3}, third, DType::f64);
  EXPECT_EQ(t.itemsize(), 8u);
  EXPECT_EQ(t.to_values(), std::vector<double>(3, third));
  EXPECT_EQ(t.to(DType::f32).to(DType::f64).to_values()[0], static_cast<float>(third));
  EXPECT_EQ(t.to(DType::bf16).to_values()[0], bf16_bits_to_f32(f32_to_bf16_bits(third)));
  EXPECT_EQ(Tensor::full({1}, 3, DType::i64).to(DType::f64).to(DType::i32).item(), 3.0);
}

TEST(Tensor, FromStorageChecksBounds) {
  auto storage = Storage::allocate(10 * sizeof(float));
  EXPECT_NO_THROW(Tensor::from_storage(storage, 0, {2, 5}, {5, 1}, DType::f32));
  EXPECT_THROW(Tensor::from_storage(storage, 1, {2, 5}, {5, 1}, DType::f32), Error);
  EXPECT_THROW(Tensor::from_storage(storage, 0, {3, 5}, {5, 1}, DType::f32), Error);
  EXPECT_THROW(Tensor::from_storage(storage, 0, {2, 5}, {1}, DType::f32), Error);
  bool released = false;
  {
    static float buffer[4] = {1, 2, 3, 4};
    Tensor w = Tensor::from_storage(Storage::wrap(buffer, sizeof buffer, [&] { released = true; }),
                                    0, {4}, {1}, DType::f32);
    EXPECT_EQ(w.at({3}), 4.0);
  }
  EXPECT_TRUE(released);
}

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to even (1.0).
  EXPECT_EQ(f32_to_bf16_bits(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: goes up.
  EXPECT_EQ(f32_to_bf16_bits(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(f32_to_bf16_bits(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above halfway
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16_bits(3.3895314e38f), 0x7f7f);  // bf16 max stays finite
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  // NaN stays NaN, including payloads that rounding would turn into infinity.
  const float nan_low = std::bit_cast<float>(0x7f800001u);
  EXPECT_TRUE(std::isnan(bf16_bits_to_f32(f32_to_bf16_bits(nan_low))));
  EXPECT_TRUE(std::isnan(bf16_bits_to_f32(f32_to_bf16_bits(-std::nanf("")))));
  EXPECT_TRUE(std::signbit(bf16_bits_to_f32(f32_to_bf16_bits(-std::nanf("")))));
}

TEST(DType, F16RoundTripsEveryValue) {
  // Every f16 bit pattern survives f16 -> f32 -> f16 (NaNs stay NaN).
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = f16_bits_to_f32(static_cast<uint16_t>(bits));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_bits_to_f32(f32_to_f16_bits(f))));
    } else {
      ASSERT_EQ(f32_to_f16_bits(f), bits) << "f16 bits " << bits;
    }
  }
}

TEST(DType, F16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16_bits(1.0f + 0x1p-11f), 0x3c00);      // tie -> even
  EXPECT_EQ(f32_to_f16_bits(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(f32_to_f16_bits(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(65520.0f), 0x7c00);  // tie -> even = inf
  EXPECT_EQ(f32_to_f16_bits(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16_bits(0x1p-25f), 0x0000);  // tie -> even = 0
  EXPECT_EQ(f32_to_f16_bits(0x1.8p-25f), 0x0001);
  EXPECT_EQ(f32_to_f16_bits(1e-10f), 0x0000);
  EXPECT_EQ(f32_to_f16_bits(-2.0f), 0xc000);
}

TEST(Tensor, ConversionThroughTensors) {
  Tensor t = Tensor::from_values({1.0, -2.5, 1.0 + 1.0 / 256, 3.0e38}, {4});
  Tensor b = t.to(DType::bf16);
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_EQ(b.at({2}), 1.0);
  Tensor back = b.to(DType::f32);
  EXPECT_EQ(back.at({1}), -2.5);
  Tensor h = t.to(DType::f16);
  EXPECT_TRUE(std::isinf(h.at({3})));
  Tensor i = t.slice(0, 0, 2).to(DType::i64);
  EXPECT_EQ(i.at({1}), -2.0);
  EXPECT_EQ(Tensor::from_values({0, 2}, {2}).to(DType::boolean).to_values(),
            (std::vector<double>{0, 1}));
  // copy_ broadcasts and converts.
  Tensor dst = Tensor::zeros({2, 3}, DType::bf16);
  dst.copy_(Tensor::from_values({1, 2, 3}, {3}));
  EXPECT_EQ(dst.to_values(), (std::vector<double>{1, 2, 3, 1, 2, 3}));
}

TEST(Tensor, Printing) {
  Tensor t = iota({2, 3});
  EXPECT_EQ(t.to_string(), "tensor([[0, 1, 2],\n        [3, 4, 5]], shape=[2, 3], dtype=f32)");
  EXPECT_EQ(Tensor::arange(10, DType::i32).to_string(4),
            "tensor([0, 1, ..., 8, 9], shape=[10], dtype=i32)");
  EXPECT_EQ(Tensor::full({}, 0.5, DType::bf16).to_string(), "tensor(0.5, shape=[], dtype=bf16)");
  EXPECT_EQ(Tensor().to_string(), "tensor(undefined)");
}

TEST(Generator, SeededAndDeterministic) {
  Generator a(42), b(42), c(43);
  Tensor x = randn({100}, a);
  EXPECT_EQ(x.to_values(), randn({100}, b).to_values());
  EXPECT_NE(x.to_values(), randn({100}, c).to_values());
  double mean = 0;
  Generator g(1);
  Tensor u = rand({10000}, g);
  for (double v : u.to_values()) {
    EXPECT_GE(v, 0.0);
    EXPECT_LT(v, 1.0);
    mean += v / 10000;
  }
  EXPECT_NEAR(mean, 0.5, 0.02);
}

}  // namespace
}  // namespace qkv
