// Walking strided tensors: the innermost dimension as a run, the outer ones
// by an odometer. Internal to the library.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "qkv/tensor.h"

namespace qkv::detail {

// Calls fn(offsets, inner) for each run of the innermost dimension of `shape`,
// where offsets[i] is the element offset of the run's first element under
// strides[i], and `inner` is the run length (shape.back()). Scalars (rank 0)
// give one run of length 1.
template <size_t N, class Fn>
void for_each_run(const Shape& shape, const std::array<const Shape*, N>& strides, Fn&& fn) {
  const int64_t ndim = static_cast<int64_t>(shape.size());
  std::array<int64_t, N> offsets{};
  if (ndim == 0) {
    fn(offsets, int64_t{1});
    return;
  }
  for (int64_t s : shape)
    if (s == 0) return;
  const int64_t inner = shape.back();
  std::vector<int64_t> index(static_cast<size_t>(ndim - 1), 0);
  while (true) {
    fn(offsets, inner);
    int64_t d = ndim - 2;
    for (; d >= 0; --d) {
      ++index[d];
      for (size_t i = 0; i < N; ++i) offsets[i] += (*strides[i])[d];
      if (index[d] < shape[d]) break;
      for (size_t i = 0; i < N; ++i) offsets[i] -= (*strides[i])[d] * shape[d];
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

// Reads element i of a run (pointer already at the run start) as double.
double load_as_double(const void* base, DType dtype, int64_t index);
void store_from_double(void* base, DType dtype, int64_t index, double value);

}  // namespace qkv::detail
