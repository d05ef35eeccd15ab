// nn::GPT: nanoGPT's parameter names and initialisation, the config's JSON,
// the KV cache against the full forward, generation (greedy, cached and not,
// seeds, stop sequences, top-k / top-p), attention maps, errors; and the
// rotary autograd op against finite differences. The parity with a torch
// model is tests/python/test_gpt.py.
#include "qkv/gpt.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "support/compare.h"

namespace qkv::nn {
namespace {

using autograd::Variable;

GPTConfig tiny(GPTPositions positions = GPTPositions::learned, bool tied = true) {
  return {.vocab_size = 11,
          .context = 16,
          .n_layer = 2,
          .n_head = 2,
          .d_model = 8,
          .tied_embeddings = tied,
          .positions = positions};
}

Tensor ids_tensor(const std::vector<int32_t>& ids, int64_t batch = 1) {
  Tensor t = Tensor::empty({batch, static_cast<int64_t>(ids.size()) / batch}, DType::i32);
  std::copy(ids.begin(), ids.end(), t.data<int32_t>());
  return t;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Generator g(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(g.next_u64() % static_cast<uint64_t>(vocab));
  return ids;
}

using test_support::max_abs_diff;

double max_abs(const Tensor& a) {
  double m = 0;
  for (double v : a.to_values()) m = std::max(m, std::fabs(v));
  return m;
}

TEST(GPT, ParameterNamesAndShapesAreNanoGPTs) {
  Generator g(0);
  GPT model(tiny(), g);
  const std::vector<std::pair<std::string, Shape>> expected = {
      {"transformer.wte.weight", {11, 8}},
      {"transformer.wpe.weight", {16, 8}},
      {"transformer.h.0.ln_1.weight", {8}},
      {"transformer.h.0.ln_1.bias", {8}},
      {"transformer.h.0.attn.c_attn.weight", {24, 8}},
      {"transformer.h.0.attn.c_attn.bias", {24}},
      {"transformer.h.0.attn.c_proj.weight", {8, 8}},
      {"transformer.h.0.attn.c_proj.bias", {8}},
      {"transformer.h.0.ln_2.weight", {8}},
      {"transformer.h.0.ln_2.bias", {8}},
      {"transformer.h.0.mlp.c_fc.weight", {32, 8}},
      {"transformer.h.0.mlp.c_fc.bias", {32}},
      {"transformer.h.0.mlp.c_proj.weight", {8, 32}},
      {"transformer.h.0.mlp.c_proj.bias", {8}},
  };
  const auto named = model.named_parameters();
  ASSERT_EQ(named.size(), 2 + 2 * 12 + 2u);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(named[i].first, expected[i].first);
    EXPECT_EQ(named[i].second.shape(), expected[i].second) << expected[i].first;
  }
  EXPECT_EQ(named[14].first, "transformer.h.1.ln_1.weight");
  EXPECT_EQ(named[26].first, "transformer.ln_f.weight");
  EXPECT_EQ(named[27].first, "transformer.ln_f.bias");
  EXPECT_EQ(model.state_dict().count("lm_head.weight"), 0u);
  int64_t total = 0;
  for (const auto& [name, p] : named) total += p.value().numel();
  EXPECT_EQ(model.num_parameters(), total);

  Generator g2(0);
  GPT untied(tiny(GPTPositions::rotary, /*tied=*/false), g2);
  const auto state = untied.state_dict();
  EXPECT_EQ(state.at("lm_head.weight").shape(), (Shape{11, 8}));
  EXPECT_EQ(state.count("transformer.wpe.weight"), 0u);  // rotary: no table
  EXPECT_EQ(untied.named_parameters().back().first, "lm_head.weight");

  GPTConfig no_bias = tiny();
  no_bias.bias = false;
  GPT plain(no_bias, g);
  for (const auto& [name, p] : plain.named_parameters())
    EXPECT_EQ(name.find("bias"), std::string::npos) << name;
}

TEST(GPT, InitialisationIsNanoGPTs) {
  GPTConfig c = tiny();
  c.d_model = 64, c.n_head = 4, c.n_layer = 3;
  Generator g(1);
  GPT model(c, g);
  const auto state = model.state_dict();
  auto stddev = [](const Tensor& t) {
    double s = 0;
    const auto v = t.to_values();
    for (double x : v) s += x * x;
    return std::sqrt(s / static_cast<double>(v.size()));
  };
  EXPECT_NEAR(stddev(state.at("transformer.h.0.attn.c_attn.weight")), 0.02, 0.002);
  EXPECT_NEAR(stddev(state.at("transformer.h.1.mlp.c_fc.weight")), 0.02, 0.002);
  const double residual = 0.02 / std::sqrt(2.0 * 3);
  EXPECT_NEAR(stddev(state.at("transformer.h.2.mlp.c_proj.weight")), residual, 0.1 * residual);
  EXPECT_NEAR(stddev(state.at("transformer.h.0.attn.c_proj.weight")), residual, 0.1 * residual);
  EXPECT_NEAR(stddev(state.at("transformer.wpe.weight")), 0.02, 0.002);
  EXPECT_EQ(max_abs(state.at("transformer.h.0.attn.c_attn.bias")), 0.0);
  EXPECT_EQ(max_abs(state.at("transformer.h.2.ln_2.bias")), 0.0);
  EXPECT_EQ(state.at("transformer.ln_f.weight").at({5}), 1.0);
}

TEST(GPT, ConfigJsonRoundTripAndErrors) {
  GPTConfig c = tiny(GPTPositions::rotary, false);
  c.dropout = 0.125;
  c.rotary_base = 500.0;
  const GPTConfig back = GPTConfig::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(back.positions, GPTPositions::rotary);
  EXPECT_FALSE(back.tied_embeddings);
  EXPECT_EQ(back.rotary_base, 500.0);
  EXPECT_EQ(back.dropout, 0.125);

  auto message = [](const std::string& text) {
    try {
      GPTConfig::from_json(text);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string good = tiny().to_json();
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  EXPECT_NE(message("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(message("[1, 2]").find("JSON object"), std::string::npos);
  EXPECT_NE(message(replace("\"n_head\"", "\"n_heads\"")).find("unknown field 'n_heads'"),
            std::string::npos);
  EXPECT_NE(message(replace("\"context\": 16", "\"context\": \"16\"")).find("'context'"),
            std::string::npos);
  EXPECT_NE(message(replace("\"learned\"", "\"alibi\"")).find("'positions'"), std::string::npos);
  EXPECT_NE(message(replace("\"d_model\": 8", "\"d_model\": 9")).find("multiple of n_head"),
            std::string::npos);
  EXPECT_NE(message(replace("\"vocab_size\": 11", "\"vocab_size\": -1")).find("vocab_size"),
            std::string::npos);
  EXPECT_NE(message("{\"vocab_size\": 5}").find("'context' is missing"), std::string::npos);
  EXPECT_NE(message(replace("\"bias\": true", "\"bias\": 1")).find("'bias'"), std::string::npos);
  // Absurd sizes are refused before any allocation.
  EXPECT_NE(message(replace("\"d_model\": 8", "\"d_model\": 16777216")).find("parameters"),
            std::string::npos);
  GPTConfig odd = tiny(GPTPositions::rotary);
  odd.d_model = 6, odd.n_head = 2;  // head size 3
  EXPECT_THROW(odd.validate(), Error);
  odd.positions = GPTPositions::learned;
  EXPECT_NO_THROW(odd.validate());
}

// The cache, fed a prompt and then one token at a time (or in chunks), gives
// the logits of the full forward over the same prefix.
void check_cache_matches_forward(GPTPositions positions, int64_t batch) {
  GPTConfig c = tiny(positions, positions == GPTPositions::learned);
  c.d_model = 16, c.n_head = 4;
  Generator g(3);
  GPT model(c, g);
  model.eval();
  const int64_t t = c.context;
  const Tensor ids = ids_tensor(random_ids(batch * t, c.vocab_size, 7), batch);
  const Tensor full = model.forward(ids).value();  // [B, T, V]
  KVCache cache = model.make_cache(batch);
  EXPECT_EQ(cache.capacity(), c.context);
  const std::vector<int64_t> chunks = {5, 1, 1, 3, 1, 2, 1, 1, 1};  // 16 positions
  int64_t start = 0;
  for (int64_t n : chunks) {
    const Tensor part = model.forward_cached(ids.narrow(1, start, n).contiguous(), cache);
    ASSERT_EQ(part.shape(), (Shape{batch, n, c.vocab_size}));
    const Tensor want = full.narrow(1, start, n);
    EXPECT_LE(max_abs_diff(part, want), 1e-5 * std::max(1.0, max_abs(want)))
        << "positions " << start << " .. " << start + n;
    start += n;
    EXPECT_EQ(cache.length(), start);
  }
  // Full: one more position passes the capacity, and the cache is unchanged.
  EXPECT_THROW(model.forward_cached(ids.narrow(1, 0, 1).contiguous(), cache), Error);
  EXPECT_EQ(cache.length(), t);
  cache.clear();
  const Tensor again = model.forward_cached(ids.narrow(1, 0, 4).contiguous(), cache);
  EXPECT_LE(max_abs_diff(again, full.narrow(1, 0, 4)), 1e-5 * std::max(1.0, max_abs(full)));
}

TEST(GPT, CachedForwardEqualsFullForwardLearned) {
  check_cache_matches_forward(GPTPositions::learned, 1);
  check_cache_matches_forward(GPTPositions::learned, 3);
}

TEST(GPT, CachedForwardEqualsFullForwardRotary) {
  check_cache_matches_forward(GPTPositions::rotary, 1);
  check_cache_matches_forward(GPTPositions::rotary, 2);
}

TEST(GPT, CacheErrors) {
  Generator g(0);
  GPT model(tiny(), g);
  KVCache cache = model.make_cache(2, 8);
  EXPECT_EQ(cache.capacity(), 8);
  EXPECT_THROW(model.forward_cached(ids_tensor({1, 2, 3}), cache), Error);  // batch 1 != 2
  EXPECT_THROW(model.forward_cached(ids_tensor(random_ids(18, 11, 0), 2), cache), Error);  // 9 > 8
  EXPECT_EQ(cache.length(), 0);
  EXPECT_THROW(model.make_cache(1, 17), Error);  // past the context
  EXPECT_THROW(model.make_cache(0), Error);
  KVCache empty;
  EXPECT_THROW(model.forward_cached(ids_tensor({1}), empty), Error);
  Generator g2(0);
  GPTConfig other = tiny();
  other.n_layer = 3;
  GPT deeper(other, g2);
  KVCache foreign = deeper.make_cache(1);
  EXPECT_THROW(model.forward_cached(ids_tensor({1}), foreign), Error);
  EXPECT_THROW(model.forward_cached(ids_tensor({1, 11}), cache), Error);  // id 11 >= vocab
}

TEST(GPT, ForwardAndLossErrors) {
  Generator g(0);
  GPT model(tiny(), g);
  EXPECT_THROW(model.forward(ids_tensor(random_ids(17, 11, 0))), Error);  // T > context
  EXPECT_THROW(model.forward(Tensor::zeros({1, 4})), Error);              // f32 ids
  EXPECT_THROW(model.forward(Tensor::zeros({4}, DType::i64)), Error);     // 1-D
  EXPECT_THROW(model.forward(ids_tensor({1, 2, 12})), Error);             // id out of range
  EXPECT_THROW(model.loss(ids_tensor({1, 2, 3}), ids_tensor({1, 2})), Error);
  EXPECT_THROW(GPT(GPTConfig{.vocab_size = 0}, g), Error);
}

TEST(GPT, LossBackwardReachesEveryParameter) {
  for (bool tied : {true, false}) {
    Generator g(5);
    GPTConfig c = tiny(tied ? GPTPositions::learned : GPTPositions::rotary, tied);
    c.dropout = 0.1;
    GPT model(c, g);
    const Tensor ids = ids_tensor(random_ids(2 * 12, 11, 1), 2);
    std::vector<int32_t> t = random_ids(2 * 12, 11, 2);
    t[3] = -1;  // ignored
    const Variable loss = model.loss(ids, ids_tensor(t, 2));
    EXPECT_NEAR(loss.value().item(), std::log(11.0), 0.3);  // near uniform at initialisation
    loss.backward();
    for (const auto& [name, p] : model.named_parameters()) {
      ASSERT_TRUE(p.grad().defined()) << name;
      EXPECT_GT(max_abs(p.grad()), 0.0) << name;
    }
    // Training drops out (each call draws new masks); eval does not.
    const double a = model.loss(ids, ids_tensor(t, 2)).value().item();
    const double b = model.loss(ids, ids_tensor(t, 2)).value().item();
    EXPECT_NE(a, b);
    model.eval();
    const double e1 = model.loss(ids, ids_tensor(t, 2)).value().item();
    const double e2 = model.loss(ids, ids_tensor(t, 2)).value().item();
    EXPECT_EQ(e1, e2);
  }
}

TEST(GPT, GreedyGenerationIsTheSameWithAndWithoutTheCache) {
  for (GPTPositions positions : {GPTPositions::learned, GPTPositions::rotary}) {
    Generator g(11);
    GPTConfig c = tiny(positions);
    c.d_model = 16;
    GPT model(c, g);
    const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
    GenerationOptions o{.max_new_tokens = 11, .temperature = 0.0};
    const std::vector<int32_t> cached = model.generate(prompt, o);
    o.use_cache = false;
    const std::vector<int32_t> recomputed = model.generate(prompt, o);
    EXPECT_EQ(cached.size(), 11u);
    EXPECT_EQ(cached, recomputed);
    // Greedy is the argmax of the full forward's last logits, step by step.
    std::vector<int32_t> seq = prompt;
    for (int32_t token : cached) {
      const Tensor logits = model.forward(ids_tensor(seq)).value().select(1, seq.size() - 1);
      const auto v = logits.to_values();
      EXPECT_EQ(token, std::max_element(v.begin(), v.end()) - v.begin());
      seq.push_back(token);
    }
    // top_k = 1 is greedy too, whatever the temperature and seed.
    GenerationOptions k1{.max_new_tokens = 11, .temperature = 1.7, .top_k = 1, .seed = 9};
    EXPECT_EQ(model.generate(prompt, k1), cached);
  }
}

TEST(GPT, GenerationPastTheContext) {
  Generator g(2);
  GPT model(tiny(GPTPositions::learned), g);
  // A prompt longer than the context, and more tokens than the context holds.
  const std::vector<int32_t> prompt = random_ids(20, 11, 4);
  for (bool use_cache : {true, false}) {
    GenerationOptions o{.max_new_tokens = 40, .temperature = 0.0, .use_cache = use_cache};
    const std::vector<int32_t> out = model.generate(prompt, o);
    EXPECT_EQ(out.size(), 40u);
    // The first token comes from the last `context` prompt tokens in both paths.
    std::vector<int32_t> window(prompt.end() - 16, prompt.end());
    const auto v = model.forward(ids_tensor(window)).value().select(1, 15).to_values();
    EXPECT_EQ(out[0], std::max_element(v.begin(), v.end()) - v.begin());
  }
}

TEST(GPT, SeededSamplingIsReproducible) {
  Generator g(8);
  GPT model(tiny(), g);
  const std::vector<int32_t> prompt = {2, 7};
  // 14 new tokens fill the context exactly: cached and uncached see the same windows.
  GenerationOptions o{.max_new_tokens = 14, .temperature = 1.5, .top_k = 6, .top_p = 0.9,
                      .seed = 42};
  const std::vector<int32_t> a = model.generate(prompt, o);
  EXPECT_EQ(model.generate(prompt, o), a);
  o.use_cache = false;
  EXPECT_EQ(model.generate(prompt, o), a);  // the same logits within f32, the same draws
  o.seed = 43;
  EXPECT_NE(model.generate(prompt, o), a);
  std::vector<int32_t> streamed;
  o.on_token = [&](int32_t t) {
    streamed.push_back(t);
    return streamed.size() < 7;
  };
  const std::vector<int32_t> stopped = model.generate(prompt, o);
  EXPECT_EQ(stopped.size(), 7u);
  EXPECT_EQ(streamed, stopped);
}

TEST(GPT, StopSequences) {
  Generator g(8);
  GPT model(tiny(), g);
  const std::vector<int32_t> prompt = {2, 7};
  GenerationOptions o{.max_new_tokens = 20, .temperature = 0.9, .seed = 5};
  const std::vector<int32_t> free_run = model.generate(prompt, o);
  ASSERT_EQ(free_run.size(), 20u);
  // Stop at the first occurrence of tokens 4..5 of the free run (kept in the output).
  const std::vector<int32_t> stop(free_run.begin() + 4, free_run.begin() + 6);
  size_t end = 2;
  while (!std::equal(stop.begin(), stop.end(), free_run.begin() + (end - 2))) ++end;
  o.stop = {{10, 10, 10, 10}, stop};
  const std::vector<int32_t> out = model.generate(prompt, o);
  EXPECT_EQ(out, std::vector<int32_t>(free_run.begin(), free_run.begin() + end));
  o.max_new_tokens = 0;
  EXPECT_TRUE(model.generate(prompt, o).empty());
}

TEST(GPT, GenerationErrors) {
  Generator g(0);
  GPT model(tiny(), g);
  EXPECT_THROW(model.generate({}, {}), Error);
  EXPECT_THROW(model.generate({1, 11}, {}), Error);
  EXPECT_THROW(model.generate({1, -1}, {}), Error);
  EXPECT_THROW(model.generate({1}, {.top_k = -1}), Error);
  EXPECT_THROW(model.generate({1}, {.top_p = 0.0}), Error);
  EXPECT_THROW(model.generate({1}, {.top_p = 1.5}), Error);
  EXPECT_THROW(model.generate({1}, {.temperature = -0.1}), Error);
  EXPECT_THROW(model.generate({1}, {.max_new_tokens = -1}), Error);
  EXPECT_THROW(model.generate({1}, {.stop = {{}}}), Error);
  try {
    model.generate({}, {});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prompt is empty"), std::string::npos);
  }
}

TEST(Sampling, DistributionFollowsTheWarpers) {
  // logits log([0.5, 0.05, 0.3, 0.15]): probabilities as given at temperature 1.
  const Tensor logits =
      Tensor::from_values({std::log(0.5), std::log(0.05), std::log(0.3), std::log(0.15)}, {4});
  auto p = [&](GenerationOptions o) { return sampling_distribution(logits, o).to_values(); };
  auto expect = [](const std::vector<double>& got, const std::vector<double>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << i;
  };
  expect(p({}), {0.5, 0.05, 0.3, 0.15});
  expect(p({.temperature = 0.0}), {1, 0, 0, 0});
  expect(p({.top_k = 2}), {0.625, 0, 0.375, 0});
  expect(p({.top_p = 0.75}), {0.625, 0, 0.375, 0});  // 0.5 + 0.3 >= 0.75
  expect(p({.top_p = 0.81}), {0.5 / 0.95, 0, 0.3 / 0.95, 0.15 / 0.95});
  expect(p({.top_p = 0.3}), {1, 0, 0, 0});  // the most likely always stays
  // top-k first: renormalised, 0.15 / 0.95 <= 1 - 0.83 goes too (without top-k it stays).
  expect(p({.top_p = 0.83}), {0.5 / 0.95, 0, 0.3 / 0.95, 0.15 / 0.95});
  expect(p({.top_k = 3, .top_p = 0.83}), {0.625, 0, 0.375, 0});
  const std::vector<double> hot = p({.temperature = 2.0});
  EXPECT_NEAR(hot[0] / hot[1], std::sqrt(0.5 / 0.05), 1e-6);  // f32 logits
  // Ties with the k-th largest stay; -inf never wins; NaN is an error.
  expect(sampling_distribution(Tensor::from_values({1, 2, 2, 0}, {4}), {.top_k = 2}).to_values(),
         {0, 0.5, 0.5, 0});
  const double inf = std::numeric_limits<double>::infinity();
  expect(sampling_distribution(Tensor::from_values({-inf, 0, -inf}, {3}), {}).to_values(),
         {0, 1, 0});
  EXPECT_THROW(sampling_distribution(Tensor::from_values({0, std::nan("")}, {2}), {}), Error);
  EXPECT_THROW(sampling_distribution(Tensor::from_values({-inf, -inf}, {2}), {}), Error);
  EXPECT_THROW(sampling_distribution(Tensor::zeros({2, 2}), {}), Error);
}

TEST(Sampling, DrawsFollowTheDistribution) {
  const Tensor logits = Tensor::from_values({std::log(0.6), std::log(0.1), std::log(0.3)}, {3});
  Generator g(17);
  std::vector<int> counts(3);
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++counts[sample_next_token(logits, {}, g)];
  EXPECT_NEAR(counts[0] / double(n), 0.6, 0.02);
  EXPECT_NEAR(counts[1] / double(n), 0.1, 0.02);
  EXPECT_NEAR(counts[2] / double(n), 0.3, 0.02);
  // Greedy draws nothing from the generator.
  Generator a(1), b(1);
  sample_next_token(logits, {.temperature = 0.0}, a);
  EXPECT_EQ(a.next_u64(), b.next_u64());
}

TEST(GPT, AttentionMaps) {
  Generator g(4);
  GPT model(tiny(GPTPositions::rotary), g);
  const Tensor ids = ids_tensor({1, 5, 2, 9, 3, 3});
  const std::vector<Tensor> maps = model.attention_maps(ids);
  ASSERT_EQ(maps.size(), 2u);
  for (const Tensor& m : maps) {
    ASSERT_EQ(m.shape(), (Shape{2, 6, 6}));
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 6; ++i) {
        double row = 0;
        for (int64_t j = 0; j < 6; ++j) {
          const double w = m.at({h, i, j});
          if (j > i) {
            EXPECT_EQ(w, 0.0);
          }
          row += w;
        }
        EXPECT_NEAR(row, 1.0, 1e-5);
      }
  }
  EXPECT_EQ(maps[0].at({0, 0, 0}), 1.0);
  EXPECT_THROW(model.attention_maps(ids_tensor({1, 2, 3, 4}, 2)), Error);
}

TEST(AutogradRotary, GradientMatchesFiniteDifferences) {
  for (AttentionLayout layout : {AttentionLayout::bhld, AttentionLayout::blhd}) {
    Generator g(6);
    const Tensor x = randn({2, 3, 4, 6}, g), w = randn({2, 3, 4, 6}, g);
    const RotaryOptions o{.base = 100.0, .offset = 3, .layout = layout};
    Variable xv(x.clone(), true);
    autograd::sum(autograd::mul(autograd::rotary_embedding(xv, o), Variable(w))).backward();
    // The exact gradient of sum(w * R x) is R^T w.
    const Tensor want = rotary_embedding_backward(w, o);
    EXPECT_LE(max_abs_diff(xv.grad(), want), 1e-6);
    // And central differences of the forward at a few elements.
    Tensor probe = x.clone();
    float* p = probe.data<float>();
    for (int64_t i : {0, 7, 31, 100, 143}) {
      const float saved = p[i];
      auto f = [&](float at) {
        p[i] = at;
        return qkv::sum(qkv::mul(rotary_embedding(probe, o), w)).item();
      };
      const double numeric = (f(saved + 1e-2f) - f(saved - 1e-2f)) / 2e-2;
      p[i] = saved;
      EXPECT_NEAR(xv.grad().to_values()[static_cast<size_t>(i)], numeric, 2e-3) << i;
    }
  }
}

}  // namespace
}  // namespace qkv::nn
