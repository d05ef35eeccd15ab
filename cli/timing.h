// Timing helpers shared by `qkv demo` and `qkv bench`.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

#include "qkv/qkv.h"

namespace qkv::cli {

// The median wall time of `reps` calls of fn, after one warm-up call
// (primitive creation, page faults).
template <class Fn>
double median_seconds(int reps, Fn&& fn) {
  using Clock = std::chrono::steady_clock;
  fn();
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// softmax(scale * q k^T) v for q, k, v: [..., L, D], via the library's ops
// (the L x L scores in memory): what the fused kernel is compared with.
inline Tensor unfused_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  return matmul(softmax(qkv::scale(matmul(q, k, {.transpose_b = true}), scale)), v);
}

}  // namespace qkv::cli
