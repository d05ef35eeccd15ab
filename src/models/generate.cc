// Sampling (temperature, top-k, top-p as Hugging Face's logits warpers) and
// GPT::generate: autoregressive decoding with or without the KV cache.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "qkv/gpt.h"

namespace qkv::nn {
namespace {

void check_options(const GenerationOptions& o, const char* op) {
  QKV_CHECK(std::isfinite(o.temperature) && o.temperature >= 0, op,
            ": temperature must be >= 0 (0: greedy), got ", o.temperature);
  QKV_CHECK(o.top_k >= 0, op, ": top_k must be >= 0 (0: all tokens), got ", o.top_k);
  QKV_CHECK(o.top_p > 0 && o.top_p <= 1, op, ": top_p must be in (0, 1], got ", o.top_p);
}

// The logits as doubles, checked: a 1-D float tensor with no NaN or +inf and
// at least one finite value.
std::vector<double> checked_logits(const Tensor& logits, const char* op) {
  QKV_CHECK(logits.defined() && is_floating(logits.dtype()), op,
            ": logits must be a float tensor, got ",
            logits.defined() ? dtype_name(logits.dtype()) : "undefined");
  QKV_CHECK(logits.dim() == 1 && logits.numel() > 0, op, ": logits must be [vocab], got ",
            shape_string(logits.shape()));
  std::vector<double> x = logits.to_values();
  bool finite = false;
  for (size_t i = 0; i < x.size(); ++i) {
    QKV_CHECK(!std::isnan(x[i]) && x[i] != std::numeric_limits<double>::infinity(), op,
              ": logit ", i, " is ", x[i]);
    finite |= std::isfinite(x[i]);
  }
  QKV_CHECK(finite, op, ": every logit is -inf");
  return x;
}

// The distribution of sampling_distribution, in double.
std::vector<double> distribution(const Tensor& logits, const GenerationOptions& o,
                                 const char* op) {
  check_options(o, op);
  std::vector<double> s = checked_logits(logits, op);
  const int64_t n = static_cast<int64_t>(s.size());
  constexpr double kRemoved = -std::numeric_limits<double>::infinity();
  if (o.temperature == 0) {
    std::vector<double> p(s.size(), 0.0);
    p[static_cast<size_t>(std::max_element(s.begin(), s.end()) - s.begin())] = 1.0;
    return p;
  }
  for (double& v : s) v /= o.temperature;
  // TopKLogitsWarper: remove scores below the k-th largest.
  if (o.top_k > 0 && o.top_k < n) {
    std::vector<double> sorted = s;
    std::nth_element(sorted.begin(), sorted.begin() + (o.top_k - 1), sorted.end(),
                     std::greater<>());
    const double kth = sorted[static_cast<size_t>(o.top_k - 1)];
    for (double& v : s)
      if (v < kth) v = kRemoved;
  }
  auto softmax = [](const std::vector<double>& x) {
    const double top = *std::max_element(x.begin(), x.end());
    std::vector<double> p(x.size());
    double total = 0;
    for (size_t i = 0; i < x.size(); ++i) total += p[i] = std::exp(x[i] - top);
    for (double& v : p) v /= total;
    return p;
  };
  // TopPLogitsWarper: in ascending order of probability, remove the tokens
  // whose cumulative probability is <= 1 - top_p; the most likely stays.
  if (o.top_p < 1) {
    const std::vector<double> p = softmax(s);
    std::vector<int64_t> order(s.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });
    double cumulative = 0;
    for (int64_t i = 0; i + 1 < n; ++i) {
      cumulative += p[order[i]];
      if (cumulative > 1 - o.top_p) break;
      s[order[i]] = kRemoved;
    }
  }
  return softmax(s);
}

}  // namespace

Tensor sampling_distribution(const Tensor& logits, const GenerationOptions& options) {
  const std::vector<double> p = distribution(logits, options, "sampling_distribution");
  return Tensor::from_values(p, {static_cast<int64_t>(p.size())});
}

int32_t sample_next_token(const Tensor& logits, const GenerationOptions& options,
                          Generator& generator) {
  const std::vector<double> p = distribution(logits, options, "sample_next_token");
  if (options.temperature == 0)
    return static_cast<int32_t>(std::max_element(p.begin(), p.end()) - p.begin());
  // Inverse CDF over the kept tokens in id order; the last kept one takes
  // what rounding leaves.
  const double u = generator.uniform();
  double cumulative = 0;
  int32_t last = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) continue;
    last = static_cast<int32_t>(i);
    cumulative += p[i];
    if (u < cumulative) return last;
  }
  return last;
}

std::vector<int32_t> GPT::generate(const std::vector<int32_t>& prompt,
                                   const GenerationOptions& options) const {
  const char* op = "GPT.generate";
  check_options(options, op);
  QKV_CHECK(!prompt.empty(), op, ": the prompt is empty");
  for (size_t i = 0; i < prompt.size(); ++i)
    QKV_CHECK(prompt[i] >= 0 && prompt[i] < config_.vocab_size, op, ": prompt token ", i, " is ",
              prompt[i], ", outside [0, vocab_size ", config_.vocab_size, ")");
  QKV_CHECK(options.max_new_tokens >= 0, op, ": max_new_tokens must be >= 0, got ",
            options.max_new_tokens);
  for (size_t i = 0; i < options.stop.size(); ++i)
    QKV_CHECK(!options.stop[i].empty(), op, ": stop sequence ", i, " is empty");

  Generator generator(options.seed);
  std::vector<int32_t> sequence = prompt, out;
  const int64_t context = config_.context;
  // [1, n] ids of the last n tokens of the sequence.
  auto last = [&](int64_t n) {
    n = std::min<int64_t>(n, static_cast<int64_t>(sequence.size()));
    Tensor ids = Tensor::empty({1, n}, DType::i32);
    std::copy(sequence.end() - n, sequence.end(), ids.data<int32_t>());
    return ids;
  };
  KVCache cache;
  if (options.use_cache) cache = make_cache(1);
  int64_t pending = static_cast<int64_t>(sequence.size());  // tokens not yet in the cache
  auto stopped = [&] {
    for (const std::vector<int32_t>& s : options.stop)
      if (s.size() <= out.size() && std::equal(s.rbegin(), s.rend(), out.rbegin())) return true;
    return false;
  };
  while (static_cast<int64_t>(out.size()) < options.max_new_tokens) {
    Tensor logits;
    if (options.use_cache) {
      if (cache.length() + pending > context) {
        // The window passes the context: start again from the last `context`
        // tokens (a long prompt) or, once the cache is full, the last context / 2.
        cache.clear();
        pending = pending > 1 ? context : std::max<int64_t>(context / 2, 1);
      }
      logits = next_logits(last(pending), &cache);
    } else {
      logits = next_logits(last(context), nullptr);  // nanoGPT's idx[:, -block_size:]
    }
    const int32_t token = sample_next_token(logits, options, generator);
    sequence.push_back(token);
    out.push_back(token);
    pending = 1;
    if (options.on_token && !options.on_token(token)) break;
    if (stopped()) break;
  }
  return out;
}

}  // namespace qkv::nn
