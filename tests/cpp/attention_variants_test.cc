// Every attention variant (qkv/attention_variant.h) under autograd: the
// nn::Attention module equals nn::MultiHeadAttention (explicit backward) with
// the same weights, forward and every gradient; its learned tensors pass
// gradcheck in f64; a Transformer layer with a variant trains.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "qkv/gradcheck.h"
#include "qkv/layers.h"
#include "support/explicit_attention.h"
#include "qkv/optim.h"
#include "qkv/sparse_masks.h"
#include "qkv/trainer.h"

namespace qkv::nn {
namespace {

using autograd::Variable;

struct Case {
  std::string name;
  AttentionVariant variant;
  bool causal = false;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  auto add = [&](std::string name, auto change, bool causal = false) {
    AttentionVariant v;
    change(v);
    out.push_back({std::move(name), v, causal});
  };
  add("plain", [](AttentionVariant&) {});
  add("sliding window", [](AttentionVariant& v) { v.mask_mod = sliding_window_mask(1, 1); });
  add(
      "alibi causal", [](AttentionVariant& v) { v.positions = AttentionPositions::alibi; }, true);
  add("t5", [](AttentionVariant& v) {
    v.positions = AttentionPositions::t5;
    v.t5 = {.num_buckets = 6, .max_distance = 8};
  });
  add("rotary", [](AttentionVariant& v) { v.positions = AttentionPositions::rotary; });
  add("shaw", [](AttentionVariant& v) {
    v.positions = AttentionPositions::shaw;
    v.shaw_max_distance = 2;
  });
  add(
      "shaw causal",
      [](AttentionVariant& v) {
        v.positions = AttentionPositions::shaw;
        v.shaw_max_distance = 2;
      },
      true);
  for (bool per_head : {false, true})
    add(per_head ? "linformer per head" : "linformer", [per_head](AttentionVariant& v) {
      v.kernel = AttentionKernel::linformer;
      v.max_length = 5;
      v.linformer_k = 3;
      v.linformer_per_head = per_head;
    });
  for (bool causal : {false, true}) {
    add(
        "linear", [](AttentionVariant& v) { v.kernel = AttentionKernel::linear; }, causal);
    add(
        "performer",
        [](AttentionVariant& v) {
          v.kernel = AttentionKernel::performer;
          v.performer_features = 8;
        },
        causal);
  }
  return out;
}

AttentionConfig layer_config(const AttentionVariant& variant) {
  AttentionConfig c{.embed_dim = 8, .num_heads = 2, .batch_first = true};
  static_cast<AttentionVariant&>(c) = variant;
  return c;
}

double max_difference(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const std::vector<double> x = a.to_values(), y = b.to_values();
  double worst = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
    worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

TEST(AttentionVariants, AutogradLayerEqualsTheExplicitBackward) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name + (c.causal ? " (causal)" : ""));
    Generator gen(3);
    Attention layer(layer_config(c.variant), gen);
    MultiHeadAttentionConfig explicit_config{.embed_dim = 8, .num_heads = 2, .batch_first = true};
    static_cast<AttentionVariant&>(explicit_config) = c.variant;
    MultiHeadAttention reference(explicit_config, gen);
    reference.load_state_dict(layer.state_dict());

    const Variable x(randn({2, 5, 8}, gen), true);
    const Variable out = layer.forward(x, x, x, {.is_causal = c.causal});
    const MultiHeadAttentionOutput want = reference.forward({.query = x.value(),
                                                             .key = x.value(),
                                                             .value = x.value(),
                                                             .is_causal = c.causal,
                                                             .need_weights = false});
    EXPECT_LT(max_difference(out.value(), want.output), 1e-6);

    const Tensor g = randn(out.shape(), gen);
    out.backward(g);
    const MultiHeadAttentionGradients grads = reference.backward(g);
    // x is query, key and value at once.
    const Tensor dx = add(add(grads.query, grads.key), grads.value);
    EXPECT_LT(max_difference(x.grad(), dx), 1e-5);
    for (const auto& [name, p] : layer.named_parameters()) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(p.grad().defined());
      EXPECT_LT(max_difference(p.grad(), grads.parameters.at(name)), 1e-5);
    }
  }
}

TEST(AttentionVariants, WeightsOfTheSoftmaxVariants) {
  for (const Case& c : cases()) {
    if (c.variant.kernel != AttentionKernel::softmax) continue;
    SCOPED_TRACE(c.name);
    Generator gen(4);
    Attention layer(layer_config(c.variant), gen);
    const Variable x(randn({1, 5, 8}, gen));
    const Attention::WithWeights w =
        layer.forward_with_weights(x, x, x, {.is_causal = c.causal}, /*average=*/false);
    ASSERT_EQ(w.weights.shape(), (Shape{1, 2, 5, 5}));
    const std::vector<double> p = w.weights.to_values();
    for (int64_t row = 0; row < 10; ++row) {
      double total = 0;
      for (int64_t j = 0; j < 5; ++j) total += p[row * 5 + j];
      EXPECT_NEAR(total, 1.0, 1e-5);
    }
    EXPECT_LT(
        max_difference(w.output.value(), layer.forward(x, x, x, {.is_causal = c.causal}).value()),
        1e-6);
  }
  Generator gen(5);
  AttentionVariant linear;
  linear.kernel = AttentionKernel::linear;
  Attention layer(layer_config(linear), gen);
  const Variable x(randn({1, 5, 8}, gen));
  EXPECT_THROW(layer.forward_with_weights(x, x, x), Error);  // no weights to give
}

TEST(AttentionVariants, GradcheckInF64) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name + (c.causal ? " (causal)" : ""));
    Generator gen(6);
    Attention layer(layer_config(c.variant), gen);
    layer.to(DType::f64);
    const Variable x(randn({2, 5, 8}, gen, DType::f64), true);
    std::vector<Variable> leaves{x};
    for (const Variable& p : layer.parameters()) leaves.push_back(p);
    // Performer's stabiliser is a constant in its backward (see
    // linear_attention.h): exact only up to its eps, so torch's tolerances.
    const bool performer = c.variant.kernel == AttentionKernel::performer;
    autograd::GradcheckOptions options{.max_elements = 6, .directions = 2};
    if (!performer) {
      options.atol = 1e-7;
      options.rtol = 1e-6;
    }
    const autograd::GradcheckResult r = autograd::gradcheck(
        [&] { return layer.forward(x, x, x, {.is_causal = c.causal}); }, leaves, options);
    EXPECT_TRUE(r) << r.failures;
  }
}

TEST(AttentionVariants, EncoderLayerWithAVariantTrains) {
  for (AttentionPositions positions :
       {AttentionPositions::alibi, AttentionPositions::t5, AttentionPositions::shaw}) {
    Generator gen(7);
    TransformerLayerConfig config{
        .d_model = 16, .nhead = 2, .dim_feedforward = 32, .dropout = 0.0, .batch_first = true};
    config.self_attention.positions = positions;
    config.self_attention.shaw_max_distance = 3;
    TransformerEncoderLayer layer(config, gen);
    const auto names = layer.state_dict();
    EXPECT_EQ(names.count("self_attn.relative_attention_bias.weight"),
              positions == AttentionPositions::t5 ? 1u : 0u);
    EXPECT_EQ(names.count("self_attn.relative_key"),
              positions == AttentionPositions::shaw ? 1u : 0u);
    AdamW optimizer(optimizer_parameters(layer), {.lr = 1e-2});
    Trainer trainer(layer, optimizer, 1e-2);
    const Tensor x = randn({4, 6, 16}, gen), target = randn({4, 6, 16}, gen);
    double first = 0, last = 0;
    for (int step = 0; step < 30; ++step)
      (step == 0 ? first : last) = trainer.step(
          [&] { return autograd::mse_loss(layer.forward(Variable(x)), Variable(target)); });
    EXPECT_LT(last, 0.8 * first) << "positions " << static_cast<int>(positions);
  }
}

TEST(AttentionVariants, PerformerFeaturesRedraw) {
  Generator gen(9);
  AttentionVariant performer;
  performer.kernel = AttentionKernel::performer;
  performer.performer_features = 16;
  Attention layer(layer_config(performer), gen);
  const Variable x(randn({1, 6, 8}, gen));
  const Tensor a = layer.forward(x, x, x).value();
  layer.redraw_features(5);
  const Tensor b = layer.forward(x, x, x).value();
  layer.redraw_features(0);  // the first draw again (performer_seed 0)
  const Tensor c = layer.forward(x, x, x).value();
  EXPECT_GT(max_difference(a, b), 0);
  EXPECT_EQ(max_difference(a, c), 0);
  Attention plain(layer_config({}), gen);
  EXPECT_THROW(plain.redraw_features(1), Error);
}

TEST(AttentionVariants, ErrorsNameTheProblem) {
  Generator gen(8);
  AttentionVariant v;
  v.kernel = AttentionKernel::linear;
  v.positions = AttentionPositions::alibi;
  try {
    Attention layer(layer_config(v), gen);
    ADD_FAILURE() << "ALiBi with a linear kernel was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("need the softmax kernel"), std::string::npos) << e.what();
  }
  AttentionVariant linear;
  linear.kernel = AttentionKernel::linear;
  Attention layer(layer_config(linear), gen);
  const Variable x(randn({1, 4, 8}, gen));
  Tensor padding = Tensor::zeros({1, 4}, DType::boolean);
  try {
    layer.forward(x, x, x, {.key_padding_mask = padding});
    ADD_FAILURE() << "a key padding mask was accepted by the linear kernel";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("takes no attn_mask or key_padding_mask"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace qkv::nn
