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
#include "ops/common.h"

namespace qkv {
namespace {

using namespace ops_detail;

// Where to write an op's f32 result for input `in` (contiguous f32) made
// from the caller's `x`: in place when `in` is a private copy, else new.
Tensor output_for(const Tensor& in, const Tensor& x) {
  return in.storage() == x.storage() ? Tensor::empty(in.shape(), DType::f32) : in;
}

// The f32 result in the caller's dtype, contiguous.
Tensor finish(const Tensor& result, DType dtype) { return result.to(dtype).contiguous(); }

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

// `same` runs out = f(a, b) over equal-length runs; `b_scalar` runs
// out = f(run of a, b) for b broadcast along the run and `a_scalar` runs
// out = f(a, run of b) for a broadcast along it; both take (run, scalar, out,
// n). For the ops that commute (add, mul) the last two are the same kernel.
template <class Same, class BScalar, class AScalar>
Tensor broadcast_binary(const Tensor& a, const Tensor& b, const char* op, Same same,
                        BScalar b_scalar, AScalar a_scalar) {
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
  return broadcast_binary(a, b, "add", kernels::Add, kernels::AddScalar, kernels::AddScalar);
}

Tensor sub(const Tensor& a, const Tensor& b) {
  // run - b is run + (-b): negation is exact, so this is the rounded difference.
  const auto minus_b = [](const float* x, float value, float* out, size_t n) {
    kernels::AddScalar(x, -value, out, n);
  };
  return broadcast_binary(a, b, "sub", kernels::Sub, minus_b, kernels::ScalarMinus);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return broadcast_binary(a, b, "mul", kernels::Mul, kernels::Scale, kernels::Scale);
}

Tensor div(const Tensor& a, const Tensor& b) {
  return broadcast_binary(a, b, "div", kernels::Div, kernels::DivScalar, kernels::ScalarOver);
}

Tensor scale(const Tensor& x, double factor) {
  const float f = static_cast<float>(factor);
  return map_unary(x, "scale",
                   [f](const float* in, float* out, size_t n) { kernels::Scale(in, f, out, n); });
}

Tensor exp(const Tensor& x) { return map_unary(x, "exp", kernels::Exp); }

Tensor relu(const Tensor& x) { return map_unary(x, "relu", kernels::Relu); }

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
