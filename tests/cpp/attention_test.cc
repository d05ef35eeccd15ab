// The fused attention kernel against the double-precision oracle, on every
// compiled Highway target, over layouts, head groupings, masks and edge sizes.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "hwy/targets.h"
#include "qkv/qkv.h"

namespace qkv {
namespace {

struct Case {
  int64_t b, hq, hkv, lq, lk, d, dv;
  AttentionLayout layout = AttentionLayout::bhld;
  Causal causal = Causal::none;
  std::string mask;  // "", "bool", "bias", "padding"
  DType dtype = DType::f32;
  double dropout = 0.0;
  std::string mod;  // modifiers: "window", "prefix", "document", "custom_or", "softcap"
};

// The modifiers a case names.
void add_modifiers(const Case& c, AttentionOptions& options) {
  if (c.mod == "window") options.mask_mod = sliding_window_mask(37, 5);
  if (c.mod == "prefix") options.mask_mod = prefix_lm_mask(21);
  if (c.mod == "document") {
    Tensor ids = Tensor::empty({c.b, c.lq}, DType::i64);
    for (int64_t b = 0; b < c.b; ++b)
      for (int64_t i = 0; i < c.lq; ++i) ids.data<int64_t>()[b * c.lq + i] = (i + 13 * b) / 45;
    options.mask_mod = mask_and(document_mask(ids), causal_mask());
  }
  if (c.mod == "custom_or")
    options.mask_mod = mask_or(sliding_window_mask(3, 3), custom_mask([](int64_t b, int64_t h, int64_t q, int64_t kv) {
                                 return (q * 7 + kv * 3 + b + h) % 5 == 0;
                               }));
  if (c.mod == "alibi") options.score_mod = alibi_score(alibi_slopes(c.hq), c.lk - c.lq);
  if (c.mod == "softcap")
    options.score_mod = score_chain(
        bias_score([](int64_t, int64_t h, int64_t q, int64_t kv) { return -0.05f * (h + 1) * std::abs(q - kv); }),
        softcap_score(2.5f));
}

std::string describe(const Case& c) {
  return detail::str("B", c.b, " Hq", c.hq, " Hkv", c.hkv, " Lq", c.lq, " Lk", c.lk, " D", c.d,
                     " Dv", c.dv, c.layout == AttentionLayout::blhd ? " blhd" : " bhld",
                     " causal", static_cast<int>(c.causal), " mask '", c.mask, "' mod '", c.mod, "' dropout ", c.dropout, " ",
                     dtype_name(c.dtype), " target ", hwy::TargetName(hwy::SupportedTargets() & -hwy::SupportedTargets()));
}

Tensor make(const Case& c, int64_t heads, int64_t len, int64_t dim, Generator& gen) {
  const Shape shape = c.layout == AttentionLayout::bhld ? Shape{c.b, heads, len, dim}
                                                        : Shape{c.b, len, heads, dim};
  return randn(shape, gen).to(c.dtype);
}

void check_case(const Case& c, uint64_t seed) {
  Generator gen(seed);
  const Tensor q = make(c, c.hq, c.lq, c.d, gen), k = make(c, c.hkv, c.lk, c.d, gen),
               v = make(c, c.hkv, c.lk, c.dv, gen);
  AttentionOptions options{.layout = c.layout,
                           .causal = c.causal,
                           .dropout = c.dropout,
                           .dropout_seed = seed * 7919,
                           .return_lse = true};
  // Asking for weights takes decode (Lq = 1) off its grouped-head path: keep it on it.
  if (c.lq > 1) options.weights_heads = {0, c.hq - 1};
  add_modifiers(c, options);
  if (c.mask == "bool") {
    Tensor m = rand({c.b, 1, c.lq, c.lk}, gen);  // broadcast over heads
    Tensor allowed = Tensor::empty(m.shape(), DType::boolean);
    for (int64_t i = 0; i < m.numel(); ++i)
      allowed.data<bool>()[i] = m.data<float>()[i] < 0.7 || (i % 97 == 0 && c.lq > 3);
    // A fully masked row for query 1 in every batch.
    if (c.lq > 1)
      for (int64_t b = 0; b < c.b; ++b)
        for (int64_t j = 0; j < c.lk; ++j) allowed.data<bool>()[(b * c.lq + 1) * c.lk + j] = false;
    options.mask = allowed;
  } else if (c.mask == "bias") {
    options.mask = scale(randn({c.hq, c.lq, c.lk}, gen), 2.0);
  } else if (c.mask == "padding") {
    Tensor pad = Tensor::zeros({c.b, c.lk}, DType::boolean);
    for (int64_t j = c.lk * 2 / 3; j < c.lk; ++j) pad.data<bool>()[j] = true;  // batch 0 only
    options.key_padding_mask = pad;
  }
  const AttentionResult fused = attention(q, k, v, options);
  const AttentionResult ref = attention_reference(q, k, v, options);
  ASSERT_EQ(fused.output.shape(), ref.output.shape()) << describe(c);
  const auto out = fused.output.to_values(), want = ref.output.to_values();
  // f32 accumulation over Lk terms of size |v| ~ 1: a few hundred ulp at most.
  const double tolerance = 2e-5 * std::sqrt(static_cast<double>(std::max<int64_t>(c.lk, 1)));
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_FALSE(std::isnan(out[i])) << describe(c) << " output " << i;
    ASSERT_NEAR(out[i], want[i], tolerance) << describe(c) << " output " << i;
  }
  double largest = 0;
  for (double x : want) largest = std::max(largest, std::abs(x));
  if (c.lq > 0 && c.lk > 0 && c.dv > 0) {
    ASSERT_GT(largest, 0.1) << describe(c);  // not vacuous
  }
  if (!options.weights_heads.empty()) {
    const auto weights = fused.weights.to_values(), weights_want = ref.weights.to_values();
    ASSERT_EQ(fused.weights.shape(), (Shape{c.b, 2, c.lq, c.lk})) << describe(c);
    for (size_t i = 0; i < weights.size(); ++i)
      ASSERT_NEAR(weights[i], weights_want[i], 2e-6) << describe(c) << " weights " << i;
  }
  const auto lse = fused.lse.to_values(), lse_want = ref.lse.to_values();
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(lse_want[i])) {
      ASSERT_EQ(lse[i], lse_want[i]) << describe(c) << " lse " << i;
    } else {
      ASSERT_NEAR(lse[i], lse_want[i], 1e-5 * (1 + std::abs(lse_want[i]))) << describe(c) << " lse " << i;
    }
  }

  // Backward: the fused kernel (recomputing from the saved lse) against the oracle.
  const Tensor grad_out = randn(fused.output.shape(), gen);
  const bool bias_grad = options.mask.defined() && options.mask.dtype() != DType::boolean;
  const AttentionGradients g = attention_backward(grad_out, q, k, v, fused, options, bias_grad);
  const AttentionGradients r = attention_backward_reference(grad_out, q, k, v, options, bias_grad);
  const std::pair<const Tensor*, const Tensor*> pairs[] = {
      {&g.grad_q, &r.grad_q}, {&g.grad_k, &r.grad_k}, {&g.grad_v, &r.grad_v}, {&g.grad_mask, &r.grad_mask}};
  const char* names[] = {"dq", "dk", "dv", "dmask"};
  for (int t = 0; t < 4; ++t) {
    if (!pairs[t].second->defined()) continue;
    ASSERT_EQ(pairs[t].first->shape(), pairs[t].second->shape()) << describe(c) << names[t];
    const auto got = pairs[t].first->to_values(), expect = pairs[t].second->to_values();
    double scale_of = 1.0;  // terms are O(1): cancellation to 0 leaves f32 rounding
    for (double x : expect) scale_of = std::max(scale_of, std::abs(x));
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_FALSE(std::isnan(got[i])) << describe(c) << " " << names[t] << " " << i;
      ASSERT_NEAR(got[i], expect[i], 5e-5 * scale_of * std::sqrt(static_cast<double>(std::max<int64_t>(c.lk, c.lq))))
          << describe(c) << " " << names[t] << " " << i;
    }
  }
}

class AttentionTargets : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(GetParam()); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

TEST_P(AttentionTargets, FusedMatchesReference) {
  const Case cases[] = {
      {1, 1, 1, 1, 1, 16, 16},
      {1, 2, 2, 113, 203, 64, 64},
      {2, 4, 2, 65, 64, 32, 32},                                   // GQA
      {1, 2, 1, 193, 129, 32, 32, AttentionLayout::bhld, Causal::top_left},  // a 1-row last tile
      {1, 4, 1, 7, 130, 80, 48},                                    // MQA, Dv != D
      {2, 3, 3, 33, 77, 128, 128, AttentionLayout::blhd},
      {1, 2, 2, 129, 129, 64, 64, AttentionLayout::bhld, Causal::top_left},
      {1, 2, 1, 40, 150, 32, 32, AttentionLayout::blhd, Causal::bottom_right},
      {1, 2, 2, 150, 40, 16, 16, AttentionLayout::bhld, Causal::bottom_right},  // rows with no key
      {1, 2, 2, 150, 40, 16, 16, AttentionLayout::bhld, Causal::top_left},
      {2, 2, 2, 70, 90, 64, 64, AttentionLayout::bhld, Causal::none, "bool"},
      {1, 3, 3, 31, 200, 64, 64, AttentionLayout::bhld, Causal::top_left, "bias"},
      {2, 2, 1, 66, 100, 64, 64, AttentionLayout::blhd, Causal::none, "padding"},
      {1, 2, 2, 100, 100, 256, 256},
      {2, 2, 2, 50, 70, 64, 64, AttentionLayout::bhld, Causal::top_left, "", DType::bf16},
      {2, 4, 2, 70, 90, 32, 32, AttentionLayout::bhld, Causal::none, "bias", DType::f32, 0.3},
      {1, 2, 2, 65, 129, 64, 64, AttentionLayout::blhd, Causal::top_left, "bool", DType::f32, 0.1},
      // Decode-sized tiles (<= 4 rows) read k and v in place.
      {2, 4, 2, 3, 300, 80, 48, AttentionLayout::bhld, Causal::bottom_right, "padding"},
      {1, 4, 1, 2, 200, 64, 64, AttentionLayout::blhd, Causal::none, "bool", DType::bf16},
      {1, 2, 2, 4, 150, 64, 64, AttentionLayout::bhld, Causal::none, "", DType::f32, 0.2, "softcap"},
      // One query with grouped heads: the group's heads are the rows of one tile.
      {2, 8, 2, 1, 333, 128, 128, AttentionLayout::bhld, Causal::bottom_right, "padding"},
      {1, 6, 3, 1, 70, 64, 32, AttentionLayout::blhd, Causal::none, "", DType::bf16},
      {2, 2, 2, 200, 200, 32, 32, AttentionLayout::bhld, Causal::none, "", DType::f32, 0, "window"},
      {1, 2, 2, 150, 150, 64, 64, AttentionLayout::blhd, Causal::none, "padding", DType::f32, 0, "prefix"},
      {2, 2, 1, 180, 180, 32, 32, AttentionLayout::bhld, Causal::none, "", DType::f32, 0, "document"},
      {1, 3, 3, 90, 130, 16, 16, AttentionLayout::bhld, Causal::none, "", DType::f32, 0, "custom_or"},
      {2, 2, 2, 70, 100, 32, 32, AttentionLayout::bhld, Causal::none, "bias", DType::f32, 0, "softcap"},
      {1, 6, 2, 90, 150, 64, 64, AttentionLayout::blhd, Causal::bottom_right, "", DType::f32, 0, "alibi"},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) check_case(c, seed++);
}

INSTANTIATE_TEST_SUITE_P(EveryTarget, AttentionTargets,
                         ::testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                         [](const ::testing::TestParamInfo<int64_t>& info) {
                           return std::string(hwy::TargetName(info.param));
                         });

TEST(Attention, EmptyAndHugeLogits) {
  Generator gen(5);
  // Lk = 0: every row fully masked -> output 0, lse -inf.
  AttentionResult r = attention(randn({1, 2, 3, 8}, gen), Tensor::zeros({1, 2, 0, 8}),
                                Tensor::zeros({1, 2, 0, 8}), {.return_lse = true});
  for (double x : r.output.to_values()) EXPECT_EQ(x, 0.0);
  for (double x : r.lse.to_values()) EXPECT_EQ(x, -std::numeric_limits<double>::infinity());
  // Lq = 0.
  EXPECT_EQ(attention(Tensor::zeros({1, 2, 0, 8}), randn({1, 2, 5, 8}, gen), randn({1, 2, 5, 8}, gen))
                .output.numel(),
            0);
  // Logits of +-1e4 stay finite and match the oracle.
  Tensor q = scale(randn({1, 1, 17, 4}, gen), 100.0), k = scale(randn({1, 1, 19, 4}, gen), 100.0);
  Tensor v = randn({1, 1, 19, 4}, gen);
  const auto fused = attention(q, k, v, {.scale = 1.0}).output.to_values();
  const auto ref = attention_reference(q, k, v, {.scale = 1.0}).output.to_values();
  for (size_t i = 0; i < fused.size(); ++i) {
    ASSERT_TRUE(std::isfinite(fused[i]));
    ASSERT_NEAR(fused[i], ref[i], 1e-4);
  }
}

TEST(Attention, ModifiedCausalEqualsBuiltInCausal) {
  Generator gen(4);
  const Tensor q = randn({1, 2, 100, 32}, gen), k = randn({1, 2, 100, 32}, gen),
               v = randn({1, 2, 100, 32}, gen);
  const auto a = attention(q, k, v, {.causal = Causal::top_left}).output.to_values();
  const auto b = attention(q, k, v, {.mask_mod = causal_mask()}).output.to_values();
  EXPECT_EQ(a, b);  // the same blocks, the same arithmetic
}

// Counts the key blocks the kernel really computes: the score modifier is
// applied once per computed block.
class CountingScore : public ScoreMod {
 public:
  double score(double s, int64_t, int64_t, int64_t, int64_t) const override { return s; }
  bool needs_raw_scores() const override { return false; }
  void apply(const AttentionBlock&, float*, int64_t) const override { ++blocks; }
  mutable std::atomic<int64_t> blocks{0};
};

TEST(Attention, SlidingWindowSkipsHiddenBlocks) {
  Generator gen(6);
  const int64_t L = 2048, w = 128;
  const Tensor q = randn({1, 1, L, 32}, gen), k = randn({1, 1, L, 32}, gen), v = randn({1, 1, L, 32}, gen);
  auto counter = std::make_shared<CountingScore>();
  attention(q, k, v, {.mask_mod = sliding_window_mask(w, 0), .score_mod = counter});
  // Each 64-query tile sees at most (w + 64) / 64 + 1 key blocks of 64.
  const int64_t tiles = L / 64, all_blocks = tiles * (L / 64);
  EXPECT_LE(counter->blocks.load(), tiles * ((w + 64) / 64 + 1));
  EXPECT_LT(counter->blocks.load() * 8, all_blocks);
}

TEST(Attention, DecodeSplitsKeysAcrossThreads) {
  // One query against a long KV is a single (batch, head, tile) task: the keys
  // are split across the threads and the partial softmaxes merged.
  const int saved = num_threads();
  set_num_threads(2);
  Generator gen(9);
  for (const auto causal : {Causal::none, Causal::bottom_right}) {
    const Tensor q = randn({1, 1, 1, 128}, gen), k = randn({1, 1, 5000, 128}, gen),
                 v = randn({1, 1, 5000, 128}, gen);
    Tensor pad = Tensor::zeros({1, 5000}, DType::boolean);
    for (int64_t j = 1000; j < 3000; ++j) pad.data<bool>()[j] = true;  // a whole split hidden
    const AttentionOptions options{.causal = causal, .key_padding_mask = pad, .return_lse = true};
    const AttentionResult fused = attention(q, k, v, options);
    const AttentionResult ref = attention_reference(q, k, v, options);
    const auto out = fused.output.to_values(), want = ref.output.to_values();
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5);
    EXPECT_NEAR(fused.lse.item(), ref.lse.item(), 1e-5 * std::abs(ref.lse.item()));
  }
  set_num_threads(saved);
}

TEST(Attention, DropoutMaskIsSeededAndHasTheRightRate) {
  const Tensor a = attention_dropout_mask(2, 3, 64, 128, 0.25, 11);
  const Tensor b = attention_dropout_mask(2, 3, 64, 128, 0.25, 11);
  const Tensor c = attention_dropout_mask(2, 3, 64, 128, 0.25, 12);
  EXPECT_EQ(a.to_values(), b.to_values());
  EXPECT_NE(a.to_values(), c.to_values());
  double kept = 0;
  for (double x : a.to_values()) kept += x;
  EXPECT_NEAR(kept / a.numel(), 0.75, 0.01);
  // Heads draw different masks.
  EXPECT_NE(a.select(1, 0).to_values(), a.select(1, 1).to_values());
}

TEST(Attention, ErrorsNameTheArgument) {
  const Tensor q = Tensor::zeros({1, 4, 8, 16}), k = Tensor::zeros({1, 3, 8, 16});
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { attention(q, k, k); }).find("not a multiple"), std::string::npos);
  EXPECT_NE(message([&] { attention(q, Tensor::zeros({1, 4, 8, 8}), q); }).find("head dim"),
            std::string::npos);
  EXPECT_NE(message([&] { attention(q.select(0, 0), q, q); }).find("argument q"), std::string::npos);
  EXPECT_NE(message([&] { attention(q.to(DType::f16), q, q); }).find("f16"), std::string::npos);
  EXPECT_NE(message([&] { attention(q, q, q, {.mask = Tensor::zeros({3, 8})}); }).find("mask"),
            std::string::npos);
  EXPECT_NE(message([&] {
              attention(q, q, q, {.key_padding_mask = Tensor::zeros({1, 8})});
            }).find("key_padding_mask"),
            std::string::npos);
}

}  // namespace
}  // namespace qkv
