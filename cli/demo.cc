// `qkv demo`: the main job until the training commands land.
//
// Part 1 runs scaled dot-product attention over real text: every line of Tiny
// Shakespeare becomes a vector of hashed character trigrams, the lines attend
// to one another (a line never attends to itself), and for a few lines the
// demo prints where their attention went. Part 2 times attention at the shape
// PyTorch's CPU flash-attention work reported (B=1, H=25, L=1024, D=64), both
// unfused (matmul, softmax, matmul) and with the fused kernel, checks both
// against a double-precision reference and reports GFLOP/s, also as a
// fraction of the matmul rate measured in the same run.
#include "demo.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "qkv/qkv.h"
#include "timing.h"

namespace qkv::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<std::string> read_lines(const std::string& path, int64_t max_lines) {
  std::ifstream in(path);
  QKV_CHECK(in, "demo: cannot open data file '", path, "'");
  std::vector<std::string> lines;
  std::string line;
  while (static_cast<int64_t>(lines.size()) < max_lines && std::getline(in, line))
    if (line.size() >= 12 && line.back() != ':') lines.push_back(line);  // skip speaker names
  QKV_CHECK(lines.size() >= 8, "demo: '", path, "' has only ", lines.size(),
            " usable lines (need at least 8)");
  return lines;
}

// Hashed character trigrams, L2-normalised so that q.k is a cosine similarity.
Tensor featurize(const std::vector<std::string>& lines, int64_t dim) {
  Tensor x = Tensor::zeros({static_cast<int64_t>(lines.size()), dim});
  float* data = x.data<float>();
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string s = " " + lines[i] + " ";
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    float* row = data + i * dim;
    for (size_t j = 0; j + 3 <= s.size(); ++j) {
      uint32_t h = 2166136261u;  // FNV-1a over the trigram
      for (size_t k = j; k < j + 3; ++k) h = (h ^ static_cast<unsigned char>(s[k])) * 16777619u;
      row[h % dim] += 1.0f;
    }
    float norm = 0;
    for (int64_t d = 0; d < dim; ++d) norm += row[d] * row[d];
    for (int64_t d = 0; d < dim; ++d) row[d] /= std::sqrt(std::max(norm, 1e-12f));
  }
  return x;
}

// Double-precision attention for query row `row` of head `h` (all [1, H, L, D]).
std::vector<double> reference_row(const Tensor& q, const Tensor& k, const Tensor& v, int64_t h,
                                  int64_t row, double scale) {
  const int64_t L = k.size(2), D = q.size(3);
  std::vector<double> logits(L), out(D, 0.0);
  for (int64_t j = 0; j < L; ++j) {
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += q.at({0, h, row, d}) * k.at({0, h, j, d});
    logits[j] = dot * scale;
  }
  const double top = *std::max_element(logits.begin(), logits.end());
  double total = 0;
  for (double& l : logits) total += (l = std::exp(l - top));
  for (int64_t j = 0; j < L; ++j)
    for (int64_t d = 0; d < D; ++d) out[d] += logits[j] / total * v.at({0, h, j, d});
  return out;
}

}  // namespace

nlohmann::json run_demo(const DemoOptions& options) {
  std::FILE* log = options.log;
  nlohmann::json result;
  result["threads"] = num_threads();

  // ---- Part 1: lines of Shakespeare attending to one another ----
  const auto lines = read_lines(options.data_path, options.quick ? 1024 : 4096);
  const int64_t n = static_cast<int64_t>(lines.size());
  const Tensor x = featurize(lines, 256);
  // A sharp temperature: cosine similarities live in [0, 1], so 1/sqrt(d) would be flat.
  const double temperature_scale = 20.0;
  auto start = Clock::now();
  const Tensor scores = matmul(x, x, {.transpose_b = true});
  Tensor masked = scale(scores, temperature_scale);
  float* s = masked.data<float>();
  for (int64_t i = 0; i < n; ++i) s[i * n + i] = -std::numeric_limits<float>::infinity();
  const Tensor weights = softmax(masked);
  const Tensor mixed = matmul(weights, x);  // each line's attention-weighted context vector
  const double text_seconds = seconds_since(start);

  const float* w = weights.data<float>();
  double mean_entropy = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (w[i * n + j] > 0) mean_entropy -= w[i * n + j] * std::log(w[i * n + j]) / n;
  std::fprintf(log, "Self-attention over %lld lines of Tiny Shakespeare (%s), %.1f ms on %d threads\n",
              static_cast<long long>(n), options.data_path.c_str(), text_seconds * 1e3,
              num_threads());
  std::fprintf(log, "mean attention entropy %.2f nats (uniform would be %.2f)\n", mean_entropy,
              std::log(static_cast<double>(n - 1)));
  nlohmann::json examples = nlohmann::json::array();
  const int64_t samples = 4;
  for (int64_t k = 0; k < samples; ++k) {
    const int64_t i = (k * 7919 + 13) % n;
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                      [&](int64_t a, int64_t b) { return w[i * n + a] > w[i * n + b]; });
    std::fprintf(log, "\n  \"%s\" attends to\n", lines[i].c_str());
    nlohmann::json targets = nlohmann::json::array();
    for (int t = 0; t < 3; ++t) {
      const int64_t j = order[t];
      std::fprintf(log, "    %5.1f%%  \"%s\"\n", 100.0 * w[i * n + j], lines[j].c_str());
      targets.push_back({{"line", lines[j]}, {"weight", w[i * n + j]}});
    }
    examples.push_back({{"query", lines[i]}, {"top", targets}});
  }
  // How much of each line its attention output (a mix of other lines) recovers.
  const Tensor agreement = mean(sum(mul(mixed, x), 1));
  std::fprintf(log, "\n  mean cosine between a line and its attention output: %.3f\n", agreement.item());
  result["text"] = {{"lines", n},
                    {"seconds", text_seconds},
                    {"mean_entropy", mean_entropy},
                    {"mean_output_cosine", agreement.item()},
                    {"examples", examples}};

  // ---- Part 2: attention throughput at the torch-ref shape ----
  const int64_t B = 1, H = 25, L = options.quick ? 256 : 1024, D = 64;
  Generator gen(options.seed);
  const Tensor q = randn({B, H, L, D}, gen), k = randn({B, H, L, D}, gen),
               v = randn({B, H, L, D}, gen);
  const double sm_scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int reps = options.quick ? 3 : 10;
  Tensor unfused, fused;
  const double unfused_s = median_seconds(reps, [&] { unfused = unfused_attention(q, k, v, sm_scale); });
  const double fused_s = median_seconds(reps, [&] { fused = attention(q, k, v).output; });
  const double gemm_s = median_seconds(reps, [&] { matmul(q, k, {.transpose_b = true}); });
  double max_error = 0;
  for (const Tensor* out : {&unfused, &fused})
    for (int64_t h : {int64_t{0}, H - 1})
      for (int64_t row : {int64_t{0}, L / 2, L - 1}) {
        const auto ref = reference_row(q, k, v, h, row, sm_scale);
        for (int64_t d = 0; d < D; ++d)
          max_error = std::max(max_error, std::abs(out->at({0, h, row, d}) - ref[d]));
      }
  const double flops = 4.0 * B * H * L * L * D;
  const double gemm_gflops = 2.0 * B * H * L * L * D / gemm_s / 1e9;
  std::fprintf(log, "\nAttention B=%lld H=%lld L=%lld D=%lld, f32, %d threads:\n",
               static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(L),
               static_cast<long long>(D), num_threads());
  std::fprintf(log, "  unfused (matmul, softmax, matmul): %7.2f ms, %6.1f GFLOP/s, L x L scores in memory\n",
               unfused_s * 1e3, flops / unfused_s / 1e9);
  std::fprintf(log, "  fused (qkv::attention):            %7.2f ms, %6.1f GFLOP/s = %.0f%% of the matmul rate, O(L) memory\n",
               fused_s * 1e3, flops / fused_s / 1e9, 100 * flops / fused_s / 1e9 / gemm_gflops);
  std::fprintf(log, "  fused is %.2fx faster; max |error| of either against a float64 reference: %.2e\n",
               unfused_s / fused_s, max_error);
  result["attention"] = {{"shape", {B, H, L, D}},
                         {"unfused_ms", unfused_s * 1e3},
                         {"fused_ms", fused_s * 1e3},
                         {"fused_gflops", flops / fused_s / 1e9},
                         {"gemm_gflops", gemm_gflops},
                         {"fused_fraction_of_gemm", flops / fused_s / 1e9 / gemm_gflops},
                         {"max_abs_error_vs_f64", max_error}};
  QKV_CHECK(max_error < 1e-4, "demo: attention differs from the float64 reference by ", max_error);
  return result;
}

}  // namespace qkv::cli
