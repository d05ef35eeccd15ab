// nn::Attention as every model's attention layer: the families' parameter
// names (torch, nanoGPT, BERT), the self-attention call against torch's
// three-input forward (values and every gradient, packed op or not), packed
// against separate projections, the KV cache against the full causal
// forward, the weights of a call, model-driven dropout, and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "qkv/layers.h"
#include "support/compare.h"

namespace qkv::nn {
namespace {

using autograd::Variable;

using test_support::max_abs_diff;
constexpr auto names = test_support::parameter_names;

// Every parameter away from its initial value (zero biases included).
void perturb(Module& m, Generator& gen) {
  for (const auto& [name, p] : m.named_parameters()) {
    Tensor v = p.value();
    v.copy_(scale(randn(v.shape(), gen), 0.3));
  }
}

TEST(AttentionLayer, FamilyNames) {
  Generator gen(0);
  Attention gpt({.embed_dim = 8, .num_heads = 2, .names = AttentionNames::nanogpt()}, gen);
  EXPECT_EQ(names(gpt), (std::vector<std::string>{"c_attn.weight", "c_attn.bias",
                                                  "c_proj.weight", "c_proj.bias"}));
  EXPECT_EQ(gpt.packed_weight().shape(), (Shape{24, 8}));
  Attention bert({.embed_dim = 8, .num_heads = 2, .names = AttentionNames::bert()}, gen);
  EXPECT_EQ(names(bert),
            (std::vector<std::string>{"self.query.weight", "self.query.bias", "self.key.weight",
                                      "self.key.bias", "self.value.weight", "self.value.bias",
                                      "output.dense.weight", "output.dense.bias"}));
  EXPECT_FALSE(bert.packed_weight().defined());
  EXPECT_EQ(bert.separate_bias(2).shape(), (Shape{8}));
  // nanoGPT's names have no separate projections for kdim != embed_dim.
  EXPECT_THROW(Attention({.embed_dim = 8, .num_heads = 2, .kdim = 3,
                          .names = AttentionNames::nanogpt()},
                         gen),
               Error);
}

TEST(AttentionLayer, InitNoneDrawsNothing) {
  Generator a(7), b(7);
  Attention layer({.embed_dim = 8, .num_heads = 2, .init = AttentionInit::none}, a);
  EXPECT_EQ(a.next_u64(), b.next_u64());
}

struct CallCase {
  const char* name;
  AttentionVariant variant;
  AttentionMasks masks;
  bool batch_first = true;
};

// forward(x, call) is forward(x, x, x, masks): the packed op (softmax with
// no, rotary or ALiBi positions) and the general path (T5) alike.
TEST(AttentionLayer, SelfAttentionCallEqualsTheThreeInputForward) {
  const int64_t b = 2, l = 5, e = 12, h = 3;
  Tensor padding = Tensor::zeros({b, l}, DType::boolean);
  padding.data<bool>()[l - 1] = true;  // the first row's last key is padding
  Generator mask_gen(3);
  const Tensor float_mask = scale(randn({l, l}, mask_gen), 0.5);
  AttentionVariant rotary;
  rotary.positions = AttentionPositions::rotary;
  AttentionVariant alibi;
  alibi.positions = AttentionPositions::alibi;
  AttentionVariant t5;
  t5.positions = AttentionPositions::t5;
  const std::vector<CallCase> cases = {
      {"plain", {}, {}},
      {"causal", {}, {.is_causal = true}},
      {"padding", {}, {.key_padding_mask = padding}},
      {"float mask", {}, {.attn_mask = float_mask}},
      {"rotary causal", rotary, {.is_causal = true}},
      {"alibi", alibi, {.key_padding_mask = padding}},
      {"t5", t5, {.is_causal = true}},
      {"sequence first", {}, {.is_causal = true}, false},
  };
  for (const CallCase& c : cases) {
    SCOPED_TRACE(c.name);
    Generator gen(11);
    AttentionConfig config{.embed_dim = e, .num_heads = h, .batch_first = c.batch_first};
    static_cast<AttentionVariant&>(config) = c.variant;
    Attention layer(config, gen);
    perturb(layer, gen);
    const Shape shape = c.batch_first ? Shape{b, l, e} : Shape{l, b, e};
    const Tensor x_value = randn(shape, gen);
    const Tensor g = randn(shape, gen);
    auto run = [&](bool call) {
      layer.zero_grad();
      const Variable x(x_value.clone(), true);
      const Variable y = call ? layer.forward(x, AttentionCall{.masks = c.masks})
                              : layer.forward(x, x, x, c.masks);
      y.backward(g);
      std::vector<Tensor> out{y.value(), x.grad()};
      for (const auto& [name, p] : layer.named_parameters()) out.push_back(p.grad());
      return out;
    };
    const std::vector<Tensor> want = run(false), got = run(true);
    ASSERT_EQ(want.size(), got.size());
    EXPECT_LE(max_abs_diff(got[0], want[0]), 1e-5);
    for (size_t i = 1; i < want.size(); ++i) EXPECT_LE(max_abs_diff(got[i], want[i]), 1e-4) << i;
  }
}

// BERT's separate q, k, v equal the packed layer they were cut from, in f32
// with gradient and in bf16 inference (the stacked product) within bf16.
TEST(AttentionLayer, SeparateProjectionsEqualPacked) {
  const int64_t b = 2, l = 6, e = 16, h = 4;
  Generator gen(5);
  Attention packed({.embed_dim = e, .num_heads = h, .batch_first = true}, gen);
  perturb(packed, gen);
  Attention separate(
      {.embed_dim = e, .num_heads = h, .batch_first = true, .names = AttentionNames::bert()}, gen);
  for (int i = 0; i < 3; ++i) {
    Tensor w = separate.separate_weight(i).value(), bias = separate.separate_bias(i).value();
    w.copy_(packed.packed_weight().value().narrow(0, i * e, e));
    bias.copy_(packed.packed_bias().value().narrow(0, i * e, e));
  }
  Tensor ow = separate.output_projection().weight().value();
  Tensor ob = separate.output_projection().bias().value();
  ow.copy_(packed.output_projection().weight().value());
  ob.copy_(packed.output_projection().bias().value());

  const Variable x(randn({b, l, e}, gen));
  const AttentionCall call{.masks = {.is_causal = true}};
  const Tensor want = packed.forward(x, call).value();
  EXPECT_LE(max_abs_diff(separate.forward(x, call).value(), want), 1e-5);
  autograd::NoGradGuard no_grad;
  autograd::AutocastGuard bf16;
  EXPECT_LE(max_abs_diff(separate.forward(x, call).value(), want), 5e-2);
}

// Decoding in chunks through the cache equals the full causal forward.
TEST(AttentionLayer, CacheEqualsTheFullCausalForward) {
  const int64_t b = 2, l = 7, e = 8, h = 2;
  for (const bool rotary : {false, true}) {
    SCOPED_TRACE(rotary ? "rotary" : "no positions");
    Generator gen(9);
    AttentionConfig config{.embed_dim = e, .num_heads = h, .batch_first = true};
    if (rotary) config.positions = AttentionPositions::rotary;
    Attention layer(config, gen);
    perturb(layer, gen);
    const Tensor x = randn({b, l, e}, gen);
    autograd::NoGradGuard no_grad;
    const Tensor full = layer.forward(Variable(x), AttentionCall{.masks = {.is_causal = true}}).value();
    AttentionCache cache(b, h, l, e / h);
    int64_t start = 0;
    for (const int64_t n : {3, 1, 2, 1}) {
      const Tensor part =
          layer
              .forward(Variable(x.narrow(1, start, n).contiguous()),
                       AttentionCall{.masks = {.is_causal = true}, .cache = &cache})
              .value();
      EXPECT_LE(max_abs_diff(part, full.narrow(1, start, n).contiguous()), 1e-5) << start;
      start += n;
      EXPECT_EQ(cache.length(), start);
    }
  }
}

// A cross-attention cache projects the memory once; later calls need no memory.
TEST(AttentionLayer, CrossAttentionCacheEqualsTheThreeInputForward) {
  const int64_t b = 2, lq = 4, ls = 6, e = 8;
  for (const bool batch_first : {true, false}) {
    SCOPED_TRACE(batch_first ? "batch first" : "sequence first");
    Generator gen(6);
    Attention layer({.embed_dim = e, .num_heads = 2, .batch_first = batch_first}, gen);
    perturb(layer, gen);
    auto seq = [&](int64_t l) { return batch_first ? Shape{b, l, e} : Shape{l, b, e}; };
    const Tensor query = randn(seq(lq), gen), memory = randn(seq(ls), gen);
    Tensor padding = Tensor::zeros({b, ls}, DType::boolean);
    padding.data<bool>()[ls - 1] = true;
    const AttentionMasks masks{.key_padding_mask = padding};
    autograd::NoGradGuard no_grad;
    const Tensor want = layer.forward(Variable(query), Variable(memory), Variable(memory), masks).value();
    AttentionCache cache;  // takes the memory's sizes
    const int bdim = batch_first ? 1 : 0;
    const Tensor first =
        layer.forward(Variable(query.narrow(bdim, 0, 1).contiguous()), Variable(memory),
                      {.masks = masks, .cache = &cache})
            .value();
    EXPECT_EQ(cache.length(), ls);
    const Tensor rest = layer.forward(Variable(query.narrow(bdim, 1, lq - 1).contiguous()),
                                      Variable(), {.masks = masks, .cache = &cache})
                            .value();
    EXPECT_LE(max_abs_diff(first, want.narrow(bdim, 0, 1).contiguous()), 1e-5);
    EXPECT_LE(max_abs_diff(rest, want.narrow(bdim, 1, lq - 1).contiguous()), 1e-5);
  }
}

TEST(AttentionLayer, CallWeightsAreEveryHeads) {
  Generator gen(2);
  Attention layer({.embed_dim = 8, .num_heads = 2, .batch_first = true}, gen);
  const Variable x(randn({1, 4, 8}, gen));
  Tensor weights;
  const AttentionMasks masks{.is_causal = true};
  layer.forward(x, AttentionCall{.masks = masks, .weights = &weights});
  const Tensor want = layer.forward_with_weights(x, x, x, masks, false).weights;
  EXPECT_EQ(weights.shape(), (Shape{1, 2, 4, 4}));
  EXPECT_LE(max_abs_diff(weights, want), 1e-6);
}

// A layer made with AttentionInit::none drops out only with the call's seed.
TEST(AttentionLayer, ModelDrivenDropout) {
  Generator gen(4);
  Attention layer({.embed_dim = 8,
                   .num_heads = 2,
                   .dropout = 0.5,
                   .batch_first = true,
                   .init = AttentionInit::none},
                  gen);
  perturb(layer, gen);
  const Variable x(randn({2, 6, 8}, gen));
  layer.eval();
  const Tensor off = layer.forward(x, AttentionCall{}).value();
  layer.train();
  EXPECT_EQ(max_abs_diff(layer.forward(x, AttentionCall{}).value(), off), 0.0);
  const Tensor a = layer.forward(x, AttentionCall{.dropout_seed = 17}).value();
  EXPECT_GT(max_abs_diff(a, off), 1e-3);
  EXPECT_EQ(max_abs_diff(layer.forward(x, AttentionCall{.dropout_seed = 17}).value(), a), 0.0);
}

TEST(AttentionLayer, CacheErrors) {
  Generator gen(1);
  Attention layer({.embed_dim = 8, .num_heads = 2, .batch_first = true}, gen);
  AttentionCache cache(1, 2, 4, 4);
  const Variable x(randn({1, 3, 8}, gen));
  const AttentionCall call{.masks = {.is_causal = true}, .cache = &cache};
  EXPECT_THROW(layer.forward(x, call), Error);  // records gradients: refused
  autograd::NoGradGuard no_grad;
  layer.forward(x, call);
  EXPECT_THROW(layer.forward(x, call), Error);  // 3 + 3 > capacity 4
  EXPECT_EQ(cache.length(), 3);
  AttentionCache other_heads(1, 4, 8, 2);
  EXPECT_THROW(layer.forward(x, {.cache = &other_heads}), Error);
  AttentionCache roomy(1, 2, 8, 4);
  // The key-padding mask spans every cached key: [1, 3] here, not [1, 2].
  EXPECT_THROW(layer.forward(x, {.masks = {.key_padding_mask = Tensor::zeros({1, 2}, DType::boolean)},
                                 .cache = &roomy}),
               Error);
  Tensor weights;
  EXPECT_THROW(layer.forward(x, {.cache = &roomy, .weights = &weights}), Error);
  AttentionConfig t5{.embed_dim = 8, .num_heads = 2, .batch_first = true};
  t5.positions = AttentionPositions::t5;
  Attention t5_layer(t5, gen);
  EXPECT_THROW(t5_layer.forward(x, {.cache = &roomy}), Error);
  EXPECT_THROW(AttentionCache(0, 2, 4, 4), Error);
  AttentionCache empty_cross;
  EXPECT_THROW(layer.forward(x, Variable(), {.cache = &empty_cross}), Error);  // no memory
  EXPECT_THROW(KVCache(0, 1, 2, 4, 4), Error);
}

}  // namespace
}  // namespace qkv::nn
