// Row-by-row attention in double over the resolved arguments of plan.h: the
// oracle's building blocks, also used by the additive scoring path.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/attention.h"

namespace qkv::detail {

// Element i of a row of f32 or bf16 values.
double load(const void* row, int64_t i, bool bf16);
// Element i of a row of q, k or v in slice s (f32, bf16 or f64).
double load(const kernels::AttentionSlice& s, const void* row, int64_t i);
// Bytes per element of s's q, k and v.
int64_t element_size(const kernels::AttentionSlice& s);
// Whether key j is hidden from query i (causal, padding, boolean mask, mask modifier).
bool hidden(const kernels::AttentionSlice& s, int64_t i, int64_t j);
// scale * q_i . k_j, before the score modifier.
double raw_score(const kernels::AttentionSlice& s, int64_t i, int64_t j);
// p holds row i's raw scores; replaces them by the probabilities (score
// modifier, additive mask, hidden pairs, softmax) and returns the row's
// log-sum-exp. A row with every key hidden becomes zeros, lse -inf.
double softmax_row(const kernels::AttentionSlice& s, int64_t i, std::vector<double>& p);
// softmax_row over raw_score().
double probabilities(const kernels::AttentionSlice& s, int64_t i, std::vector<double>& p);
// The factor dropout applies to weight (i, j): 0 or 1 / (1 - p) (1 without dropout).
double dropout_scale(const kernels::AttentionSlice& s, int64_t i, int64_t j);

}  // namespace qkv::detail
