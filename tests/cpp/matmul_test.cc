// qkv::matmul against a double-accumulating reference: odd sizes, transposes,
// strided views, broadcast batches, bf16, empty dims, the primitive cache and
// every validation error.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "qkv/qkv.h"

namespace qkv {
namespace {

struct Reference {
  Shape shape;
  std::vector<double> values;
  std::vector<double> magnitude;  // sum of |a_ik * b_kj|: the scale of rounding errors
};

// a: [..., M, K], b: [..., K, N], views as the product should read them.
Reference reference_matmul(const Tensor& a, const Tensor& b) {
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
  const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = broadcast_shapes(a_batch, b_batch, "reference");
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Shape a_full = batch, b_full = batch;
  a_full.insert(a_full.end(), {M, K});
  b_full.insert(b_full.end(), {K, N});
  const std::vector<double> av = a.expand(a_full).to_values();
  const std::vector<double> bv = b.expand(b_full).to_values();
  Reference ref;
  ref.shape = batch;
  ref.shape.insert(ref.shape.end(), {M, N});
  const int64_t batches = shape_numel(batch);
  ref.values.assign(static_cast<size_t>(batches * M * N), 0.0);
  ref.magnitude.assign(ref.values.size(), 0.0);
  for (int64_t t = 0; t < batches; ++t)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double sum = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double p = av[(t * M + i) * K + k] * bv[(t * K + k) * N + j];
          sum += p;
          mag += std::fabs(p);
        }
        ref.values[(t * M + i) * N + j] = sum;
        ref.magnitude[(t * M + i) * N + j] = mag;
      }
  return ref;
}

// f32 accumulation over bf16 or f32 products: the error is a few f32 ulps of
// the magnitude of the sum, times a slowly growing factor in K.
double tolerance(DType dtype) { return dtype == DType::bf16 ? 1e-5 : 2e-6; }

void expect_matches(const Tensor& got, const Tensor& a_view, const Tensor& b_view, DType dtype) {
  const Reference ref = reference_matmul(a_view, b_view);
  ASSERT_EQ(got.shape(), ref.shape);
  ASSERT_EQ(got.dtype(), DType::f32);
  ASSERT_TRUE(got.is_contiguous());
  const std::vector<double> values = got.to_values();
  for (size_t i = 0; i < values.size(); ++i) {
    const double tol = tolerance(dtype) * ref.magnitude[i] + 1e-30;
    ASSERT_NEAR(values[i], ref.values[i], tol) << "element " << i << " of " << shape_string(ref.shape);
  }
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts);

Tensor random(const Shape& shape, DType dtype, uint64_t seed) {
  Generator gen(seed);
  return randn(shape, gen).to(dtype);
}

class MatmulByDType : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulByDType, OddSizesMatchReference) {
  const DType dtype = GetParam();
  const int64_t sizes[] = {1, 7, 33, 129};
  uint64_t seed = 1;
  for (int64_t M : sizes)
    for (int64_t K : sizes)
      for (int64_t N : sizes) {
        SCOPED_TRACE(testing::Message() << "M=" << M << " K=" << K << " N=" << N);
        const Tensor a = random({M, K}, dtype, seed++);
        const Tensor b = random({K, N}, dtype, seed++);
        expect_matches(matmul(a, b), a, b, dtype);
      }
}

TEST_P(MatmulByDType, LongInnerDimension) {
  const DType dtype = GetParam();
  const Tensor a = random({17, 2053}, dtype, 11);
  const Tensor b = random({2053, 31}, dtype, 12);
  expect_matches(matmul(a, b), a, b, dtype);
}

TEST_P(MatmulByDType, TransposesBothWays) {
  const DType dtype = GetParam();
  const int64_t M = 33, K = 7, N = 129;
  const Tensor at = random({K, M}, dtype, 21);  // stored as a^T
  const Tensor bt = random({N, K}, dtype, 22);  // stored as b^T
  const Tensor a = random({M, K}, dtype, 23);
  const Tensor b = random({K, N}, dtype, 24);
  expect_matches(matmul(at, b, {.transpose_a = true}), at.transpose(0, 1), b, dtype);
  expect_matches(matmul(a, bt, {.transpose_b = true}), a, bt.transpose(0, 1), dtype);
  expect_matches(matmul(at, bt, {.transpose_a = true, .transpose_b = true}), at.transpose(0, 1),
                 bt.transpose(0, 1), dtype);
  // A transposed view without the option is the same product.
  expect_matches(matmul(at.transpose(0, 1), bt.transpose(0, 1)), at.transpose(0, 1),
                 bt.transpose(0, 1), dtype);
  // Batched, as attention's Q K^T: [B, H, L, D] x [B, H, L, D]^T.
  const Tensor q = random({2, 3, 33, 16}, dtype, 25);
  const Tensor k = random({2, 3, 7, 16}, dtype, 26);
  expect_matches(matmul(q, k, {.transpose_b = true}), q, k.transpose(-2, -1), dtype);
}

TEST_P(MatmulByDType, StridedSlices) {
  const DType dtype = GetParam();
  const Tensor big_a = random({70, 50}, dtype, 31);
  const Tensor big_b = random({60, 80}, dtype, 32);
  // Rows with a leading dimension larger than the row.
  const Tensor a = big_a.slice(0, 3, 36).slice(1, 5, 38);  // [33, 33], ld 50
  const Tensor b = big_b.slice(0, 10, 43).slice(1, 1, 8);  // [33, 7], ld 80
  expect_matches(matmul(a, b), a, b, dtype);
  // Every other row, and every other column (no unit stride anywhere).
  const Tensor a2 = big_a.slice(0, 0, 66, 2).slice(1, 0, 50, 2);  // [33, 25]
  const Tensor b2 = big_b.slice(0, 0, 50, 2).slice(1, 1, 80, 3);  // [25, 27]
  expect_matches(matmul(a2, b2), a2, b2, dtype);
  // A strided transposed operand.
  expect_matches(matmul(a2, big_b.slice(0, 0, 54, 2).slice(1, 0, 25), {.transpose_b = true}), a2,
                 big_b.slice(0, 0, 54, 2).slice(1, 0, 25).transpose(0, 1), dtype);
  // Heads sliced out of a fused [L, 3, H, D] projection, permuted to [H, L, D].
  const Tensor qkv_proj = random({9, 3, 4, 8}, dtype, 33);
  const Tensor q = qkv_proj.select(1, 0).permute({1, 0, 2});
  const Tensor k = qkv_proj.select(1, 1).permute({1, 0, 2});
  expect_matches(matmul(q, k, {.transpose_b = true}), q, k.transpose(-2, -1), dtype);
}

TEST_P(MatmulByDType, BroadcastBatches) {
  const DType dtype = GetParam();
  const int64_t M = 7, K = 33, N = 5;
  const Tensor a = random({2, 1, M, K}, dtype, 41);
  const Tensor b = random({3, K, N}, dtype, 42);
  const Tensor c = matmul(a, b);
  EXPECT_EQ(c.shape(), (Shape{2, 3, M, N}));
  expect_matches(c, a, b, dtype);
  // A weight shared by every batch (folded into one GEMM), and the mirror case.
  const Tensor x = random({4, 3, M, K}, dtype, 43);
  const Tensor w = random({K, N}, dtype, 44);
  expect_matches(matmul(x, w), x, w, dtype);
  expect_matches(matmul(random({M, K}, dtype, 45), b), random({M, K}, dtype, 45), b, dtype);
  // Expanded (stride 0) batch dims and size-1 dims on both sides.
  const Tensor e = random({1, K, N}, dtype, 46).expand({6, K, N});
  expect_matches(matmul(x.view({12, M, K}).slice(0, 0, 6), e), x.view({12, M, K}).slice(0, 0, 6),
                 e, dtype);
  const Tensor p = random({5, 1, 2, M, K}, dtype, 47);
  const Tensor r = random({1, 3, 1, K, N}, dtype, 48);
  expect_matches(matmul(p, r), p, r, dtype);
  // Batch dims of a that cannot be merged (a permuted [B, L, H, D] view).
  const Tensor blhd = random({2, M, 3, K}, dtype, 49);
  const Tensor bhld = blhd.permute({0, 2, 1, 3});
  expect_matches(matmul(bhld, w), bhld, w, dtype);
}

TEST_P(MatmulByDType, ExpandedRowsAndFoldedBatches) {
  const DType dtype = GetParam();
  // Stride 0 inside the matrix (a row repeated M times): oneDNN cannot take
  // it, so the operand is copied; the values must not change.
  const Tensor row = random({1, 33}, dtype, 51);
  const Tensor a = row.expand({7, 33});
  const Tensor b = random({33, 9}, dtype, 52);
  expect_matches(matmul(a, b), a, b, dtype);
  const Tensor col = random({33, 1}, dtype, 53).expand({33, 9});
  expect_matches(matmul(random({7, 33}, dtype, 54), col), random({7, 33}, dtype, 54), col, dtype);
  // [B, T, K] rows with a leading dimension, times a shared weight: one GEMM
  // of B * T rows.
  const Tensor x = random({3, 5, 40}, dtype, 55).slice(2, 0, 33);
  expect_matches(matmul(x, b), x, b, dtype);
  // A size-1 batch on both sides, and a single row.
  const Tensor one = random({1, 1, 33}, dtype, 56);
  expect_matches(matmul(one, b.unsqueeze(0)), one, b.unsqueeze(0), dtype);
}

TEST_P(MatmulByDType, EmptyDims) {
  const DType dtype = GetParam();
  const Tensor z_m = matmul(random({0, 5}, dtype, 1), random({5, 3}, dtype, 2));
  EXPECT_EQ(z_m.shape(), (Shape{0, 3}));
  const Tensor z_n = matmul(random({4, 5}, dtype, 1), random({5, 0}, dtype, 2));
  EXPECT_EQ(z_n.shape(), (Shape{4, 0}));
  const Tensor z_b = matmul(random({0, 4, 5}, dtype, 1), random({5, 3}, dtype, 2));
  EXPECT_EQ(z_b.shape(), (Shape{0, 4, 3}));
  // K = 0: the empty sum.
  const Tensor z_k = matmul(random({2, 4, 0}, dtype, 1), random({0, 3}, dtype, 2));
  EXPECT_EQ(z_k.shape(), (Shape{2, 4, 3}));
  for (double v : z_k.to_values()) EXPECT_EQ(v, 0.0);
}

INSTANTIATE_TEST_SUITE_P(DTypes, MatmulByDType, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(Matmul, ExactSmallProduct) {
  const Tensor a = Tensor::from_values({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor b = Tensor::from_values({7, 8, 9, 10, 11, 12}, {3, 2});
  EXPECT_EQ(matmul(a, b).to_values(), (std::vector<double>{58, 64, 139, 154}));
  EXPECT_EQ(matmul(a, a, {.transpose_b = true}).to_values(),
            (std::vector<double>{14, 32, 32, 77}));
}

TEST(Matmul, PrimitiveCacheReusesShapes) {
  const Tensor a = random({13, 29}, DType::f32, 1);
  const Tensor b = random({29, 11}, DType::f32, 2);
  const Tensor first = matmul(a, b);
  const int64_t count = matmul_primitive_count();
  EXPECT_GE(count, 1);
  for (int i = 0; i < 3; ++i) {
    // New tensors of the same shape and layout reuse the primitive.
    const Tensor a2 = random({13, 29}, DType::f32, 10 + i);
    expect_matches(matmul(a2, b), a2, b, DType::f32);
  }
  EXPECT_EQ(matmul_primitive_count(), count);
  EXPECT_EQ(matmul(a, b).to_values(), first.to_values());
  // Another layout, dtype or shape is another primitive.
  matmul(b, a, {.transpose_a = true, .transpose_b = true});
  EXPECT_EQ(matmul_primitive_count(), count + 1);
  matmul(a.to(DType::bf16), b.to(DType::bf16));
  EXPECT_EQ(matmul_primitive_count(), count + 2);
  matmul(a.slice(0, 0, 12), b);
  EXPECT_EQ(matmul_primitive_count(), count + 3);
  matmul(a.slice(0, 0, 12), b);
  EXPECT_EQ(matmul_primitive_count(), count + 3);
}

// One cached primitive runs on every thread that calls matmul at once (two
// Python threads generating with one model, say): each call brings its own
// scratchpad, so concurrent calls give the single-threaded bits.
TEST(Matmul, ConcurrentCallsFromManyThreadsAgree) {
  struct Case {
    Tensor a, b;
    MatmulOptions options;
    std::vector<double> want;
  };
  std::vector<Case> cases;
  int seed = 40;
  for (DType dtype : {DType::f32, DType::bf16})
    for (const auto& [m, k, n] : {std::tuple{1, 384, 1152}, {7, 384, 384}, {64, 1536, 384},
                                  {3, 4096, 96}, {257, 64, 65}}) {
      Case c{random({m, k}, dtype, seed++), random({n, k}, dtype, seed++), {.transpose_b = true}};
      c.want = matmul(c.a, c.b, c.options).to_values();
      cases.push_back(std::move(c));
    }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 30; ++round)
        for (size_t i = 0; i < cases.size(); ++i) {
          const Case& c = cases[(i + t) % cases.size()];
          if (matmul(c.a, c.b, c.options).to_values() != c.want) ++mismatches;
        }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(Matmul, IntoReusesTheBuffer) {
  const Tensor a = random({2, 9, 33}, DType::f32, 61);
  const Tensor b = random({33, 7}, DType::f32, 62);
  const Tensor out = Tensor::full({2, 9, 7}, std::nan(""));
  const void* data = out.raw_data();
  matmul_into(a, b, out);
  EXPECT_EQ(out.raw_data(), data);
  expect_matches(out, a, b, DType::f32);
  EXPECT_EQ(out.to_values(), matmul(a, b).to_values());
  // bf16 operands, a transposed one, and K = 0 (which must overwrite).
  const Tensor bt = random({7, 33}, DType::bf16, 63);
  matmul_into(a.to(DType::bf16), bt, out, {.transpose_b = true});
  expect_matches(out, a.to(DType::bf16), bt.transpose(0, 1), DType::bf16);
  matmul_into(Tensor::zeros({2, 9, 0}), Tensor::zeros({0, 7}), out);
  for (double v : out.to_values()) EXPECT_EQ(v, 0.0);
}

TEST(Matmul, IntoValidatesOut) {
  const Tensor a = Tensor::zeros({4, 3});
  const Tensor b = Tensor::zeros({3, 5});
  expect_error([&] { matmul_into(a, b, Tensor::zeros({5, 4})); },
               {"matmul_into", "f32 [4, 5]", "[5, 4]"});
  expect_error([&] { matmul_into(a, b, Tensor::zeros({4, 5}, DType::bf16)); },
               {"matmul_into", "[4, 5]", "bf16"});
  expect_error([&] { matmul_into(a, b, Tensor::zeros({5, 4}).transpose(0, 1)); },
               {"matmul_into", "non-contiguous f32 [4, 5]"});
  expect_error([&] { matmul_into(a, b, Tensor()); }, {"matmul_into", "out", "undefined"});
  const Tensor square = Tensor::zeros({4, 4});
  expect_error([&] { matmul_into(square, square, square); },
               {"matmul_into", "shares storage with a"});
  // The operands are validated as in matmul.
  expect_error([&] { matmul_into(a, a, Tensor::zeros({4, 3})); }, {"matmul", "K = 3", "K = 4"});
}

// EXPECT_THROW plus a check that the message names the values.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no qkv::Error thrown";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  }
}

TEST(Matmul, ValidationErrorsNameTheValues) {
  const Tensor a = Tensor::zeros({2, 3});
  const Tensor b = Tensor::zeros({4, 5});
  EXPECT_THROW(matmul(a, b), Error);
  expect_error([&] { matmul(a, b); }, {"matmul", "K = 3", "K = 4", "[2, 3]", "[4, 5]"});
  expect_error([&] { matmul(a, b, {.transpose_a = true}); },
               {"matmul", "K = 2", "(transposed)", "K = 4"});
  expect_error([&] { matmul(Tensor::zeros({3}), Tensor::zeros({3, 2})); },
               {"matmul", "argument a", "rank >= 2", "[3]"});
  expect_error([&] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({})); },
               {"matmul", "argument b", "rank >= 2", "rank 0"});
  expect_error([&] { matmul(Tensor::zeros({2, 4, 3}), Tensor::zeros({3, 3, 5})); },
               {"matmul", "batch dims", "[2]", "[3]", "not broadcastable"});
  expect_error([&] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}, DType::bf16)); },
               {"matmul", "f32", "bf16"});
  expect_error([&] { matmul(Tensor::zeros({2, 3}, DType::f16), Tensor::zeros({3, 2}, DType::f16)); },
               {"matmul", "argument a", "f16", "supported are f32, bf16 and f64"});
  expect_error([&] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}, DType::i32)); },
               {"matmul", "argument b", "i32"});
  // Batch dims that alternate between broadcast and not cannot be merged:
  // past oneDNN's 12 dims the error says so.
  const Tensor alt_a = Tensor::zeros({2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 2, 3});
  const Tensor alt_b = Tensor::zeros({1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 3, 2});
  expect_error([&] { matmul(alt_a, alt_b); }, {"matmul", "13 dims", "at most 12"});
  expect_error([&] { matmul(Tensor(), b); }, {"matmul", "argument a", "undefined"});
  expect_error([&] { matmul(a, Tensor()); }, {"matmul", "argument b", "undefined"});
}

}  // namespace
}  // namespace qkv
