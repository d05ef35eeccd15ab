// The element-wise, softmax, normalisation and reduction ops of qkv/ops.h:
// validate once, bring the operands to contiguous f32 (copying only when the
// dtype or layout asks for it), split the work into runs for the kernels of
// kernels/cpu/elementwise.h and spread the runs over the thread team. With an
// f64 operand the same layout code runs on double and hands the runs to the
// reference kernels (kernels/ref/) instead.
#include "qkv/ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/ref/elementwise_ref.h"
#include "ops/common.h"

namespace qkv {
namespace {

using namespace ops_detail;

namespace ref = kernels::ref;

// Where to write an op's result for input `in` (contiguous f32 or f64) made
// from the caller's `x`: in place when `in` is a private copy, else new.
Tensor output_for(const Tensor& in, const Tensor& x) {
  return in.storage() == x.storage() ? Tensor::empty(in.shape(), in.dtype()) : in;
}

// The f32 (or f64) result in the caller's dtype, contiguous.
Tensor finish(const Tensor& result, DType dtype) { return result.to(dtype).contiguous(); }

// The dtype of a result computed in T from input x: f64 whenever the op ran
// in double (an f64 operand, perhaps a norm's weight, promotes the rest),
// else x's own.
template <class T>
DType result_dtype(const Tensor& x) {
  return std::is_same_v<T, double> ? DType::f64 : x.dtype();
}

// Every op runs on T = float (the SIMD kernels; bf16 / f16 through f32) or,
// when an operand is f64, on T = double (the reference kernels).

// ---- element-wise maps ------------------------------------------------------

template <class T, class Kernel>
Tensor map_unary(const Tensor& x, const char* op, Kernel kernel) {
  check_input(x, op, "x");
  const Tensor in = contiguous_as<T>(x);
  Tensor out = output_for(in, x);
  const T* src = in.data<T>();
  T* dst = out.data<T>();
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

// `same` runs out = f(a, b) over equal-length runs; `b_scalar` runs
// out = f(run of a, b) for b broadcast along the run and `a_scalar` runs
// out = f(a, run of b) for a broadcast along it; both take (run, scalar, out,
// n). For the ops that commute (add, mul) the last two are the same kernel.
template <class T, class Same, class BScalar, class AScalar>
Tensor broadcast_binary(const Tensor& a, const Tensor& b, const char* op, Same same,
                        BScalar b_scalar, AScalar a_scalar) {
  check_input(a, op, "a");
  check_input(b, op, "b");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  constexpr DType kType = dtype_of<T>::value;
  const DType dtype = a.dtype() == b.dtype() ? a.dtype() : kType;  // torch's promotion
  Tensor out = Tensor::empty(shape, kType);
  if (out.numel() == 0) return finish(out, dtype);
  Tensor fa = a.to(kType).expand(shape);
  Tensor fb = b.to(kType).expand(shape);
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
  const T* pa = fa.data<T>();
  const T* pb = fb.data<T>();
  T* po = out.data<T>();
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
      T* o = po + off[0] + start;
      const T* ra = pa + off[1] + start * sa;
      const T* rb = pb + off[2] + start * sb;
      if (sa == 1 && sb == 1) {
        same(ra, rb, o, n);
      } else if (sb == 0) {
        b_scalar(ra, *rb, o, n);
      } else {
        a_scalar(rb, *ra, o, n);
      }
    }
  });
  return finish(out, dtype);
}

// ---- row ops ---------------------------------------------------------------

// Runs kernel(in_row, out_row, n) over every row of x along `dim`.
template <class T, class Kernel>
Tensor map_rows(const Tensor& x, int64_t dim, const char* op, Kernel kernel) {
  check_input(x, op, "x");
  if (x.dim() == 0) {  // a scalar is one row of one element (dim 0 or -1, as in torch)
    wrap_dim(dim, 1, op);
    return map_rows<T>(x.reshape({1}), 0, op, kernel).reshape({});
  }
  const int64_t d = wrap_dim(dim, x.dim(), op);
  if (x.numel() == 0) return Tensor::empty(x.shape(), result_dtype<T>(x));
  const RowsAlong rows = rows_along<T>(x, d);
  Tensor out = output_for(rows.data, x);
  const int64_t n = rows.n;
  const T* src = rows.data.data<T>();
  T* dst = out.data<T>();
  detail::parallel_for(0, rows.outer * rows.inner, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      kernel(src + r * n, dst + r * n, static_cast<size_t>(n));
  });
  if (rows.inner == 1) return finish(out.view(x.shape()), result_dtype<T>(x));
  Tensor back = Tensor::empty(x.shape(), dtype_of<T>::value);
  transpose_batched(dst, back.data<T>(), rows.outer, rows.inner, n);
  return finish(back, result_dtype<T>(x));
}

// ---- reductions --------------------------------------------------------------

template <class T>
using RowReduce = T (*)(const T*, size_t);

template <class T>
Tensor reduce_dim(const Tensor& x, int64_t dim, bool keepdim, const char* op, RowReduce<T> reduce,
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
  Tensor out = Tensor::empty(out_shape, dtype_of<T>::value);
  const int64_t rows = out.numel();
  if (rows == 0) return finish(out, x.dtype());
  const RowsAlong in = rows_along<T>(x, d);
  const T* src = in.data.data<T>();
  T* dst = out.data<T>();
  detail::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) dst[r] = reduce(src + r * n, static_cast<size_t>(n));
  });
  return finish(out, x.dtype());
}

// Partial results of `reduce` over fixed blocks of x's elements. Blocks do
// not depend on the thread count, so neither does the combined result.
template <class T>
std::vector<T> block_partials(const Tensor& x, RowReduce<T> reduce) {
  const Tensor in = contiguous_as<T>(x);
  const int64_t numel = in.numel();
  const int64_t blocks = (numel + kGrainElements - 1) / kGrainElements;
  std::vector<T> partials(static_cast<size_t>(blocks));
  const T* src = in.data<T>();
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
  double total = 0.0;  // the per-block sums are combined in double
  if (any_f64({&x})) {
    for (double p : block_partials<double>(x, ref::Sum<double>)) total += p;
  } else {
    for (float p : block_partials<float>(x, kernels::Sum)) total += p;
  }
  return total;
}

Tensor scalar_of(double value, DType dtype) { return Tensor::full({}, value, dtype); }

}  // namespace

// ---- public ops --------------------------------------------------------------

Tensor add(const Tensor& a, const Tensor& b) {
  if (any_f64({&a, &b}))
    return broadcast_binary<double>(a, b, "add", ref::Add<double>, ref::AddScalar<double>,
                                    ref::AddScalar<double>);
  return broadcast_binary<float>(a, b, "add", kernels::Add, kernels::AddScalar,
                                 kernels::AddScalar);
}

Tensor sub(const Tensor& a, const Tensor& b) {
  // run - b is run + (-b): negation is exact, so this is the rounded difference.
  const auto minus_b = [](const auto* x, auto value, auto* out, size_t n) {
    if constexpr (std::is_same_v<decltype(value), double>)
      ref::AddScalar<double>(x, -value, out, n);
    else
      kernels::AddScalar(x, -value, out, n);
  };
  if (any_f64({&a, &b}))
    return broadcast_binary<double>(a, b, "sub", ref::Sub<double>, minus_b,
                                    ref::ScalarMinus<double>);
  return broadcast_binary<float>(a, b, "sub", kernels::Sub, minus_b, kernels::ScalarMinus);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  if (any_f64({&a, &b}))
    return broadcast_binary<double>(a, b, "mul", ref::Mul<double>, ref::Scale<double>,
                                    ref::Scale<double>);
  return broadcast_binary<float>(a, b, "mul", kernels::Mul, kernels::Scale, kernels::Scale);
}

Tensor div(const Tensor& a, const Tensor& b) {
  if (any_f64({&a, &b}))
    return broadcast_binary<double>(a, b, "div", ref::Div<double>, ref::DivScalar<double>,
                                    ref::ScalarOver<double>);
  return broadcast_binary<float>(a, b, "div", kernels::Div, kernels::DivScalar,
                                 kernels::ScalarOver);
}

Tensor scale(const Tensor& x, double factor) {
  if (any_f64({&x}))
    return map_unary<double>(x, "scale", [factor](const double* in, double* out, size_t n) {
      ref::Scale<double>(in, factor, out, n);
    });
  const float f = static_cast<float>(factor);
  return map_unary<float>(
      x, "scale", [f](const float* in, float* out, size_t n) { kernels::Scale(in, f, out, n); });
}

// An element-wise map: the SIMD kernel, or its reference twin in f64.
#define QKV_UNARY(name, kernel)                                                      \
  (any_f64({&x}) ? map_unary<double>(x, name, kernels::ref::kernel<double>)          \
                 : map_unary<float>(x, name, kernels::kernel))

Tensor exp(const Tensor& x) { return QKV_UNARY("exp", Exp); }

Tensor relu(const Tensor& x) { return QKV_UNARY("relu", Relu); }

Tensor silu(const Tensor& x) { return QKV_UNARY("silu", Silu); }

Tensor gelu(const Tensor& x, GeluApproximation approximation) {
  QKV_CHECK(approximation == GeluApproximation::none || approximation == GeluApproximation::tanh,
            "gelu: approximation ", static_cast<int>(approximation), " is not none or tanh");
  return approximation == GeluApproximation::tanh ? QKV_UNARY("gelu", GeluTanh)
                                                  : QKV_UNARY("gelu", GeluErf);
}

#undef QKV_UNARY

Tensor softmax(const Tensor& x, int64_t dim) {
  if (any_f64({&x})) return map_rows<double>(x, dim, "softmax", ref::Softmax<double>);
  return map_rows<float>(x, dim, "softmax", kernels::Softmax);
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  if (any_f64({&x})) return map_rows<double>(x, dim, "log_softmax", ref::LogSoftmax<double>);
  return map_rows<float>(x, dim, "log_softmax", kernels::LogSoftmax);
}

namespace {

template <class T>
Tensor layer_norm_as(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t n = x.size(-1);
  const Tensor w = norm_parameter<T>(weight, n, "layer_norm", "weight");
  const Tensor b = norm_parameter<T>(bias, n, "layer_norm", "bias");
  const T* pw = w.defined() ? w.data<T>() : nullptr;
  const T* pb = b.defined() ? b.data<T>() : nullptr;
  const T e = static_cast<T>(eps);
  return map_rows<T>(x, -1, "layer_norm", [=](const T* in, T* out, size_t len) {
    if constexpr (std::is_same_v<T, double>)
      ref::LayerNorm<double>(in, pw, pb, e, out, len);
    else
      kernels::LayerNorm(in, pw, pb, e, out, len);
  });
}

template <class T>
Tensor rms_norm_as(const Tensor& x, const Tensor& weight, double eps) {
  const Tensor w = norm_parameter<T>(weight, x.size(-1), "rms_norm", "weight");
  const T* pw = w.defined() ? w.data<T>() : nullptr;
  const T e = static_cast<T>(eps);
  return map_rows<T>(x, -1, "rms_norm", [=](const T* in, T* out, size_t len) {
    if constexpr (std::is_same_v<T, double>)
      ref::RmsNorm<double>(in, pw, e, out, len);
    else
      kernels::RmsNorm(in, pw, e, out, len);
  });
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_norm_input(x, eps, "layer_norm");
  if (any_f64({&x, &weight, &bias})) return layer_norm_as<double>(x, weight, bias, eps);
  return layer_norm_as<float>(x, weight, bias, eps);
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_norm_input(x, eps, "rms_norm");
  if (any_f64({&x, &weight})) return rms_norm_as<double>(x, weight, eps);
  return rms_norm_as<float>(x, weight, eps);
}

Tensor sum(const Tensor& x, int64_t dim, bool keepdim) {
  if (any_f64({&x})) return reduce_dim<double>(x, dim, keepdim, "sum", ref::Sum<double>, true);
  return reduce_dim<float>(x, dim, keepdim, "sum", kernels::Sum, /*empty_allowed=*/true);
}

Tensor mean(const Tensor& x, int64_t dim, bool keepdim) {
  if (any_f64({&x})) return reduce_dim<double>(x, dim, keepdim, "mean", ref::Mean<double>, true);
  return reduce_dim<float>(x, dim, keepdim, "mean", kernels::Mean, /*empty_allowed=*/true);
}

Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  if (any_f64({&x})) return reduce_dim<double>(x, dim, keepdim, "max", ref::Max<double>, false);
  return reduce_dim<float>(x, dim, keepdim, "max", kernels::Max, /*empty_allowed=*/false);
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
  double result = -std::numeric_limits<double>::infinity();
  const std::vector<double> partials =
      any_f64({&x}) ? block_partials<double>(x, ref::Max<double>) : [&] {
        const std::vector<float> p = block_partials<float>(x, kernels::Max);
        return std::vector<double>(p.begin(), p.end());
      }();
  for (double p : partials) {
    if (std::isnan(p)) return scalar_of(p, x.dtype());
    result = std::max(result, p);
  }
  return scalar_of(result, x.dtype());
}

}  // namespace qkv
