// Helpers the op files of src/ops share: input checks, the f32 working copy,
// the parallel grain and rows along a dim. Internal to the library.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "core/parallel.h"
#include "qkv/tensor.h"

namespace qkv::ops_detail {

// Work per parallel chunk, in floats. Forking the OpenMP team costs a few
// microseconds; 32 Ki floats of the cheapest kernel (add) take about as long
// on one core, so smaller tensors stay on the calling thread.
inline constexpr int64_t kGrainElements = int64_t{1} << 15;

inline int64_t row_grain(int64_t row_length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1));
}

inline void check_input(const Tensor& t, const char* op, const char* arg) {
  QKV_CHECK(t.defined(), op, ": argument ", arg, " is an undefined tensor");
  QKV_CHECK(t.device().type == DeviceType::cpu, op, ": argument ", arg, " is on ",
            to_string(t.device()), "; only cpu tensors are supported");
  QKV_CHECK(is_floating(t.dtype()), op, ": argument ", arg, " has dtype ", dtype_name(t.dtype()),
            "; expected a floating dtype (f32, f64, bf16 or f16)");
}

// Whether an op with these operands runs its f64 path: any f64 operand
// promotes the rest (torch's type promotion). f64 runs the scalar reference
// kernels with double intermediates (kernels/ref/): it is for checking
// (gradcheck), not speed. Undefined tensors (absent weights) do not count.
inline bool any_f64(std::initializer_list<const Tensor*> operands) {
  for (const Tensor* t : operands)
    if (t->defined() && t->dtype() == DType::f64) return true;
  return false;
}

// A contiguous tensor of element type T (float or double) with x's values:
// x itself when it already is one.
template <class T>
Tensor contiguous_as(const Tensor& x) {
  return x.to(dtype_of<T>::value).contiguous();
}
inline Tensor contiguous_f32(const Tensor& x) {
  return contiguous_as<float>(x);
}

// dst[b][c][r] = src[b][r][c] for a contiguous src of shape [batch, rows,
// cols]: moves a dim last and back for the row ops, in square tiles so that
// both sides are read and written a cache line at a time. (Tensor::contiguous
// of a permuted view walks it element by element: 5x slower here.)
template <class T>
void transpose_batched(const T* src, T* dst, int64_t batch, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  const int64_t tiles = row_tiles * col_tiles;
  detail::parallel_for(0, batch * tiles, row_grain(kTile * kTile), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles;
      const int64_t r0 = item % tiles / col_tiles * kTile, c0 = item % col_tiles * kTile;
      const T* s = src + b * rows * cols;
      T* d = dst + b * rows * cols;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) d[c * rows + r] = s[r * cols + c];
    }
  });
}

// x as contiguous rows of T along `dim`: `data` is [outer * inner, n], rows in
// (outer, inner) order, for x of shape [outer..., n, inner...].
struct RowsAlong {
  Tensor data;
  int64_t outer = 1, n = 1, inner = 1;
};

template <class T = float>
RowsAlong rows_along(const Tensor& x, int64_t dim) {
  RowsAlong r;
  for (int64_t i = 0; i < x.dim(); ++i) {
    const int64_t s = x.size(i);
    (i < dim ? r.outer : i == dim ? r.n : r.inner) *= s;
  }
  const Tensor in = contiguous_as<T>(x);
  if (r.inner == 1) {
    r.data = in;
    return r;
  }
  r.data = Tensor::empty({r.outer * r.inner, r.n}, dtype_of<T>::value);
  transpose_batched(in.data<T>(), r.data.data<T>(), r.outer, r.n, r.inner);
  return r;
}

// The [n] affine parameter of a norm over rows of length n, as contiguous
// T, or an undefined tensor when the caller gave none.
template <class T = float>
Tensor norm_parameter(const Tensor& p, int64_t n, const char* op, const char* arg) {
  if (!p.defined()) return p;
  check_input(p, op, arg);
  QKV_CHECK(p.shape() == Shape{n}, op, ": argument ", arg, " has shape ", shape_string(p.shape()),
            "; expected [", n, "] (the size of x's last dim)");
  return contiguous_as<T>(p);
}

inline void check_norm_input(const Tensor& x, double eps, const char* op) {
  check_input(x, op, "x");
  QKV_CHECK(x.dim() >= 1, op, ": argument x is a scalar (shape []); expected at least 1 dim");
  QKV_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps is ", eps, "; expected a finite value >= 0");
}

}  // namespace qkv::ops_detail
