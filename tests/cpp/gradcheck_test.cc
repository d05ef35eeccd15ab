// gradcheck in f64 (finite differences in double) for every differentiable
// op and every module: the backward each op records, and the gradients of
// whole modules after Module::to(DType::f64), against central differences of
// the forward. Inputs avoid the kinks (relu at 0) by more than the step.
#include "qkv/gradcheck.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "qkv/bert.h"
#include "qkv/classifier.h"
#include "qkv/gpt.h"
#include "qkv/layers.h"
#include "qkv/linear_attention.h"
#include "qkv/modifiers.h"
#include "support/explicit_attention.h"
#include "qkv/scoring.h"
#include "qkv/sparse_masks.h"
#include "support/sanitizers.h"

namespace qkv::autograd {
namespace {

using test_support::kSanitized;

// Tighter than torch's defaults (atol 1e-5, rtol 1e-3): f64 differences with
// eps = 1e-6 are good to about 1e-9 here. Under the sanitizers (the debug pass
// of scripts/test.sh) every check samples a few elements per leaf: the same
// code runs, for memory errors, at a fraction of the cost; the release run
// checks every element.
constexpr GradcheckOptions kOps{.atol = 1e-7, .rtol = 1e-6, .max_elements = kSanitized ? 3 : 0};
// Modules: a sample of each parameter's elements plus random directions.
constexpr GradcheckOptions kModules{.atol = 1e-7,
                                    .rtol = 1e-6,
                                    .max_elements = kSanitized ? 2 : 6,
                                    .directions = kSanitized ? 1 : 2};

Variable leaf(const Shape& shape, Generator& gen, double scale = 1.0) {
  return Variable(qkv::scale(randn(shape, gen, DType::f64), scale), true);
}

void expect_gradcheck(const std::function<Variable()>& f, const std::vector<Variable>& leaves,
                      const GradcheckOptions& options = kOps) {
  const GradcheckResult r = gradcheck(f, leaves, options);
  EXPECT_TRUE(r) << r.failures;
  EXPECT_GT(r.checks, 0);
}

// Every learned parameter of `module` (now f64) plus `inputs`.
std::vector<Variable> leaves_of(nn::Module& module, std::vector<Variable> inputs = {}) {
  for (const Variable& p : module.parameters())
    if (p.requires_grad()) inputs.push_back(p);
  return inputs;
}

// ---- gradcheck itself ------------------------------------------------------------------

TEST(Gradcheck, CatchesAWrongBackwardAndNamesTheElement) {
  Generator gen(1);
  Variable x = leaf({2, 3}, gen);
  auto wrong_square = [&] {  // d(x^2)/dx recorded as x instead of 2x
    const Tensor xv = x.value();
    return record("wrong_square", qkv::mul(xv, xv), {x},
                  [xv](const Tensor& g) { return std::vector<Tensor>{qkv::mul(g, xv)}; });
  };
  const GradcheckResult r = gradcheck(wrong_square, {x});
  EXPECT_FALSE(r);
  EXPECT_NE(r.failures.find("leaf 0 [2, 3] element 0"), std::string::npos) << r.failures;
  EXPECT_GT(r.max_error, 1e-2);
  // The right backward passes, and the leaves keep their values and gradients.
  const std::vector<double> before = x.value().to_values();
  x.set_grad(Tensor::full({2, 3}, 7.0, DType::f64));
  expect_gradcheck([&] { return mul(x, x); }, {x});
  EXPECT_EQ(x.value().to_values(), before);
  EXPECT_EQ(x.grad().to_values(), std::vector<double>(6, 7.0));
}

TEST(Gradcheck, RefusesWhatItCannotCheck) {
  Generator gen(2);
  Variable x32(randn({3}, gen), true);
  EXPECT_THROW(gradcheck([&] { return sum(x32); }, {x32}), Error);  // an f32 leaf
  Variable x = leaf({3}, gen);
  try {
    gradcheck([&] { return to(x, DType::f32); }, {x});
    ADD_FAILURE() << "an f32 output was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be f64"), std::string::npos) << e.what();
  }
  Variable constant(randn({3}, gen, DType::f64), false);
  EXPECT_THROW(gradcheck([&] { return sum(constant); }, {constant}), Error);
}

// ---- ops -------------------------------------------------------------------------------

TEST(GradcheckOps, ElementWiseAndBroadcasting) {
  Generator gen(3);
  Variable a = leaf({3, 5}, gen), row = leaf({5}, gen), col = leaf({3, 1}, gen);
  expect_gradcheck([&] { return add(a, row); }, {a, row});
  expect_gradcheck([&] { return sub(col, a); }, {a, col});
  expect_gradcheck([&] { return mul(mul(a, row), col); }, {a, row, col});
  expect_gradcheck([&] { return scale(a, -2.5); }, {a});
  expect_gradcheck([&] { return mul(a, a); }, {a});  // one input used twice
  // The f32 operand of a mixed pair promotes; only the f64 leaf is checked.
  const Variable constant32(randn({5}, gen));
  expect_gradcheck([&] { return mul(a, constant32); }, {a});
  expect_gradcheck([&] { return to(to(a, DType::f64), DType::f64); }, {a});
}

TEST(GradcheckOps, Activations) {
  Generator gen(4);
  Variable x = leaf({4, 7}, gen, 2.0);
  expect_gradcheck([&] { return gelu(x); }, {x});
  expect_gradcheck([&] { return gelu(x, GeluApproximation::tanh); }, {x});
  expect_gradcheck([&] { return silu(x); }, {x});
  Variable away_from_zero(
      Tensor::from_values({-1.5, -0.4, 0.3, 2.0, 0.7, -2.2, 1e-3, -1e-3}, {2, 4}, DType::f64),
      true);
  expect_gradcheck([&] { return relu(away_from_zero); }, {away_from_zero});
}

TEST(GradcheckOps, SoftmaxAlongEveryDim) {
  Generator gen(5);
  Variable x = leaf({2, 3, 4}, gen, 3.0);
  for (int64_t dim : {0, 1, 2, -1}) {
    SCOPED_TRACE(dim);
    expect_gradcheck([&] { return softmax(x, dim); }, {x});
    expect_gradcheck([&] { return log_softmax(x, dim); }, {x});
  }
}

TEST(GradcheckOps, Norms) {
  Generator gen(6);
  Variable x = leaf({3, 2, 6}, gen), w = leaf({6}, gen), b = leaf({6}, gen);
  expect_gradcheck([&] { return layer_norm(x, w, b, 1e-5); }, {x, w, b});
  expect_gradcheck([&] { return layer_norm(x, Variable(), Variable(), 1e-5); }, {x});
  expect_gradcheck([&] { return rms_norm(x, w, 1e-6); }, {x, w});
  expect_gradcheck([&] { return rms_norm(x, Variable(), 1e-6); }, {x});
}

TEST(GradcheckOps, MatmulAndLinear) {
  Generator gen(7);
  Variable a = leaf({3, 5}, gen), b = leaf({5, 4}, gen);
  expect_gradcheck([&] { return matmul(a, b); }, {a, b});
  Variable bt = leaf({4, 5}, gen);
  expect_gradcheck([&] { return matmul(a, bt, {.transpose_b = true}); }, {a, bt});
  Variable batched = leaf({2, 5, 3}, gen);  // [B, K, M] transposed, b broadcast over B
  expect_gradcheck([&] { return matmul(batched, b, {.transpose_a = true}); }, {batched, b});
  Variable x = leaf({2, 3, 5}, gen), w = leaf({4, 5}, gen), bias = leaf({4}, gen);
  expect_gradcheck([&] { return linear(x, w, bias); }, {x, w, bias});
  expect_gradcheck([&] { return linear(x, w); }, {x, w});
}

TEST(GradcheckOps, ShapesAndReductions) {
  Generator gen(8);
  Variable x = leaf({2, 3, 4}, gen);
  expect_gradcheck([&] { return reshape(x, {4, 6}); }, {x});
  expect_gradcheck([&] { return permute(x, {2, 0, 1}); }, {x});
  expect_gradcheck([&] { return transpose(x, 0, 2); }, {x});
  expect_gradcheck([&] { return narrow(x, 2, 1, 2); }, {x});
  expect_gradcheck([&] { return select(x, 1, 2); }, {x});
  expect_gradcheck([&] { return sum(x); }, {x});
  expect_gradcheck([&] { return mean(x); }, {x});
  for (bool keepdim : {false, true}) {
    expect_gradcheck([&] { return sum(x, 1, keepdim); }, {x});
    expect_gradcheck([&] { return mean(x, -1, keepdim); }, {x});
  }
}

TEST(GradcheckOps, DropoutWithAFixedMask) {
  Generator gen(9);
  Variable x = leaf({4, 6}, gen);
  expect_gradcheck(
      [&] {
        Generator mask(42);  // the same mask in every evaluation
        return dropout(x, 0.3, mask);
      },
      {x});
}

TEST(GradcheckOps, EmbeddingWithRepeatsAndPadding) {
  Generator gen(10);
  Variable table = leaf({5, 3}, gen);
  const Tensor ids = Tensor::from_values({2, 0, 2, 4, 1, 2}, {2, 3}, DType::i64);
  expect_gradcheck([&] { return embedding(table, ids); }, {table});
  const GradcheckResult padded = gradcheck([&] { return embedding(table, ids, 2); }, {table});
  EXPECT_FALSE(padded) << "padding_idx's row must get no gradient, so its differences disagree";
}

TEST(GradcheckOps, Losses) {
  Generator gen(11);
  Variable logits = leaf({4, 5}, gen, 2.0);
  const Tensor targets = Tensor::from_values({1, 0, 4, -100}, {4}, DType::i64);
  for (Reduction r : {Reduction::mean, Reduction::sum, Reduction::none}) {
    SCOPED_TRACE(reduction_name(r));
    expect_gradcheck([&] { return cross_entropy(logits, targets, {.reduction = r}); }, {logits});
    expect_gradcheck(
        [&] { return cross_entropy(logits, targets, {.label_smoothing = 0.1, .reduction = r}); },
        {logits});
  }
  Variable spatial = leaf({2, 3, 4}, gen);  // classes along dim 1
  const Tensor spatial_targets = Tensor::from_values({0, 2, 1, 1, 2, 0, 0, 1}, {2, 4}, DType::i64);
  expect_gradcheck([&] { return cross_entropy(spatial, spatial_targets); }, {spatial});
  Variable prediction = leaf({3, 4}, gen), target = leaf({3, 4}, gen);
  expect_gradcheck([&] { return mse_loss(prediction, target); }, {prediction, target});
  expect_gradcheck([&] { return mse_loss(prediction, target, Reduction::sum); },
                   {prediction, target});
  const Tensor teacher = randn({4, 5}, gen, DType::f64);
  expect_gradcheck([&] { return kl_div_distillation(logits, teacher, 2.0); }, {logits});
}

TEST(GradcheckOps, RotaryEmbedding) {
  Generator gen(12);
  Variable x = leaf({1, 2, 5, 6}, gen);
  expect_gradcheck([&] { return rotary_embedding(x); }, {x});
  expect_gradcheck(
      [&] {
        return rotary_embedding(x,
                                {.offset = 3, .style = RotaryStyle::interleaved, .rotary_dim = 4});
      },
      {x});
}

// ---- attention -------------------------------------------------------------------------

struct Qkv {
  Variable q, k, v;
};
Qkv qkv_leaves(Generator& gen, int64_t heads, int64_t lq, int64_t lk, int64_t d,
               int64_t kv_heads = 0) {
  kv_heads = kv_heads ? kv_heads : heads;
  return {leaf({2, heads, lq, d}, gen), leaf({2, kv_heads, lk, d}, gen),
          leaf({2, kv_heads, lk, d}, gen)};
}

TEST(GradcheckAttention, OptionsOfTheFusedFrontDoor) {
  Generator gen(13);
  const Qkv t = qkv_leaves(gen, 2, 5, 7, 3);
  auto check = [&](const AttentionOptions& options) {
    expect_gradcheck([&] { return attention(t.q, t.k, t.v, options); }, {t.q, t.k, t.v});
  };
  check({});
  check({.scale = 0.7});
  check({.causal = Causal::top_left});
  check({.causal = Causal::bottom_right});
  Tensor bool_mask = Tensor::zeros({5, 7}, DType::boolean);
  for (int64_t j = 0; j < 7; j += 2) bool_mask.data<bool>()[j] = true;  // row 0: even keys only
  for (int64_t i = 1; i < 5; ++i)
    for (int64_t j = 0; j <= i; ++j) bool_mask.data<bool>()[i * 7 + j] = true;
  check({.mask = bool_mask});
  check({.mask = randn({5, 7}, gen)});  // additive f32, promoted
  Tensor padding = Tensor::ones({2, 7}, DType::boolean);
  padding.data<bool>()[7 + 6] = padding.data<bool>()[7 + 5] = false;
  check({.key_padding_mask = padding});
  check({.mask_mod = sliding_window_mask(1, 2)});
  check({.mask_mod = mask_and(causal_mask(), dilated_window_mask(4, 0, 2))});
  check({.mask_mod = bigbird_mask(2, 1, 1, 1, /*seed=*/5)});
  check({.mask_mod = longformer_mask(1, 1, std::vector<int64_t>{0})});
  check({.dropout = 0.2, .dropout_seed = 5});
}

TEST(GradcheckAttention, FullyMaskedRowsAndSingleKeys) {
  Generator gen(14);
  const Qkv t = qkv_leaves(gen, 1, 3, 1, 4);  // one key: the softmax is constant
  expect_gradcheck([&] { return attention(t.q, t.k, t.v); }, {t.q, t.k, t.v});
  const Qkv u = qkv_leaves(gen, 1, 4, 4, 2);
  Tensor hide_row = Tensor::ones({4, 4}, DType::boolean);
  for (int64_t j = 0; j < 4; ++j) hide_row.data<bool>()[8 + j] = false;  // row 2 sees nothing
  expect_gradcheck([&] { return attention(u.q, u.k, u.v, {.mask = hide_row}); }, {u.q, u.k, u.v});
}

TEST(GradcheckAttention, GroupedQueryHeads) {
  Generator gen(15);
  const Qkv t = qkv_leaves(gen, 4, 3, 5, 2, /*kv_heads=*/2);
  expect_gradcheck([&] { return attention(t.q, t.k, t.v, {.causal = Causal::bottom_right}); },
                   {t.q, t.k, t.v});
}

TEST(GradcheckAttention, ScoreModifiers) {
  Generator gen(19);
  const Qkv t = qkv_leaves(gen, 2, 5, 7, 3);
  auto check = [&](ScoreModPtr mod) {
    expect_gradcheck([&] { return attention(t.q, t.k, t.v, {.score_mod = mod}); }, {t.q, t.k, t.v});
  };
  check(softcap_score(0.8f));  // a small cap: the scores reach tanh's curve
  check(alibi_score(alibi_slopes(2), 2));
  check(bias_score(
      [](int64_t, int64_t h, int64_t q, int64_t kv) { return 0.3f * h - 0.1f * (q - kv); }));
  check(score_chain(alibi_score(alibi_slopes(2)), softcap_score(1.5f)));
  expect_gradcheck(
      [&] {
        return attention(t.q, t.k, t.v,
                         {.causal = Causal::bottom_right, .score_mod = softcap_score(1.0f)});
      },
      {t.q, t.k, t.v});
}

// The variants with learned tensors (autograd::t5_attention, shaw_attention:
// their explicit backwards recorded).
TEST(GradcheckAttention, T5BiasTableGradient) {
  Generator gen(16);
  const Qkv t = qkv_leaves(gen, 2, 4, 6, 3);
  Variable table = leaf({8, 2}, gen);
  const T5BiasOptions t5{.num_buckets = 8, .max_distance = 6};
  for (bool softcap : {false, true}) {  // alone, and chained in front of a modifier
    SCOPED_TRACE(softcap);
    const AttentionOptions o{.score_mod = softcap ? softcap_score(1.0f) : nullptr};
    expect_gradcheck([&] { return t5_attention(t.q, t.k, t.v, table, t5, o); },
                     {t.q, t.k, t.v, table});
  }
}

TEST(GradcheckAttention, ShawRelativePositions) {
  Generator gen(17);
  const Qkv t = qkv_leaves(gen, 2, 4, 5, 3);
  Variable rk = leaf({5, 3}, gen), rv = leaf({5, 3}, gen);  // k = 2: 2k + 1 distances
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal);
    const AttentionOptions o{.causal = causal ? Causal::bottom_right : Causal::none};
    expect_gradcheck([&] { return shaw_attention(t.q, t.k, t.v, rk, rv, 2, o); },
                     {t.q, t.k, t.v, rk, rv});
    expect_gradcheck([&] { return shaw_attention(t.q, t.k, t.v, rk, Variable(), 2, o); },
                     {t.q, t.k, t.v, rk});  // the key term alone
  }
}

TEST(GradcheckAttention, GeneralAndAdditiveScoring) {
  Generator gen(21);
  const Qkv t = qkv_leaves(gen, 2, 4, 5, 3);
  Variable w = leaf({3, 3}, gen);
  auto general = [&] {
    const Tensor qv = t.q.value(), kv = t.k.value(), vv = t.v.value(), wv = w.value();
    const AttentionOptions o{.causal = Causal::bottom_right, .return_lse = true};
    AttentionResult r = general_attention(qv, kv, vv, wv, o);
    const Tensor out = r.output;
    return record(
        "general_attention", out, {t.q, t.k, t.v, w}, [=, r = std::move(r)](const Tensor& g) {
          GeneralAttentionGradients a = general_attention_backward(g, qv, kv, vv, wv, r, o);
          return std::vector<Tensor>{a.inputs.grad_q, a.inputs.grad_k, a.inputs.grad_v, a.grad_w};
        });
  };
  expect_gradcheck(general, {t.q, t.k, t.v, w});
  Variable wq = leaf({4, 3}, gen), wk = leaf({4, 3}, gen), va = leaf({4}, gen);
  for (ScoreModPtr mod : {ScoreModPtr{}, softcap_score(1.0f)}) {
    SCOPED_TRACE(mod != nullptr);
    auto additive = [&] {
      const Tensor qv = t.q.value(), kv = t.k.value(), vv = t.v.value();
      const AdditiveScoreWeights weights{wq.value(), wk.value(), va.value()};
      const AttentionOptions o{.score_mod = mod};
      const Tensor out = additive_attention(qv, kv, vv, weights, o).output;
      EXPECT_EQ(out.dtype(), DType::f64);
      return record("additive_attention", out, {t.q, t.k, t.v, wq, wk, va}, [=](const Tensor& g) {
        AdditiveAttentionGradients a = additive_attention_backward(g, qv, kv, vv, weights, o);
        return std::vector<Tensor>{a.inputs.grad_q, a.inputs.grad_k, a.inputs.grad_v,
                                   a.grad_w_q,      a.grad_w_k,      a.grad_v_a};
      });
    };
    expect_gradcheck(additive, {t.q, t.k, t.v, wq, wk, va});
  }
}

// The largest |a - b| over all elements (same shape).
double max_difference(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_values(), y = b.to_values();
  EXPECT_EQ(x.size(), y.size());
  double worst = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i)
    worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

// The f64 path runs the oracle: it must agree with the fused f32 kernels the
// modifiers' block forms feed.
TEST(GradcheckAttention, F64ModifiersAgreeWithTheFusedF32Path) {
  Generator gen(18);
  const Tensor q = randn({2, 2, 6, 4}, gen), k = randn({2, 2, 9, 4}, gen),
               v = randn({2, 2, 9, 4}, gen), table = randn({8, 2}, gen);
  const ShawPositions shaw{
      .key = randn({5, 4}, gen), .value = randn({5, 4}, gen), .max_distance = 2};
  const auto f64 = [](const Tensor& x) { return x.to(DType::f64); };
  for (const ScoreModPtr& mod : {softcap_score(1.5f), alibi_score(alibi_slopes(2), 3),
                                 t5_bias_score(table, {.num_buckets = 8, .max_distance = 6})}) {
    const Tensor fast = qkv::attention(q, k, v, {.score_mod = mod}).output;
    const Tensor exact = qkv::attention(f64(q), f64(k), f64(v), {.score_mod = mod}).output;
    ASSERT_EQ(exact.dtype(), DType::f64);
    EXPECT_LT(max_difference(fast, exact), 2e-6);
  }
  const Tensor fast = shaw_attention(q, k, v, shaw).attention.output;
  const Tensor exact = shaw_attention(f64(q), f64(k), f64(v), shaw).attention.output;
  ASSERT_EQ(exact.dtype(), DType::f64);
  EXPECT_LT(max_difference(fast, exact), 2e-6);
}

// ---- modules ---------------------------------------------------------------------------

TEST(GradcheckModules, Layers) {
  Generator gen(20);
  Variable x = leaf({2, 3, 6}, gen);
  nn::Linear linear({.in_features = 6, .out_features = 4}, gen);
  linear.to(DType::f64);
  expect_gradcheck([&] { return linear.forward(x); }, leaves_of(linear, {x}), kModules);

  nn::Embedding embedding({.num_embeddings = 7, .embedding_dim = 3}, gen);
  embedding.to(DType::f64);
  const Tensor ids = Tensor::from_values({1, 6, 1, 0}, {2, 2}, DType::i64);
  expect_gradcheck([&] { return embedding.forward(ids); }, leaves_of(embedding), kModules);

  nn::LayerNorm norm({.dim = 6}, gen);
  norm.to(DType::f64);
  expect_gradcheck([&] { return norm.forward(x); }, leaves_of(norm, {x}), kModules);
  nn::RMSNorm rms({.dim = 6, .eps = 1e-6}, gen);
  rms.to(DType::f64);
  expect_gradcheck([&] { return rms.forward(x); }, leaves_of(rms, {x}), kModules);

  for (nn::Activation act : {nn::Activation::relu, nn::Activation::gelu, nn::Activation::swiglu}) {
    SCOPED_TRACE(nn::activation_name(act));
    nn::FeedForward ff({.d_model = 6, .d_ff = 5, .activation = act}, gen);
    ff.to(DType::f64);
    expect_gradcheck([&] { return ff.forward(x); }, leaves_of(ff, {x}), kModules);
  }
}

TEST(GradcheckModules, DropoutLayerInTrainingMode) {
  Generator gen(21);
  Variable x = leaf({3, 4}, gen);
  expect_gradcheck(
      [&] {
        Generator fixed(7);  // a fresh module: the same mask each evaluation
        nn::Dropout d({.p = 0.25}, fixed);
        return d.forward(x);
      },
      {x});
}

TEST(GradcheckModules, MultiheadAttention) {
  Generator gen(22);
  Variable q = leaf({2, 4, 6}, gen), kv = leaf({2, 5, 6}, gen);
  nn::Attention attn({.embed_dim = 6, .num_heads = 2, .batch_first = true}, gen);
  attn.to(DType::f64);
  Tensor padding = Tensor::zeros({2, 5}, DType::boolean);
  padding.data<bool>()[9] = true;
  expect_gradcheck([&] { return attn.forward(q, kv, kv, {.key_padding_mask = padding}); },
                   leaves_of(attn, {q, kv}), kModules);
  nn::Attention cross({.embed_dim = 6, .num_heads = 3, .kdim = 4, .vdim = 5, .batch_first = true},
                      gen);
  cross.to(DType::f64);
  Variable k = leaf({2, 5, 4}, gen), v = leaf({2, 5, 5}, gen);
  expect_gradcheck([&] { return cross.forward(q, k, v); }, leaves_of(cross, {q, k, v}), kModules);
}

// The configurable layer with an explicit backward (positions, kernels,
// masks), recorded around forward() / backward() so gradcheck sees it; its
// parameter tensors are the leaves' values (shared storage).
void check_multihead_variant(const nn::MultiHeadAttentionConfig& config, bool is_causal,
                             Generator& gen, const GradcheckOptions& options = kModules) {
  nn::MultiHeadAttention mha(config, gen);
  mha.to(DType::f64);
  const Variable q = leaf({2, 5, 6}, gen), k = leaf({2, 5, 6}, gen), v = leaf({2, 5, 6}, gen);
  std::vector<Variable> leaves{q, k, v};
  std::vector<std::string> names;
  for (const auto& [name, p] : mha.parameters()) {
    leaves.emplace_back(p, true);
    names.push_back(name);
  }
  auto f = [&] {
    const nn::MultiHeadAttentionOutput out = mha.forward({.query = q.value(),
                                                          .key = k.value(),
                                                          .value = v.value(),
                                                          .is_causal = is_causal,
                                                          .need_weights = false});
    return record("MultiHeadAttention", out.output, leaves, [&](const Tensor& g) {
      nn::MultiHeadAttentionGradients grads = mha.backward(g);
      std::vector<Tensor> all{grads.query, grads.key, grads.value};
      for (const std::string& name : names) all.push_back(grads.parameters.at(name));
      return all;
    });
  };
  expect_gradcheck(f, leaves, options);
}

TEST(GradcheckModules, MultiHeadAttentionVariants) {
  Generator gen(28);
  const nn::MultiHeadAttentionConfig base{.embed_dim = 6, .num_heads = 2, .batch_first = true};
  auto with = [&](auto change) {
    nn::MultiHeadAttentionConfig c = base;
    change(c);
    return c;
  };
  check_multihead_variant(base, false, gen);
  check_multihead_variant(with([](auto& c) { c.mask_mod = sliding_window_mask(1, 1); }), false,
                          gen);
  check_multihead_variant(with([](auto& c) {
                            c.positions = nn::AttentionPositions::rotary;
                            c.num_heads = 3;  // an even head dim
                          }),
                          false, gen);
  check_multihead_variant(with([](auto& c) { c.positions = nn::AttentionPositions::alibi; }), false,
                          gen);
  check_multihead_variant(with([](auto& c) {
                            c.positions = nn::AttentionPositions::t5;
                            c.t5 = {.num_buckets = 6, .max_distance = 8};
                          }),
                          false, gen);
  check_multihead_variant(with([](auto& c) {
                            c.positions = nn::AttentionPositions::shaw;
                            c.shaw_max_distance = 2;
                          }),
                          false, gen);
}

TEST(GradcheckModules, MultiHeadAttentionLinearKernels) {
  Generator gen(7);
  const nn::MultiHeadAttentionConfig base{.embed_dim = 6, .num_heads = 2, .batch_first = true};
  auto with = [&](auto change) {
    nn::MultiHeadAttentionConfig c = base;
    change(c);
    return c;
  };
  for (bool per_head : {false, true}) {
    SCOPED_TRACE(per_head ? "linformer, per-head projections" : "linformer");
    check_multihead_variant(with([&](auto& c) {
                              c.kernel = nn::AttentionKernel::linformer;
                              c.max_length = 5;
                              c.linformer_k = 3;
                              c.linformer_per_head = per_head;
                            }),
                            false, gen);
  }
  // The layer runs Performer with eps = 1e-6, whose stabilisers cost about
  // 2e-5 absolute here (see LinearAndPerformer): torch's default tolerances.
  constexpr GradcheckOptions kPerformer{.max_elements = 6, .directions = 2};
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "non-causal");
    check_multihead_variant(with([](auto& c) { c.kernel = nn::AttentionKernel::linear; }), causal,
                            gen);
    check_multihead_variant(with([](auto& c) {
                              c.kernel = nn::AttentionKernel::performer;
                              c.performer_features = 8;
                            }),
                            causal, gen, kPerformer);
  }
}

nn::TransformerLayerConfig small_layer(bool norm_first) {
  return {.d_model = 8,
          .nhead = 2,
          .dim_feedforward = 12,
          .dropout = 0.0,
          .activation = nn::Activation::gelu,
          .batch_first = true,
          .norm_first = norm_first};
}

TEST(GradcheckModules, EncoderAndDecoderLayersPreAndPostNorm) {
  Generator gen(23);
  Variable src = leaf({2, 4, 8}, gen), tgt = leaf({2, 3, 8}, gen);
  for (bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    nn::TransformerEncoderLayer encoder(small_layer(norm_first), gen);
    encoder.to(DType::f64);
    expect_gradcheck([&] { return encoder.forward(src); }, leaves_of(encoder, {src}), kModules);
    nn::TransformerDecoderLayer decoder(small_layer(norm_first), gen);
    decoder.to(DType::f64);
    expect_gradcheck([&] { return decoder.forward(tgt, src, {.is_causal = true}); },
                     leaves_of(decoder, {tgt, src}), kModules);
  }
}

TEST(GradcheckModules, EncoderDecoderStacksAndTransformer) {
  Generator gen(24);
  Variable src = leaf({2, 4, 8}, gen), tgt = leaf({2, 3, 8}, gen);
  nn::TransformerEncoder encoder({.layer = small_layer(false), .num_layers = 2, .norm = true}, gen);
  encoder.to(DType::f64);
  expect_gradcheck([&] { return encoder.forward(src); }, leaves_of(encoder, {src}), kModules);
  nn::TransformerDecoder decoder({.layer = small_layer(true), .num_layers = 2, .norm = true}, gen);
  decoder.to(DType::f64);
  expect_gradcheck([&] { return decoder.forward(tgt, src); }, leaves_of(decoder, {tgt, src}),
                   kModules);
  nn::Transformer transformer({.d_model = 8,
                               .nhead = 2,
                               .num_encoder_layers = 2,
                               .num_decoder_layers = 2,
                               .dim_feedforward = 12,
                               .dropout = 0.0,
                               .batch_first = true},
                              gen);
  transformer.to(DType::f64);
  expect_gradcheck([&] { return transformer.forward(src, tgt, {.tgt_is_causal = true}); },
                   leaves_of(transformer, {src, tgt}), kModules);
}

TEST(GradcheckModules, AttentionPoolingClassifier) {
  Generator gen(25);
  const Tensor ids = Tensor::from_values({3, 1, 4, 0, 2, 2, 0, 0}, {2, 4}, DType::i64);
  for (nn::PositionalEncoding pe :
       {nn::PositionalEncoding::sinusoidal, nn::PositionalEncoding::learned}) {
    nn::AttentionPoolingClassifier model({.vocab_size = 5,
                                          .d_model = 6,
                                          .max_len = 4,
                                          .num_classes = 3,
                                          .positional = pe,
                                          .padding_idx = 0},
                                         gen);
    model.to(DType::f64);
    expect_gradcheck([&] { return model.forward(ids); }, leaves_of(model), kModules);
  }
}

TEST(GradcheckModules, GptLearnedAndRotary) {
  Generator gen(26);
  const Tensor ids = Tensor::from_values({1, 4, 2, 0, 3, 3, 1, 2}, {2, 4}, DType::i64);
  const Tensor targets = Tensor::from_values({4, 2, 0, 3, 3, 1, 2, -1}, {2, 4}, DType::i64);
  for (nn::GPTPositions positions : {nn::GPTPositions::learned, nn::GPTPositions::rotary}) {
    nn::GPT gpt({.vocab_size = 5,
                 .context = 4,
                 .n_layer = 2,
                 .n_head = 2,
                 .d_model = 8,
                 .positions = positions},
                gen);
    gpt.to(DType::f64);
    expect_gradcheck([&] { return gpt.loss(ids, targets); }, leaves_of(gpt), kModules);
  }
}

nn::BertConfig tiny_bert() {
  return {.vocab_size = 11,
          .hidden_size = 8,
          .num_hidden_layers = 2,
          .num_attention_heads = 2,
          .intermediate_size = 12,
          .max_position_embeddings = 6,
          .hidden_dropout_prob = 0.0,
          .attention_probs_dropout_prob = 0.0};
}

TEST(GradcheckModules, BertEncoderAndHeads) {
  Generator gen(27);
  const Tensor ids = Tensor::from_values({2, 5, 7, 3, 4, 9, 1, 0}, {2, 4}, DType::i64);
  const Tensor mask = Tensor::from_values({1, 1, 1, 1, 1, 1, 1, 0}, {2, 4}, DType::i64);
  auto bert = std::make_shared<nn::BertModel>(tiny_bert(), gen);
  bert->to(DType::f64);
  expect_gradcheck(
      [&] {
        const nn::BertOutput out = bert->forward(ids, mask);
        return add(sum(out.last_hidden_state), sum(out.pooler_output));
      },
      leaves_of(*bert), kModules);
  nn::BertForSequenceClassification classifier(bert, {"negative", "positive"}, gen);
  classifier.to(DType::f64);
  expect_gradcheck([&] { return classifier.forward(ids, mask); }, leaves_of(classifier), kModules);
  nn::BertForMaskedLM mlm(tiny_bert(), gen);
  mlm.to(DType::f64);
  const Tensor positions = Tensor::from_values({1, 6}, {2}, DType::i64);
  expect_gradcheck([&] { return mlm.forward(ids, mask, positions); }, leaves_of(mlm), kModules);
}

}  // namespace
}  // namespace qkv::autograd
