// The materialising, double-precision attention shared by the oracle and the
// additive scoring path: masks, modifiers, softmax and dropout row by row.
#include "attention/dense.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "qkv/dtype.h"

namespace qkv::detail {

double load(const void* row, int64_t i, bool bf16) {
  return bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(row)[i])
              : static_cast<const float*>(row)[i];
}

double load(const kernels::AttentionSlice& s, const void* row, int64_t i) {
  return s.f64 ? static_cast<const double*>(row)[i] : load(row, i, s.bf16);
}

int64_t element_size(const kernels::AttentionSlice& s) {
  return s.f64 ? 8 : s.bf16 ? 2 : 4;
}

// Whether key j is hidden from query i in slice s.
bool hidden(const kernels::AttentionSlice& s, int64_t i, int64_t j) {
  return (s.causal_diagonal != kernels::kNoCausal && j > i + s.causal_diagonal) ||
         (s.key_padding && s.key_padding[j * s.key_padding_stride]) ||
         (s.allowed && !s.allowed[i * s.allowed_row_stride + j * s.allowed_col_stride]) ||
         (s.hooks && !s.hooks->allowed(s.batch, s.head, i, j));
}

// The scaled score of (i, j) before the score modifier, in double.
double raw_score(const kernels::AttentionSlice& s, int64_t i, int64_t j) {
  const int64_t elem = element_size(s);
  const char* q = static_cast<const char*>(s.q) + i * s.q_stride * elem;
  const char* k = static_cast<const char*>(s.k) + j * s.k_stride * elem;
  double dot = 0;
  for (int64_t c = 0; c < s.d; ++c) dot += load(s, q, c) * load(s, k, c);
  return dot * (s.f64 ? s.scale_f64 : s.scale);
}

double softmax_row(const kernels::AttentionSlice& s, int64_t i, std::vector<double>& p) {
  double top = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < s.lk; ++j) {
    double score = p[j];
    if (s.hooks && s.hooks->has_score_mod())
      score = s.hooks->score(score, s.batch, s.head, i, j);
    if (s.bias) score += s.bias[i * s.bias_row_stride + j * s.bias_col_stride];
    p[j] = hidden(s, i, j) ? -std::numeric_limits<double>::infinity() : score;
    top = std::max(top, p[j]);
  }
  if (top == -std::numeric_limits<double>::infinity()) {
    std::fill(p.begin(), p.end(), 0.0);
    return top;
  }
  double total = 0;
  for (double& x : p) total += (x = std::exp(x - top));
  for (double& x : p) x /= total;
  return top + std::log(total);
}

double probabilities(const kernels::AttentionSlice& s, int64_t i, std::vector<double>& p) {
  for (int64_t j = 0; j < s.lk; ++j) p[j] = raw_score(s, i, j);
  return softmax_row(s, i, p);
}

double dropout_scale(const kernels::AttentionSlice& s, int64_t i, int64_t j) {
  if (s.dropout <= 0) return 1.0;
  return kernels::DropoutKeep(s, i, j) ? 1.0 / (1.0 - s.dropout) : 0.0;
}

}  // namespace qkv::detail
