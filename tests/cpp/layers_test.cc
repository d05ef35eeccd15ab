// The Transformer layers: torch's names and shapes, gradients of a small
// encoder layer against central finite differences, training mode, errors.
#include "qkv/layers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "support/compare.h"

namespace qkv::nn {
namespace {

using autograd::Variable;

constexpr auto names = test_support::parameter_names;
using test_support::max_abs_diff;

TEST(Layers, TorchNamesAndShapes) {
  Generator gen(0);
  Transformer t({.d_model = 16,
                 .nhead = 2,
                 .num_encoder_layers = 1,
                 .num_decoder_layers = 2,
                 .dim_feedforward = 24},
                gen);
  const std::vector<std::string> n = names(t);
  EXPECT_EQ(n.size(), 12u + 2 + 2 * 18 + 2);  // encoder layer, norm, decoder layers, norm
  EXPECT_EQ(n.front(), "encoder.layers.0.self_attn.in_proj_weight");
  EXPECT_EQ(n.back(), "decoder.norm.bias");
  const auto state = t.state_dict();
  EXPECT_EQ(state.at("decoder.layers.1.multihead_attn.in_proj_weight").shape(), (Shape{48, 16}));
  EXPECT_EQ(state.at("decoder.layers.1.linear1.weight").shape(), (Shape{24, 16}));
  EXPECT_EQ(state.at("encoder.layers.0.norm2.bias").shape(), (Shape{16}));
  EXPECT_TRUE(state.count("decoder.layers.0.norm3.weight"));

  Attention separate({.embed_dim = 8, .num_heads = 2, .bias = false, .kdim = 3, .vdim = 5}, gen);
  EXPECT_EQ(names(separate), (std::vector<std::string>{"q_proj_weight", "k_proj_weight",
                                                       "v_proj_weight", "out_proj.weight"}));
  FeedForward swiglu({.d_model = 4, .d_ff = 6, .activation = Activation::swiglu, .bias = false},
                     gen);
  EXPECT_EQ(names(swiglu), (std::vector<std::string>{"w1.weight", "w2.weight", "w3.weight"}));
}

// d loss / d (every parameter element, and the input) of a small post-norm
// GELU encoder layer with a padding mask, against central differences.
TEST(Layers, EncoderLayerGradientsMatchFiniteDifferences) {
  Generator gen(1);
  TransformerEncoderLayer layer({.d_model = 8,
                                 .nhead = 2,
                                 .dim_feedforward = 12,
                                 .dropout = 0.0,
                                 .activation = Activation::gelu,
                                 .batch_first = true},
                                gen);
  // Off the defaults (norm weights 1, biases 0) so every parameter matters.
  for (auto& [name, p] : layer.named_parameters()) {
    Tensor t = p.value();
    t.copy_(add(t, scale(randn(t.shape(), gen), 0.2)));
  }
  const Tensor x = randn({2, 3, 8}, gen), w = randn({2, 3, 8}, gen);
  Tensor pad = Tensor::zeros({2, 3}, DType::boolean);
  pad.data<bool>()[5] = true;  // batch 1, key 2
  const AttentionMasks masks{.key_padding_mask = pad};
  auto loss = [&](const Variable& input) {
    return autograd::sum(autograd::mul(layer.forward(input, masks), Variable(w)));
  };
  Variable input(x.clone(), true);
  loss(input).backward();

  auto check = [&](const std::string& what, Tensor values, const Tensor& analytic) {
    ASSERT_TRUE(analytic.defined()) << what;
    double scale = 1e-3;
    for (double g : analytic.to_values()) scale = std::max(scale, std::fabs(g));
    const std::vector<double> a = analytic.to_values();
    float* p = values.data<float>();
    // Up to 8 elements per tensor, spread over it (the whole check stays fast).
    const int64_t step = std::max<int64_t>(1, values.numel() / 8);
    for (int64_t i = step / 2; i < values.numel(); i += step) {
      const float saved = p[i];
      const double h = 1e-2;
      autograd::NoGradGuard no_grad;
      p[i] = static_cast<float>(saved + h);
      const double up = loss(Variable(input.value())).value().item();
      p[i] = static_cast<float>(saved - h);
      const double down = loss(Variable(input.value())).value().item();
      p[i] = saved;
      EXPECT_NEAR(a[static_cast<size_t>(i)], (up - down) / (2 * h), 2e-2 * scale)
          << what << " element " << i;
    }
  };
  for (const auto& [name, p] : layer.named_parameters()) check(name, p.value(), p.grad());
  check("src", input.value(), input.grad());
}

// Decoding a target in steps through the DecoderCache equals the decoder's
// causal forward over the whole target (post-norm and pre-norm).
TEST(Layers, DecoderCachedDecodingEqualsTheFullForward) {
  const int64_t b = 2, lt = 6, ls = 5, d = 8;
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    Generator gen(12);
    TransformerDecoder decoder({.layer = {.d_model = d,
                                          .nhead = 2,
                                          .dim_feedforward = 12,
                                          .dropout = 0.1,
                                          .batch_first = true,
                                          .norm_first = norm_first},
                                .num_layers = 2,
                                .norm = true},
                               gen);
    decoder.eval();
    const Tensor tgt = randn({b, lt, d}, gen), memory = randn({b, ls, d}, gen);
    Tensor padding = Tensor::zeros({b, ls}, DType::boolean);
    padding.data<bool>()[ls - 1] = true;
    const AttentionMasks memory_masks{.key_padding_mask = padding};
    autograd::NoGradGuard no_grad;
    const Tensor want =
        decoder.forward(Variable(tgt), Variable(memory), {.is_causal = true}, memory_masks).value();
    DecoderCache cache = decoder.make_cache(b, lt);
    int64_t start = 0;
    for (const int64_t n : {2, 1, 3}) {
      const Variable mem = start == 0 ? Variable(memory) : Variable();
      const Tensor got = decoder
                             .forward_cached(Variable(tgt.narrow(1, start, n).contiguous()), mem,
                                             cache, memory_masks)
                             .value();
      EXPECT_LE(max_abs_diff(got, want.narrow(1, start, n).contiguous()), 1e-5) << start;
      start += n;
      EXPECT_EQ(cache.length(), start);
    }
    decoder.train();
    EXPECT_THROW(decoder.forward_cached(Variable(tgt.narrow(1, 0, 1).contiguous()), Variable(memory),
                                        cache),
                 Error);  // training mode
  }
}

TEST(Layers, DropoutOnlyInTrainingAndSeeded) {
  Generator a(7), b(7);
  Dropout da({0.5}, a), db({0.5}, b);
  const Variable x(Tensor::ones({256}));
  const std::vector<double> ya = da.forward(x).value().to_values();
  EXPECT_EQ(ya, db.forward(x).value().to_values());
  const auto zeros = std::count(ya.begin(), ya.end(), 0.0);
  EXPECT_GT(zeros, 90);
  EXPECT_LT(zeros, 166);
  da.eval();
  EXPECT_EQ(da.forward(x).value().to_values(), x.value().to_values());
  TransformerEncoderLayer layer({.d_model = 8, .nhead = 2, .dim_feedforward = 8}, a);
  layer.eval();
  for (const auto& [name, p] : layer.named_parameters()) EXPECT_TRUE(p.requires_grad()) << name;
}

TEST(Layers, ErrorsNameModuleArgumentAndShapes) {
  Generator gen(2);
  TransformerEncoderLayer layer(
      {.d_model = 64, .nhead = 4, .dim_feedforward = 32, .batch_first = true}, gen);
  try {
    layer.forward(Variable(Tensor::zeros({2, 5, 48})));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "TransformerEncoderLayer: src has shape [2, 5, 48]; expected d_model 64"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(layer.forward(Variable(Tensor::zeros({2, 5, 64})),
                             {.key_padding_mask = Tensor::zeros({2, 4}, DType::boolean)}),
               Error);
  EXPECT_THROW(Attention({.embed_dim = 10, .num_heads = 4}, gen), Error);
  EXPECT_THROW(Embedding({.num_embeddings = 4, .embedding_dim = 2, .padding_idx = 4}, gen), Error);
  auto state = layer.state_dict();
  state.erase("norm1.bias");
  EXPECT_THROW(layer.load_state_dict(state), Error);
  EXPECT_EQ(layer.load_state_dict(state, false).missing, (std::vector<std::string>{"norm1.bias"}));
}

}  // namespace
}  // namespace qkv::nn
