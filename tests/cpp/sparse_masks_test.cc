// The sparse attention masks (qkv/sparse_masks.h): allowed() against the
// papers' definitions, visibility() and apply() against allowed() pair by
// pair, the fused kernel with each mask against the double oracle with the
// same mask as an explicit bool tensor, and the skipped blocks.
#include "qkv/sparse_masks.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "qkv/qkv.h"
#include "support/sanitizers.h"

namespace qkv {
namespace {

using Pred = std::function<bool(int64_t b, int64_t h, int64_t q, int64_t kv)>;

int64_t floor_mod(int64_t a, int64_t m) {
  return ((a % m) + m) % m;
}

// A named mask with its definition written out from the paper, pair by pair.
struct Named {
  std::string name;
  MaskModPtr mask;
  Pred definition;  // null: no independent transcription (BigBird's random blocks)
};

Tensor layout_tensor(int64_t heads, int64_t nq, int64_t nk, uint64_t seed, double density) {
  Generator gen(seed);
  Tensor t = Tensor::empty({heads, nq, nk}, DType::boolean);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<bool>()[i] = gen.uniform() < density;
  if (nq > 1)  // query block 1 sees nothing in head 0: rows with no visible key
    for (int64_t j = 0; j < nk; ++j) t.data<bool>()[nk + j] = false;
  return t;
}

Tensor global_tensor(int64_t batch, int64_t len, std::vector<int64_t> positions) {
  Tensor t = Tensor::zeros({batch, len}, DType::boolean);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t x : positions)
      if (x + 7 * b < len) t.data<bool>()[b * len + x + 7 * b] = true;  // batches differ
  return t;
}

// Every mask family with a few parameter sets, for B = 2, H = 2, L <= max_len.
std::vector<Named> masks(int64_t max_len) {
  std::vector<Named> out;
  for (auto [l, r, dil] : {std::tuple{3, 2, 1}, {4, 4, 3}, {0, 5, 2}, {16, 0, 7}, {2, 2, 64}}) {
    out.push_back({detail::str("dilated(", l, ",", r, ",", dil, ")"),
                   dilated_window_mask(l, r, dil), [=](int64_t, int64_t, int64_t q, int64_t kv) {
                     const int64_t d = kv - q;
                     return -l * dil <= d && d <= r * dil && floor_mod(d, dil) == 0;
                   }});
  }
  for (auto [c, s, causal] : {std::tuple{16, 2, false},
                              {16, 2, true},
                              {7, 0, false},
                              {5, 5, true},
                              {128, 16, true},
                              {1, 0, false},
                              {3, 1, true}}) {
    out.push_back({detail::str("fixed(", c, ",", s, ",", causal, ")"),
                   sparse_fixed_mask(c, s, causal), [=](int64_t, int64_t, int64_t q, int64_t kv) {
                     return (kv / c == q / c || kv % c >= c - s) && (!causal || kv <= q);
                   }});
  }
  for (auto [l, causal] :
       {std::pair{1, false}, {2, true}, {13, false}, {13, true}, {64, false}, {300, true}}) {
    out.push_back({detail::str("strided(", l, ",", causal, ")"), sparse_strided_mask(l, causal),
                   [=](int64_t, int64_t, int64_t q, int64_t kv) {
                     const int64_t d = q - kv;
                     return (std::abs(d) < l || floor_mod(d, l) == 0) && (!causal || kv <= q);
                   }});
  }
  for (auto [bq, bk, heads] : {std::tuple{16, 32, 2}, {7, 5, 1}, {64, 64, 2}}) {
    const int64_t nq = (max_len + bq - 1) / bq, nk = (max_len + bk - 1) / bk;
    const Tensor layout = layout_tensor(heads, nq, nk, bq * 31 + bk, 0.3);
    const std::vector<double> cells = layout.to_values();
    out.push_back({detail::str("block_sparse(", bq, ",", bk, ",H", heads, ")"),
                   block_sparse_mask(heads == 1 ? layout.select(0, 0) : layout, bq, bk),
                   [=](int64_t, int64_t h, int64_t q, int64_t kv) {
                     return cells[((heads == 1 ? 0 : h) * nq + q / bq) * nk + kv / bk] != 0;
                   }});
  }
  for (auto [bs, w, g, r, causal] : {std::tuple{16, 3, 1, 2, false},
                                     {16, 3, 1, 2, true},
                                     {7, 1, 0, 3, false},
                                     {64, 5, 2, 3, false},
                                     {5, 3, 0, 0, true},
                                     {32, 3, 2, 64, false}}) {
    out.push_back({detail::str("bigbird(", bs, ",", w, ",", g, ",", r, ",", causal, ")"),
                   bigbird_mask(bs, w, g, r, 1234, causal), nullptr});
  }
  const std::vector<int64_t> globals = {0, 5, 100, 101, 250};
  const Tensor global2 = global_tensor(2, max_len, globals),
               global1 = global_tensor(1, max_len, {3, 64}).select(0, 0);
  const std::vector<double> g2 = global2.to_values(), g1 = global1.to_values();
  for (auto [l, r] : {std::pair{4, 4}, {0, 0}, {32, 0}, {130, 7}}) {
    out.push_back({detail::str("longformer(", l, ",", r, ",[B,L])"), longformer_mask(l, r, global2),
                   [=](int64_t b, int64_t, int64_t q, int64_t kv) {
                     return (q - l <= kv && kv <= q + r) || g2[b * max_len + q] != 0 ||
                            g2[b * max_len + kv] != 0;
                   }});
  }
  out.push_back({"longformer(9,3,[L])", longformer_mask(9, 3, global1),
                 [=](int64_t, int64_t, int64_t q, int64_t kv) {
                   return (q - 9 <= kv && kv <= q + 3) || g1[q] != 0 || g1[kv] != 0;
                 }});
  out.push_back({"longformer(2,5,indices)",
                 longformer_mask(2, 5, std::vector<int64_t>{40, 7, 7, 199, 100000}),
                 [=](int64_t, int64_t, int64_t q, int64_t kv) {
                   auto global = [](int64_t x) {
                     return x == 7 || x == 40 || x == 199 || x == 100000;
                   };
                   return (q - 2 <= kv && kv <= q + 5) || global(q) || global(kv);
                 }});
  return out;
}

BlockVisibility truth(const std::vector<uint8_t>& dense, int64_t lk, const AttentionBlock& blk) {
  bool any = false, all = true;
  for (int64_t q = blk.q_begin; q < blk.q_end; ++q)
    for (int64_t kv = blk.kv_begin; kv < blk.kv_end; ++kv) {
      any |= dense[q * lk + kv] != 0;
      all &= dense[q * lk + kv] != 0;
    }
  return !any ? BlockVisibility::none : all ? BlockVisibility::all : BlockVisibility::some;
}

const char* name_of(BlockVisibility v) {
  return v == BlockVisibility::none ? "none" : v == BlockVisibility::all ? "all" : "some";
}

// visibility() and apply() of one block against allowed() pair by pair.
void check_block(const Named& m, const std::vector<uint8_t>& dense, int64_t lk,
                 const AttentionBlock& blk) {
  const std::string where =
      detail::str(m.name, " b", blk.batch, " h", blk.head, " q[", blk.q_begin, ",", blk.q_end,
                  ") kv[", blk.kv_begin, ",", blk.kv_end, ")");
  const BlockVisibility want = truth(dense, lk, blk), got = m.mask->visibility(blk);
  ASSERT_EQ(got, want) << where << ": visibility " << name_of(got) << ", pairs say "
                       << name_of(want);
  const int64_t rows = blk.q_end - blk.q_begin, cols = blk.kv_end - blk.kv_begin, ld = cols + 3;
  std::vector<float> scores(static_cast<size_t>(rows * ld));
  for (size_t i = 0; i < scores.size(); ++i) scores[i] = 0.5f + static_cast<float>(i);
  m.mask->apply(blk, scores.data(), ld);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < ld; ++j) {
      const float before = 0.5f + static_cast<float>(i * ld + j), after = scores[i * ld + j];
      const bool hidden = j < cols && dense[(blk.q_begin + i) * lk + blk.kv_begin + j] == 0;
      if (hidden) {
        ASSERT_EQ(after, -std::numeric_limits<float>::infinity())
            << where << " apply row " << i << " col " << j;
      } else {
        ASSERT_EQ(after, before) << where << " apply touched a visible (or padding) entry, row "
                                 << i << " col " << j;
      }
    }
}

TEST(SparseMasks, AllowedFollowsTheDefinitionsAndBlocksAreExact) {
  const int64_t B = 2, H = 2;
  for (auto [lq, lk] : {std::pair<int64_t, int64_t>{300, 300}, {211, 333}, {333, 97}, {1, 50}}) {
    if (qkv::test_support::kSanitized && lq == 300) continue;  // the odd sizes suffice there
    for (const Named& m : masks(std::max(lq, lk))) {
      m.mask->check(B, H, lq, lk);
      Generator gen(static_cast<uint64_t>(lq * 1000 + lk));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h) {
          std::vector<uint8_t> dense(static_cast<size_t>(lq * lk));
          int64_t visible = 0;
          for (int64_t q = 0; q < lq; ++q)
            for (int64_t kv = 0; kv < lk; ++kv) {
              dense[q * lk + kv] = m.mask->allowed(b, h, q, kv);
              visible += dense[q * lk + kv];
              if (m.definition) {
                ASSERT_EQ(dense[q * lk + kv] != 0, m.definition(b, h, q, kv))
                    << m.name << " b" << b << " h" << h << " q" << q << " kv" << kv;
              }
            }
          if (lq > 1) {
            ASSERT_GT(visible, 0) << m.name;
          }
          // Aligned tiles of the kernel's shapes and of small ones, then random blocks.
          for (auto [tq, tk] : {std::pair<int64_t, int64_t>{192, 128}, {64, 64}, {1, 37}, {5, 3}})
            for (int64_t q0 = 0; q0 < lq; q0 += tq)
              for (int64_t k0 = 0; k0 < lk; k0 += tk)
                check_block(m, dense, lk,
                            {b, h, q0, std::min(q0 + tq, lq), k0, std::min(k0 + tk, lk)});
          for (int t = 0; t < 300; ++t) {
            const int64_t q0 = static_cast<int64_t>(gen.next_u64() % lq),
                          k0 = static_cast<int64_t>(gen.next_u64() % lk);
            const int64_t span = t % 3 == 0 ? 1 : 200;
            const int64_t q1 =
                q0 + 1 + static_cast<int64_t>(gen.next_u64() % std::min(span, lq - q0));
            const int64_t k1 =
                k0 + 1 + static_cast<int64_t>(gen.next_u64() % std::min<int64_t>(200, lk - k0));
            check_block(m, dense, lk, {b, h, q0, q1, k0, k1});
          }
          if (::testing::Test::HasFatalFailure()) return;
        }
    }
  }
}

TEST(SparseMasks, BigBirdBlocksFollowThePaper) {
  // Window and global blocks are visible, and per (head, query block) exactly
  // min(r, candidates) further key blocks, distinct, among the candidates.
  const int64_t bs = 8, lq = 250, lk = 203, nk = (lk + bs - 1) / bs;
  for (const bool causal : {false, true}) {
    const MaskModPtr m = bigbird_mask(bs, 3, 2, 3, 77, causal);
    m->check(1, 3, lq, lk);
    std::set<std::vector<int64_t>> distinct;
    for (int64_t h = 0; h < 3; ++h)
      for (int64_t i = 0; i * bs < lq; ++i) {
        std::vector<int64_t> random;
        int64_t candidates = 0;
        for (int64_t j = 0; j < nk; ++j) {
          const int64_t q = causal ? std::min(i * bs + bs - 1, lq - 1) : i * bs, kv = j * bs;
          const bool seen = m->allowed(0, h, q, kv);
          const bool fixed = i < 2 || j < 2 || std::abs(i - j) <= 1;
          if (fixed && (!causal || j <= i)) {
            ASSERT_TRUE(seen) << "causal " << causal << " h" << h << " i" << i << " j" << j;
          }
          if (!fixed && (!causal || j <= i)) ++candidates;
          if (seen && !fixed) random.push_back(j);
          if (causal && j > i) {
            ASSERT_FALSE(seen);
          }
        }
        ASSERT_EQ(static_cast<int64_t>(random.size()), std::min<int64_t>(3, candidates))
            << "causal " << causal << " h" << h << " i" << i;
        if (random.size() == 3) distinct.insert(random);
      }
    EXPECT_GT(distinct.size(), 30u)
        << "the random blocks hardly vary across heads and query blocks";
  }
  // The draw depends on the seed and the head, not on H or Lq.
  auto pattern = [](const MaskModPtr& m, int64_t heads, int64_t lq, int64_t head) {
    const Tensor t = mask_to_tensor(*m, 1, heads, lq, 200);
    return t.select(1, head).narrow(1, 0, 100).contiguous().to_values();
  };
  EXPECT_EQ(pattern(bigbird_mask(8, 3, 1, 2, 5), 1, 100, 0),
            pattern(bigbird_mask(8, 3, 1, 2, 5), 4, 250, 0));
  EXPECT_EQ(pattern(bigbird_mask(8, 3, 1, 2, 5), 2, 100, 1),
            pattern(bigbird_mask(8, 3, 1, 2, 5), 3, 130, 1));
  EXPECT_NE(pattern(bigbird_mask(8, 3, 1, 2, 5), 1, 100, 0),
            pattern(bigbird_mask(8, 3, 1, 2, 6), 1, 100, 0));
  EXPECT_NE(pattern(bigbird_mask(8, 3, 1, 2, 5), 2, 100, 0),
            pattern(bigbird_mask(8, 3, 1, 2, 5), 2, 100, 1));
}

// ---- the fused kernel against the oracle --------------------------------------------

void expect_close(const Tensor& got, const Tensor& want, double tolerance,
                  const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const auto a = got.to_values(), b = want.to_values();
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(b[i])) {
      ASSERT_EQ(a[i], b[i]) << what << " " << i;
    } else {
      ASSERT_NEAR(a[i], b[i], tolerance * (what == "lse" ? 1 + std::abs(b[i]) : 1.0))
          << what << " " << i;
    }
  }
}

double largest(const Tensor& t) {
  double m = 1.0;
  for (double x : t.to_values()) m = std::max(m, std::abs(x));
  return m;
}

// Returns the number of query rows with no visible key.
int64_t check_against_reference(const MaskModPtr& mask, int64_t lq, int64_t lk, DType dtype,
                                uint64_t seed, const std::string& name) {
  const int64_t B = 2, hq = 2, hkv = 1, d = 32;
  Generator gen(seed);
  const Tensor q = randn({B, hq, lq, d}, gen).to(dtype), k = randn({B, hkv, lk, d}, gen).to(dtype),
               v = randn({B, hkv, lk, d}, gen).to(dtype);
  const Tensor dense = mask_to_tensor(*mask, B, hq, lq, lk);
  AttentionOptions fused_options{.return_lse = true};
  fused_options.mask_mod = mask;
  const AttentionOptions ref_options{.mask = dense, .return_lse = true};
  const std::string what = detail::str(name, " Lq", lq, " Lk", lk, " ", dtype_name(dtype), " ");

  const AttentionResult fused = attention(q, k, v, fused_options);
  const AttentionResult ref = attention_reference(q, k, v, ref_options);
  expect_close(fused.output, ref.output,
               2e-5 * std::sqrt(static_cast<double>(std::max<int64_t>(lk, 1))), what + "output");
  expect_close(fused.lse, ref.lse, 1e-5, "lse");

  const Tensor grad_out = randn(fused.output.shape(), gen);
  const AttentionGradients g = attention_backward(grad_out, q, k, v, fused, fused_options);
  const AttentionGradients r = attention_backward_reference(grad_out, q, k, v, ref_options);
  const double grow = std::sqrt(static_cast<double>(std::max<int64_t>(lq, lk)));
  expect_close(g.grad_q, r.grad_q, 5e-5 * largest(r.grad_q) * grow, what + "dq");
  expect_close(g.grad_k, r.grad_k, 5e-5 * largest(r.grad_k) * grow, what + "dk");
  expect_close(g.grad_v, r.grad_v, 5e-5 * largest(r.grad_v) * grow, what + "dv");

  int64_t empty_rows = 0;
  const auto cells = dense.to_values();
  for (int64_t row = 0; row < B * hq * lq; ++row) {
    bool any = false;
    for (int64_t j = 0; j < lk; ++j) any |= cells[row * lk + j] != 0;
    empty_rows += !any;
  }
  return empty_rows;
}

TEST(SparseMasks, FusedAttentionEqualsTheDenseMask) {
  int64_t empty_rows = 0, cases = 0;
  const std::pair<int64_t, int64_t> sizes[] = {{1, 1},     {7, 7},     {200, 200},
                                               {333, 200}, {200, 333}, {1, 1000}};
  uint64_t seed = 1;
  for (const auto& [lq, lk] : sizes) {
    // Under the sanitizers, Lq > Lk is left to the release run (Lq < Lk and
    // the square sizes cover the same tiles).
    if (qkv::test_support::kSanitized && lq > lk && lk > 1) continue;
    for (const Named& m : masks(std::max(lq, lk))) {  // fresh masks: BigBird binds to its Lk
      empty_rows += check_against_reference(m.mask, lq, lk, DType::f32, seed++, m.name);
      ++cases;
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  // L = 1000 and bf16 inputs: one parameter set of each family (release run only).
  for (const DType dtype : {DType::f32, DType::bf16}) {
    if (qkv::test_support::kSanitized) break;
    for (const Named& m : masks(1000)) {
      const bool first_of_family = m.name.find("(4,4,3)") != std::string::npos ||
                                   m.name.find("(16,2,true)") != std::string::npos ||
                                   m.name.find("(13,true)") != std::string::npos ||
                                   m.name.find("(16,32,2)") != std::string::npos ||
                                   m.name.find("(16,3,1,2,true)") != std::string::npos ||
                                   m.name.find("(130,7,") != std::string::npos;
      if (!first_of_family) continue;
      const int64_t lq = dtype == DType::f32 ? 1000 : 333, lk = dtype == DType::f32 ? 1000 : 200;
      empty_rows += check_against_reference(m.mask, lq, lk, dtype, seed++, m.name);
      ++cases;
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  EXPECT_GT(empty_rows, 0) << "no case had a query row with nothing visible";
  EXPECT_GT(cases, qkv::test_support::kSanitized ? 100 : 150);
}

// ---- skipped blocks ----------------------------------------------------------------

// Counts the key blocks the kernel really computes: the score modifier is
// applied once per computed block.
class CountingScore : public ScoreMod {
 public:
  double score(double s, int64_t, int64_t, int64_t, int64_t) const override { return s; }
  bool needs_raw_scores() const override { return false; }
  void apply(const AttentionBlock&, float*, int64_t) const override { ++blocks; }
  mutable std::atomic<int64_t> blocks{0};
};

TEST(SparseMasks, HiddenBlocksAreSkipped) {
  const int64_t L = 4096, H = 2;
  Generator gen(6);
  const Tensor q = randn({1, H, L, 16}, gen), k = randn({1, H, L, 16}, gen),
               v = randn({1, H, L, 16}, gen);
  auto computed = [&](const MaskModPtr& mask) {
    auto counter = std::make_shared<CountingScore>();
    AttentionOptions options;
    options.mask_mod = mask;
    options.score_mod = counter;
    attention(q, k, v, options);
    return counter->blocks.load();
  };
  const int64_t dense = computed(nullptr);
  EXPECT_GE(dense, H * (L / 192) * (L / 128));
  Tensor layout =
      Tensor::zeros({64, 64}, DType::boolean);  // 64 x 64 blocks: the diagonal and a few more
  for (int64_t i = 0; i < 64; ++i)
    for (int64_t j : {i, (i * 7 + 3) % 64, 0L}) layout.data<bool>()[i * 64 + j] = true;
  const std::pair<std::string, MaskModPtr> cases[] = {
      {"dilated_window(64, 64, 4)", dilated_window_mask(64, 64, 4)},
      {"sparse_strided(1024, causal)", sparse_strided_mask(1024, true)},
      {"sparse_fixed(512, 32, causal)", sparse_fixed_mask(512, 32, true)},
      {"block_sparse(64 x 64, 3 per row)", block_sparse_mask(layout, 64, 64)},
      {"bigbird(128, 3, 1, 2)", bigbird_mask(128, 3, 1, 2, 9)},
      {"longformer(128, 128, 2 global)", longformer_mask(128, 128, std::vector<int64_t>{0, 1})},
  };
  for (const auto& [name, mask] : cases) {
    const int64_t blocks = computed(mask);
    // The blocks the mask does not hide entirely, by its own visibility().
    int64_t visible = 0;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t q0 = 0; q0 < L; q0 += 192)
        for (int64_t k0 = 0; k0 < L; k0 += 128)
          visible += mask->visibility({0, h, q0, std::min(q0 + 192, L), k0, k0 + 128}) !=
                     BlockVisibility::none;
    std::printf("%-36s computes %6lld of %6lld key blocks (%.1f%%)\n", name.c_str(),
                static_cast<long long>(blocks), static_cast<long long>(dense),
                100.0 * static_cast<double>(blocks) / static_cast<double>(dense));
    EXPECT_LE(blocks, visible) << name;
    EXPECT_LT(blocks * 2, dense) << name;
  }
}

// ---- errors -------------------------------------------------------------------------

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(SparseMasks, ErrorsNameTheFunctionAndTheValues) {
  auto expect_error = [](const std::function<void()>& fn, std::vector<std::string> parts) {
    const std::string message = message_of(fn);
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << message << " lacks " << part;
  };
  expect_error([] { dilated_window_mask(2, 2, 0); }, {"dilated_window_mask", "dilation", "0"});
  expect_error([] { dilated_window_mask(-1, 2, 1); }, {"dilated_window_mask", "-1"});
  expect_error([] { dilated_window_mask(int64_t{1} << 40, 2, int64_t{1} << 30); },
               {"dilated_window_mask", "dilation"});
  expect_error([] { sparse_fixed_mask(0, 0, false); }, {"sparse_fixed_mask", "block 0"});
  expect_error([] { sparse_fixed_mask(8, 9, false); }, {"sparse_fixed_mask", "summary 9"});
  expect_error([] { sparse_fixed_mask(8, -1, true); }, {"sparse_fixed_mask", "summary -1"});
  expect_error([] { sparse_strided_mask(0, false); }, {"sparse_strided_mask", "0"});
  expect_error([] { block_sparse_mask(Tensor::ones({4}, DType::boolean), 8, 8); },
               {"block_sparse_mask", "[4]"});
  expect_error(
      [] {
        block_sparse_mask(Tensor::ones({4, 4}, DType::f32), 8, 8);
      },
      {"block_sparse_mask", "f32"});
  expect_error(
      [] {
        block_sparse_mask(Tensor::full({4, 4}, 2, DType::i64), 8, 8);
      },
      {"block_sparse_mask", "2"});
  expect_error(
      [] {
        block_sparse_mask(Tensor::ones({4, 4}, DType::boolean), 0, 8);
      },
      {"block_sparse_mask", "0"});
  const MaskModPtr layout = block_sparse_mask(Tensor::ones({3, 4, 5}, DType::i32), 8, 8);
  layout->check(1, 3, 32, 40);
  expect_error([&] { layout->check(1, 2, 32, 40); }, {"block_sparse_mask", "H = 2"});
  expect_error([&] { layout->check(1, 3, 33, 40); },
               {"block_sparse_mask", "Lq = 33", ">= 5 query blocks"});
  expect_error([&] { layout->check(1, 3, 32, 41); }, {"block_sparse_mask", "Lk = 41"});
  Generator gen(1);
  const Tensor x = randn({1, 3, 40, 8}, gen);
  expect_error([&] { attention(x, x, x, {.mask_mod = layout}); }, {"block_sparse_mask", "Lq = 40"});
  expect_error([] { bigbird_mask(0, 3, 1, 1, 0); }, {"bigbird_mask", "block", "0"});
  expect_error([] { bigbird_mask(8, 2, 1, 1, 0); }, {"bigbird_mask", "odd", "2"});
  expect_error([] { bigbird_mask(8, 3, -1, 1, 0); }, {"bigbird_mask", "global_blocks", "-1"});
  expect_error([] { bigbird_mask(8, 3, 1, 65, 0); }, {"bigbird_mask", "random_blocks", "65"});
  const MaskModPtr bird = bigbird_mask(8, 3, 1, 2, 0);
  expect_error([&] { bird->allowed(0, 0, 50, 3); }, {"bigbird_mask", "not bound"});
  bird->check(1, 1, 100, 80);
  bird->check(2, 4, 7, 73);  // the same 10 key blocks
  expect_error([&] { bird->check(1, 1, 100, 81); },
               {"bigbird_mask", "10 key blocks", "Lk = 81", "11 blocks"});
  expect_error([] { longformer_mask(-2, 0, std::vector<int64_t>{}); }, {"longformer_mask", "-2"});
  expect_error(
      [] {
        longformer_mask(2, 0, std::vector<int64_t>{3, -4});
      },
      {"longformer_mask", "-4"});
  expect_error(
      [] {
        longformer_mask(2, 0, Tensor::zeros({2, 3, 4}, DType::boolean));
      },
      {"longformer_mask", "[2, 3, 4]"});
  expect_error([] { longformer_mask(2, 0, Tensor::zeros({4}, DType::f32)); },
               {"longformer_mask", "f32"});
  const MaskModPtr lf = longformer_mask(2, 0, Tensor::zeros({2, 30}, DType::boolean));
  lf->check(2, 1, 30, 20);
  expect_error([&] { lf->check(2, 1, 31, 20); }, {"longformer_mask", "[2, 30]", "L >= 31"});
  expect_error([&] { lf->check(3, 1, 30, 30); }, {"longformer_mask", "B = 3"});
  expect_error([&] { mask_to_tensor(*lf, 2, 1, -1, 5); }, {"mask_to_tensor", "Lq -1"});
  expect_error([&] { mask_to_tensor(*lf, 2, 1, 40, 5); }, {"longformer_mask", "L >= 40"});
}

}  // namespace
}  // namespace qkv
