// The element-wise, softmax, normalisation and reduction ops of qkv/ops.h:
// validate once, bring the operands to contiguous f32 (copying only when the
// dtype or layout asks for it), split the work into runs for the kernels of
// kernels/cpu/elementwise.h and spread the runs over the thread team.
#include "qkv/ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/elementwise.h"

namespace qkv {
namespace {

// Work per parallel chunk, in floats. Forking the OpenMP team costs a few
// microseconds; 32 Ki floats of the cheapest kernel (add) take about as long
// on one core, so smaller tensors stay on the calling thread.
constexpr int64_t kGrainElements = int64_t{1} << 15;

int64_t row_grain(int64_t row_length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1));
}

void check_input(const Tensor& t, const char* op, const char* arg) {
  QKV_CHECK(t.defined(), op, ": argument ", arg, " is an undefined tensor");
  QKV_CHECK(t.device().type == DeviceType::cpu, op, ": argument ", arg, " is on ",
            to_string(t.device()), "; only cpu tensors are supported");
  QKV_CHECK(is_floating(t.dtype()), op, ": argument ", arg, " has dtype ", dtype_name(t.dtype()),
            "; expected a floating dtype (f32, bf16 or f16)");
}

// A contiguous f32 tensor with x's values: x itself when it already is one.
Tensor contiguous_f32(const Tensor& x) { return x.to(DType::f32).contiguous(); }

// Where to write an op's f32 result for input `in` (contiguous f32) made
// from the caller's `x`: in place when `in` is a private copy, else new.
Tensor output_for(const Tensor& in, const Tensor& x) {
  return in.storage() == x.storage() ? Tensor::empty(in.shape(), DType::f32) : in;
}

// The f32 result in the caller's dtype, contiguous.
Tensor finish(const Tensor& result, DType dtype) { return result.to(dtype).contiguous(); }

// dst[b][c][r] = src[b][r][c] for a contiguous src of shape [batch, rows,
// cols]: moves a dim last and back for the row ops, in square tiles so that
// both sides are read and written a cache line at a time. (Tensor::contiguous
// of a permuted view walks it element by element: 5x slower here.)
void transpose_batched(const float* src, float* dst, int64_t batch, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  const int64_t tiles = row_tiles * col_tiles;
  detail::parallel_for(0, batch * tiles, row_grain(kTile * kTile), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles;
      const int64_t r0 = item % tiles / col_tiles * kTile, c0 = item % col_tiles * kTile;
      const float* s = src + b * rows * cols;
      float* d = dst + b * rows * cols;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) d[c * rows + r] = s[r * cols + c];
    }
  });
}

// x as contiguous f32 rows along `dim`: `data` is [outer * inner, n], rows in
// (outer, inner) order, for x of shape [outer..., n, inner...].
struct RowsAlong {
  Tensor data;
  int64_t outer = 1, n = 1, inner = 1;
};

RowsAlong rows_along(const Tensor& x, int64_t dim) {
  RowsAlong r;
  for (int64_t i = 0; i < x.dim(); ++i) {
    const int64_t s = x.size(i);
    (i < dim ? r.outer : i == dim ? r.n : r.inner) *= s;
  }
  const Tensor in = contiguous_f32(x);
  if (r.inner == 1) {
    r.data = in;
    return r;
  }
  r.data = Tensor::empty({r.outer * r.inner, r.n}, DType::f32);
  transpose_batched(in.data<float>(), r.data.data<float>(), r.outer, r.n, r.inner);
  return r;
}

// ---- element-wise maps ------------------------------------------------------

template <class Kernel>
Tensor map_unary(const Tensor& x, const char* op, Kernel kernel) {
  check_input(x, op, "x");
  const Tensor in = contiguous_f32(x);
  Tensor out = output_for(in, x);
  const float* src = in.data<float>();
  float* dst = out.data<float>();
  detail::parallel_for(0, in.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    kernel(src + begin, dst + begin, static_cast<size_t>(end - begin));
  });
  return finish(out, x.dtype());
}

// ---- broadcasting binary ops -----------------------------------------------

// A broadcast of three operands (out, a, b) over a common shape, with every
// dim of size 1 dropped and adjacent dims merged where all three strides
// allow it, so that the common cases (same shapes, a row vector, a scalar)
// become one long run or a few long rows.
struct Layout {
  Shape shape;
  std::array<Shape, 3> strides;
};

Layout coalesce(const Shape& shape, const std::array<Shape, 3>& strides) {
  Layout l;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    const bool merge = !l.shape.empty() && [&] {
      for (size_t k = 0; k < 3; ++k)
        if (l.strides[k].back() != strides[k][i] * shape[i]) return false;
      return true;
    }();
    if (merge) {
      l.shape.back() *= shape[i];
      for (size_t k = 0; k < 3; ++k) l.strides[k].back() = strides[k][i];
      continue;
    }
    l.shape.push_back(shape[i]);
    for (size_t k = 0; k < 3; ++k) l.strides[k].push_back(strides[k][i]);
  }
  if (l.shape.empty()) {  // every dim 1: one element
    l.shape = {1};
    for (auto& s : l.strides) s = {1};
  }
  return l;
}

// `same` runs out = f(a, b) over equal-length runs; `with_scalar` runs
// out = f(run, value) for an operand broadcast along the run. Both ops here
// (add, mul) commute, so either operand may be the scalar.
template <class Same, class WithScalar>
Tensor broadcast_binary(const Tensor& a, const Tensor& b, const char* op, Same same,
                        WithScalar with_scalar) {
  check_input(a, op, "a");
  check_input(b, op, "b");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  const DType dtype = a.dtype() == b.dtype() ? a.dtype() : DType::f32;  // torch's promotion
  Tensor out = Tensor::empty(shape, DType::f32);
  if (out.numel() == 0) return finish(out, dtype);
  Tensor fa = a.to(DType::f32).expand(shape);
  Tensor fb = b.to(DType::f32).expand(shape);
  Layout l = coalesce(shape, {out.strides(), fa.strides(), fb.strides()});
  const auto inner_ok = [&] {
    const int64_t sa = l.strides[1].back(), sb = l.strides[2].back();
    return (sa == 1 || sa == 0) && (sb == 1 || sb == 0) && (sa | sb) != 0;
  };
  if (!inner_ok()) {
    // Strided or doubly broadcast innermost runs: copy both into the output's
    // layout once and run flat.
    fa = fa.contiguous();
    fb = fb.contiguous();
    l = coalesce(shape, {out.strides(), fa.strides(), fb.strides()});
  }
  const float* pa = fa.data<float>();
  const float* pb = fb.data<float>();
  float* po = out.data<float>();
  const int64_t ndim = static_cast<int64_t>(l.shape.size());
  const int64_t inner = l.shape.back();
  const int64_t rows = shape_numel(l.shape) / inner;
  // Long rows are cut into chunks so that one huge run still uses every thread.
  const int64_t chunk = std::min(inner, kGrainElements);
  const int64_t chunks_per_row = (inner + chunk - 1) / chunk;
  const int64_t sa = l.strides[1].back(), sb = l.strides[2].back();
  detail::parallel_for(0, rows * chunks_per_row, row_grain(chunk), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int64_t row = item / chunks_per_row;
      const int64_t start = item % chunks_per_row * chunk;
      const size_t n = static_cast<size_t>(std::min(chunk, inner - start));
      std::array<int64_t, 3> off{};
      for (int64_t d = ndim - 2; d >= 0; --d) {
        const int64_t index = row % l.shape[d];
        row /= l.shape[d];
        for (size_t k = 0; k < 3; ++k) off[k] += index * l.strides[k][d];
      }
      float* o = po + off[0] + start;
      const float* ra = pa + off[1] + start * sa;
      const float* rb = pb + off[2] + start * sb;
      if (sa == 1 && sb == 1) {
        same(ra, rb, o, n);
      } else if (sb == 0) {
        with_scalar(ra, *rb, o, n);
      } else {
        with_scalar(rb, *ra, o, n);
      }
    }
  });
  return finish(out, dtype);
}

// ---- row ops ---------------------------------------------------------------

// Runs kernel(in_row, out_row, n) over every row of x along `dim`.
template <class Kernel>
Tensor map_rows(const Tensor& x, int64_t dim, const char* op, Kernel kernel) {
  check_input(x, op, "x");
  if (x.dim() == 0) {  // a scalar is one row of one element (dim 0 or -1, as in torch)
    wrap_dim(dim, 1, op);
    return map_rows(x.reshape({1}), 0, op, kernel).reshape({});
  }
  const int64_t d = wrap_dim(dim, x.dim(), op);
  if (x.numel() == 0) return Tensor::empty(x.shape(), x.dtype());
  const RowsAlong rows = rows_along(x, d);
  Tensor out = output_for(rows.data, x);
  const int64_t n = rows.n;
  const float* src = rows.data.data<float>();
  float* dst = out.data<float>();
  detail::parallel_for(0, rows.outer * rows.inner, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      kernel(src + r * n, dst + r * n, static_cast<size_t>(n));
  });
  if (rows.inner == 1) return finish(out.view(x.shape()), x.dtype());
  Tensor back = Tensor::empty(x.shape(), DType::f32);
  transpose_batched(dst, back.data<float>(), rows.outer, rows.inner, n);
  return finish(back, x.dtype());
}

// The [n] affine parameter of a norm over rows of length n, as contiguous
// f32, or an undefined tensor when the caller gave none.
Tensor norm_parameter(const Tensor& p, int64_t n, const char* op, const char* arg) {
  if (!p.defined()) return p;
  check_input(p, op, arg);
  QKV_CHECK(p.shape() == Shape{n}, op, ": argument ", arg, " has shape ", shape_string(p.shape()),
            "; expected [", n, "] (the size of x's last dim)");
  return contiguous_f32(p);
}

void check_norm_input(const Tensor& x, double eps, const char* op) {
  check_input(x, op, "x");
  QKV_CHECK(x.dim() >= 1, op, ": argument x is a scalar (shape []); expected at least 1 dim");
  QKV_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps is ", eps,
            "; expected a finite value >= 0");
}

// ---- reductions --------------------------------------------------------------

using RowReduce = float (*)(const float*, size_t);

Tensor reduce_dim(const Tensor& x, int64_t dim, bool keepdim, const char* op, RowReduce reduce,
                  bool empty_allowed) {
  check_input(x, op, "x");
  if (x.dim() == 0) {
    wrap_dim(dim, 1, op);
    return x.clone();  // reducing a scalar over its one element
  }
  const int64_t d = wrap_dim(dim, x.dim(), op);
  const int64_t n = x.size(d);
  QKV_CHECK(n > 0 || empty_allowed, op, ": cannot reduce dim ", d, " of size 0 (shape ",
            shape_string(x.shape()), "): the result has no identity element");
  Shape out_shape = x.shape();
  if (keepdim) {
    out_shape[static_cast<size_t>(d)] = 1;
  } else {
    out_shape.erase(out_shape.begin() + d);
  }
  Tensor out = Tensor::empty(out_shape, DType::f32);
  const int64_t rows = out.numel();
  if (rows == 0) return finish(out, x.dtype());
  const RowsAlong in = rows_along(x, d);
  const float* src = in.data.data<float>();
  float* dst = out.data<float>();
  detail::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) dst[r] = reduce(src + r * n, static_cast<size_t>(n));
  });
  return finish(out, x.dtype());
}

// Partial results of `reduce` over fixed blocks of x's elements. Blocks do
// not depend on the thread count, so neither does the combined result.
std::vector<float> block_partials(const Tensor& x, RowReduce reduce) {
  const Tensor in = contiguous_f32(x);
  const int64_t numel = in.numel();
  const int64_t blocks = (numel + kGrainElements - 1) / kGrainElements;
  std::vector<float> partials(static_cast<size_t>(blocks));
  const float* src = in.data<float>();
  detail::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = b * kGrainElements;
      partials[static_cast<size_t>(b)] =
          reduce(src + start, static_cast<size_t>(std::min(kGrainElements, numel - start)));
    }
  });
  return partials;
}

double sum_all(const Tensor& x, const char* op) {
  check_input(x, op, "x");
  double total = 0.0;  // the per-block f32 sums are combined in double
  for (float p : block_partials(x, kernels::Sum)) total += p;
  return total;
}

Tensor scalar_of(double value, DType dtype) { return Tensor::full({}, value, dtype); }

}  // namespace

// ---- public ops --------------------------------------------------------------

Tensor add(const Tensor& a, const Tensor& b) {
  return broadcast_binary(a, b, "add", kernels::Add, kernels::AddScalar);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return broadcast_binary(a, b, "mul", kernels::Mul, kernels::Scale);
}

Tensor scale(const Tensor& x, double factor) {
  const float f = static_cast<float>(factor);
  return map_unary(x, "scale",
                   [f](const float* in, float* out, size_t n) { kernels::Scale(in, f, out, n); });
}

Tensor exp(const Tensor& x) { return map_unary(x, "exp", kernels::Exp); }

Tensor silu(const Tensor& x) { return map_unary(x, "silu", kernels::Silu); }

Tensor gelu(const Tensor& x, GeluApproximation approximation) {
  QKV_CHECK(approximation == GeluApproximation::none || approximation == GeluApproximation::tanh,
            "gelu: approximation ", static_cast<int>(approximation), " is not none or tanh");
  return map_unary(x, "gelu",
                   approximation == GeluApproximation::tanh ? kernels::GeluTanh : kernels::GeluErf);
}

Tensor softmax(const Tensor& x, int64_t dim) {
  return map_rows(x, dim, "softmax", kernels::Softmax);
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  return map_rows(x, dim, "log_softmax", kernels::LogSoftmax);
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_norm_input(x, eps, "layer_norm");
  const int64_t n = x.size(-1);
  const Tensor w = norm_parameter(weight, n, "layer_norm", "weight");
  const Tensor b = norm_parameter(bias, n, "layer_norm", "bias");
  const float* pw = w.defined() ? w.data<float>() : nullptr;
  const float* pb = b.defined() ? b.data<float>() : nullptr;
  const float e = static_cast<float>(eps);
  return map_rows(x, -1, "layer_norm", [=](const float* in, float* out, size_t len) {
    kernels::LayerNorm(in, pw, pb, e, out, len);
  });
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_norm_input(x, eps, "rms_norm");
  const Tensor w = norm_parameter(weight, x.size(-1), "rms_norm", "weight");
  const float* pw = w.defined() ? w.data<float>() : nullptr;
  const float e = static_cast<float>(eps);
  return map_rows(x, -1, "rms_norm", [=](const float* in, float* out, size_t len) {
    kernels::RmsNorm(in, pw, e, out, len);
  });
}

Tensor sum(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce_dim(x, dim, keepdim, "sum", kernels::Sum, /*empty_allowed=*/true);
}

Tensor mean(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce_dim(x, dim, keepdim, "mean", kernels::Mean, /*empty_allowed=*/true);
}

Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce_dim(x, dim, keepdim, "max", kernels::Max, /*empty_allowed=*/false);
}

Tensor sum(const Tensor& x) { return scalar_of(sum_all(x, "sum"), x.dtype()); }

Tensor mean(const Tensor& x) {
  const double total = sum_all(x, "mean");
  const double n = static_cast<double>(x.numel());
  return scalar_of(n == 0 ? std::numeric_limits<double>::quiet_NaN() : total / n, x.dtype());
}

Tensor max(const Tensor& x) {
  check_input(x, "max", "x");
  QKV_CHECK(x.numel() > 0, "max: argument x has no elements (shape ", shape_string(x.shape()),
            "); the maximum of nothing is undefined");
  float result = -std::numeric_limits<float>::infinity();
  for (float p : block_partials(x, kernels::Max)) {
    if (std::isnan(p)) return scalar_of(p, x.dtype());
    result = std::max(result, p);
  }
  return scalar_of(result, x.dtype());
}

}  // namespace qkv
