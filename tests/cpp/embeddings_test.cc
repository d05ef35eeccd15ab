// The embedding ops against scalar loops, their determinism across thread
// counts, and the position / segment embedding modules' errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "qkv/qkv.h"

namespace qkv {
namespace {

// Random ids in [0, n) of `shape`, i64, with every value used often.
Tensor random_ids(const Shape& shape, int64_t n, Generator& gen) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = static_cast<double>(gen.next_u64() % static_cast<uint64_t>(n));
  return Tensor::from_values(v, shape, DType::i64);
}

// The message of the qkv::Error fn throws ("" when it does not throw).
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Embedding, MatchesScalarLoop) {
  Generator gen(1);
  const int64_t n = 37, d = 70;
  const Tensor weight = randn({n, d}, gen);
  for (const DType id_type : {DType::i64, DType::i32}) {
    for (const DType w_type : {DType::f32, DType::bf16}) {
      const Tensor ids = random_ids({3, 5}, n, gen).to(id_type);
      const Tensor w = weight.to(w_type);
      const Tensor out = embedding(w, ids);
      ASSERT_EQ(out.shape(), (Shape{3, 5, d}));
      ASSERT_EQ(out.dtype(), DType::f32);
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 5; ++j)
          for (int64_t c = 0; c < d; ++c) {
            const auto row = static_cast<int64_t>(ids.at({i, j}));
            ASSERT_EQ(out.at({i, j, c}), w.at({row, c})) << i << " " << j << " " << c;
          }
    }
  }
  // A strided (transposed) table is read correctly too.
  const Tensor t = randn({d, n}, gen).transpose(0, 1);
  const Tensor ids = random_ids({9}, n, gen);
  const Tensor out = embedding(t, ids);
  for (int64_t i = 0; i < 9; ++i)
    for (int64_t c = 0; c < d; ++c)
      ASSERT_EQ(out.at({i, c}), t.at({static_cast<int64_t>(ids.at({i})), c}));
}

TEST(Embedding, BackwardMatchesScalarLoopAndIsDeterministic) {
  Generator gen(2);
  // A large dim over few rows exercises the column blocks; many rows, the row split.
  for (const auto& [rows, d, count] :
       {std::tuple<int64_t, int64_t, int64_t>{3, 1024, 4000}, {500, 24, 20000}, {7, 5, 0}}) {
    const Tensor ids = random_ids({count}, rows, gen);
    const Tensor grad = randn({count, d}, gen);
    const int64_t padding = rows > 3 ? 4 : -1;
    set_num_threads(1);
    const Tensor one = embedding_backward(grad, ids, rows, padding);
    set_num_threads(2);
    const Tensor two = embedding_backward(grad, ids, rows, padding);
    ASSERT_EQ(one.shape(), (Shape{rows, d}));
    const auto a = one.to_values(), b = two.to_values();
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "element " << i;  // same bits
    std::vector<double> want(static_cast<size_t>(rows * d), 0.0);
    const auto g = grad.to_values(), id = ids.to_values();
    for (int64_t i = 0; i < count; ++i)
      if (static_cast<int64_t>(id[i]) != padding)
        for (int64_t c = 0; c < d; ++c) want[static_cast<int64_t>(id[i]) * d + c] += g[i * d + c];
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], want[i], 1e-3) << "element " << i;
    if (padding >= 0) {
      for (int64_t c = 0; c < d; ++c) ASSERT_EQ(one.at({padding, c}), 0.0);
    }
  }
}

TEST(Embedding, Errors) {
  const Tensor w = Tensor::zeros({5, 3});
  const Tensor ids = Tensor::from_values({0, 1, 2, 3, 7, 4}, {2, 3}, DType::i64);
  const std::string message = error_of([&] { embedding(w, ids); });
  EXPECT_NE(message.find("id 7"), std::string::npos) << message;
  EXPECT_NE(message.find("[1, 1]"), std::string::npos) << message;
  EXPECT_NE(message.find("5 embeddings"), std::string::npos) << message;
  EXPECT_THROW(embedding(w, Tensor::from_values({-1}, {1}, DType::i32)), Error);
  EXPECT_THROW(embedding(w, Tensor::zeros({2})), Error);                         // f32 ids
  EXPECT_THROW(embedding(Tensor::zeros({5}), ids), Error);                       // 1-D table
  EXPECT_THROW(embedding_backward(Tensor::zeros({2, 3, 3}), ids, 5), Error);     // id 7
  EXPECT_THROW(embedding_backward(Tensor::zeros({2, 4, 3}), ids, 8), Error);     // shape
  EXPECT_THROW(embedding_backward(Tensor::zeros({2, 3, 3}), ids, 8, 8), Error);  // padding_idx
}

TEST(Embeddings, ModulesAndErrors) {
  Generator gen(3);
  nn::LearnedPositionEmbedding pos({.max_positions = 16, .dim = 8}, gen);
  const Tensor out = pos.forward(4, 10);
  const Tensor& w = pos.parameters().at("weight");
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t c = 0; c < 8; ++c) ASSERT_EQ(out.at({i, c}), w.at({10 + i, c}));
  const Tensor g = pos.backward(Tensor::ones({4, 8})).at("weight");
  EXPECT_EQ(g.at({9, 0}), 0.0);
  EXPECT_EQ(g.at({13, 7}), 1.0);
  const std::string message = error_of([&] { pos.forward(7, 10); });
  EXPECT_NE(message.find("16"), std::string::npos) << message;
  EXPECT_NE(message.find("offset 10"), std::string::npos) << message;
  EXPECT_THROW(pos.backward(Tensor::ones({5, 8})), Error);
  EXPECT_THROW(pos.load_state_dict({{"weight", Tensor::zeros({16, 9})}}), Error);
  EXPECT_THROW(pos.load_state_dict({}), Error);

  nn::TokenTypeEmbedding types({.types = 2, .dim = 4}, gen);
  EXPECT_THROW(types.forward(Tensor::from_values({0, 2}, {1, 2}, DType::i64)), Error);

  for (const auto kind : {nn::SegmentEmbedding::none, nn::SegmentEmbedding::sinusoidal,
                          nn::SegmentEmbedding::learned}) {
    nn::SegmentedPositionEncoding seg({.segments = 3, .dim = 6, .segment_embedding = kind}, gen);
    const int64_t n = 10, m = 4;  // segments of 4, 4, 2
    const Tensor pe = seg.forward(n);
    const Tensor table = sinusoidal_positions(m, 6);
    const Tensor segments = kind == nn::SegmentEmbedding::learned
                                ? seg.parameters().at("segment_embedding.weight")
                                : sinusoidal_positions(3, 6);
    for (int64_t p = 0; p < n; ++p)
      for (int64_t c = 0; c < 6; ++c) {
        double want = table.at({p % m, c});
        if (kind != nn::SegmentEmbedding::none) want += segments.at({p / m, c});
        ASSERT_NEAR(pe.at({p, c}), want, 1e-6) << p << " " << c;
      }
    EXPECT_EQ(seg.backward(Tensor::ones({n, 6})).size(),
              kind == nn::SegmentEmbedding::learned ? 1u : 0u);
    EXPECT_THROW(seg.forward(-1), Error);
  }
  EXPECT_THROW(nn::SegmentedPositionEncoding({.segments = 0, .dim = 4}, gen), Error);
}

}  // namespace
}  // namespace qkv
