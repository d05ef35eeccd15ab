// The backward ops of qkv/ops.h: validate once, bring the operands to
// contiguous f32, run the kernels of kernels/cpu/backward.h over runs or rows
// spread on the thread team (with an f64 operand: contiguous double and the
// reference kernels of kernels/ref/backward_ref.h). Every result is a function
// of the inputs alone: work is split into pieces fixed by the shapes, never by
// the thread count, and partial sums are combined in a fixed order.
#include "kernels/cpu/backward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/parallel.h"
#include "kernels/ref/backward_ref.h"
#include "ops/common.h"
#include "qkv/ops.h"

namespace qkv {
namespace {

using namespace ops_detail;

void check_same_shape(const Tensor& grad, const Tensor& other, const char* op, const char* arg) {
  QKV_CHECK(grad.shape() == other.shape(), op, ": argument grad has shape ",
            shape_string(grad.shape()), " but ", arg, " has shape ", shape_string(other.shape()),
            "; expected equal shapes");
}

namespace ref = kernels::ref;

// A contiguous buffer for a result made from `in` (contiguous f32 or f64
// copy of the caller's `from`): `in` itself when it is a private copy, else new.
Tensor scratch_for(const Tensor& in, const Tensor& from) {
  return in.storage() == from.storage() ? Tensor::empty(in.shape(), in.dtype()) : in;
}

// Gradients are f32 (the SIMD kernels), or f64 (the reference kernels) when
// an operand is f64: T below is float or double.

// out = kernel(grad, x) element by element.
template <class T, class Kernel>
Tensor map_grad(const Tensor& grad, const Tensor& x, const char* op, const char* arg,
                Kernel kernel) {
  check_input(grad, op, "grad");
  check_input(x, op, arg);
  check_same_shape(grad, x, op, arg);
  const Tensor g = contiguous_as<T>(grad);
  const Tensor in = contiguous_as<T>(x);
  Tensor out = scratch_for(g, grad);
  const T* pg = g.data<T>();
  const T* px = in.data<T>();
  T* po = out.data<T>();
  detail::parallel_for(0, g.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    kernel(pg + begin, px + begin, po + begin, static_cast<size_t>(end - begin));
  });
  return out;
}

// out = kernel(grad row, y row) over every row along `dim`.
template <class T, class Kernel>
Tensor map_grad_rows(const Tensor& grad, const Tensor& y, int64_t dim, const char* op,
                     Kernel kernel) {
  check_input(grad, op, "grad");
  check_input(y, op, "y");
  check_same_shape(grad, y, op, "y");
  if (y.dim() == 0) {  // one row of one element, as the forward
    wrap_dim(dim, 1, op);
    return map_grad_rows<T>(grad.reshape({1}), y.reshape({1}), 0, op, kernel).reshape({});
  }
  const int64_t d = wrap_dim(dim, y.dim(), op);
  if (y.numel() == 0) return Tensor::empty(y.shape(), dtype_of<T>::value);
  const RowsAlong g = rows_along<T>(grad, d);
  const RowsAlong p = rows_along<T>(y, d);
  Tensor out = scratch_for(g.data, grad);
  const int64_t n = g.n;
  const T* pg = g.data.data<T>();
  const T* py = p.data.data<T>();
  T* po = out.data<T>();
  detail::parallel_for(0, g.outer * g.inner, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      kernel(pg + r * n, py + r * n, po + r * n, static_cast<size_t>(n));
  });
  if (g.inner == 1) return out.view(y.shape());
  Tensor back = Tensor::empty(y.shape(), dtype_of<T>::value);
  transpose_batched(po, back.data<T>(), g.outer, g.inner, n);
  return back;
}

// A norm over the last dim: row(grad, x, dx, dweight, dbias, n) per row,
// where dweight / dbias point into per-block accumulators (or are null). Rows
// go in blocks of a size fixed by n; the block partials are summed in double
// by sum_to_shape, in block order.
template <class T, class Row>
NormGradients norm_backward(const Tensor& grad, const Tensor& x, bool want_weight, bool want_bias,
                            const char* op, Row row) {
  check_input(grad, op, "grad");
  check_same_shape(grad, x, op, "x");
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  const Tensor g = contiguous_as<T>(grad);
  const Tensor in = contiguous_as<T>(x);
  NormGradients result;
  result.input = scratch_for(g, grad);
  const int64_t params = int64_t{want_weight} + int64_t{want_bias};
  const int64_t block_rows = row_grain(n);
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
  Tensor partial = Tensor::zeros({std::max<int64_t>(blocks, 1), params, n}, dtype_of<T>::value);
  const T* pg = g.data<T>();
  const T* px = in.data<T>();
  T* pdx = result.input.data<T>();
  T* pp = partial.data<T>();
  detail::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* dw = want_weight ? pp + b * params * n : nullptr;
      T* db = want_bias ? pp + (b * params + params - 1) * n : nullptr;
      for (int64_t r = b * block_rows; r < std::min(rows, (b + 1) * block_rows); ++r)
        row(pg + r * n, px + r * n, pdx + r * n, dw, db, static_cast<size_t>(n));
    }
  });
  if (params > 0) {
    const Tensor sums = sum_to_shape(partial, {params, n});
    if (want_weight) result.weight = sums.select(0, 0).contiguous();
    if (want_bias) result.bias = sums.select(0, params - 1).contiguous();
  }
  return result;
}

// ---- sum_to_shape ------------------------------------------------------------

// A run of merged dims of grad, all kept or all summed over.
struct DimGroup {
  int64_t size, stride;
};

// grad's offset of item `index` of the dims in `groups` (row-major).
int64_t offset_of(int64_t index, const std::vector<DimGroup>& groups) {
  int64_t offset = 0;
  for (size_t k = groups.size(); k-- > 0;) {
    offset += index % groups[k].size * groups[k].stride;
    index /= groups[k].size;
  }
  return offset;
}

int64_t count_of(const std::vector<DimGroup>& groups) {
  int64_t count = 1;
  for (const DimGroup& g : groups) count *= g.size;
  return count;
}

// Columns summed at once when the innermost dim is kept (a [chunk] double
// accumulator on the stack).
constexpr int64_t kColumnChunk = 512;

}  // namespace

// ---- public ops --------------------------------------------------------------

Tensor relu_backward(const Tensor& grad, const Tensor& x) {
  if (any_f64({&grad, &x}))
    return map_grad<double>(grad, x, "relu_backward", "x", ref::ReluBackward<double>);
  return map_grad<float>(grad, x, "relu_backward", "x", kernels::ReluBackward);
}

Tensor silu_backward(const Tensor& grad, const Tensor& x) {
  if (any_f64({&grad, &x}))
    return map_grad<double>(grad, x, "silu_backward", "x", ref::SiluBackward<double>);
  return map_grad<float>(grad, x, "silu_backward", "x", kernels::SiluBackward);
}

Tensor gelu_backward(const Tensor& grad, const Tensor& x, GeluApproximation approximation) {
  QKV_CHECK(approximation == GeluApproximation::none || approximation == GeluApproximation::tanh,
            "gelu_backward: approximation ", static_cast<int>(approximation),
            " is not none or tanh");
  const bool tanh = approximation == GeluApproximation::tanh;
  if (any_f64({&grad, &x}))
    return map_grad<double>(
        grad, x, "gelu_backward", "x",
        tanh ? ref::GeluTanhBackward<double> : ref::GeluErfBackward<double>);
  return map_grad<float>(grad, x, "gelu_backward", "x",
                         tanh ? kernels::GeluTanhBackward : kernels::GeluErfBackward);
}

Tensor softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim) {
  if (any_f64({&grad, &y}))
    return map_grad_rows<double>(grad, y, dim, "softmax_backward", ref::SoftmaxBackward<double>);
  return map_grad_rows<float>(grad, y, dim, "softmax_backward", kernels::SoftmaxBackward);
}

Tensor log_softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim) {
  if (any_f64({&grad, &y}))
    return map_grad_rows<double>(grad, y, dim, "log_softmax_backward",
                                 ref::LogSoftmaxBackward<double>);
  return map_grad_rows<float>(grad, y, dim, "log_softmax_backward", kernels::LogSoftmaxBackward);
}

NormGradients layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                  const Tensor& bias, double eps) {
  constexpr const char* op = "layer_norm_backward";
  check_norm_input(x, eps, op);
  norm_parameter(bias, x.size(-1), op, "bias");
  auto run = [&]<class T>(auto kernel) {
    const Tensor w = norm_parameter<T>(weight, x.size(-1), op, "weight");
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    return norm_backward<T>(grad, x, weight.defined(), bias.defined(), op,
                            [=](const T* g, const T* in, T* dx, T* dw, T* db, size_t n) {
                              kernel(g, in, pw, eps, dx, dw, db, n);
                            });
  };
  if (any_f64({&grad, &x, &weight, &bias}))
    return run.operator()<double>(ref::LayerNormBackward<double>);
  return run.operator()<float>(kernels::LayerNormBackward);
}

NormGradients rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                double eps) {
  constexpr const char* op = "rms_norm_backward";
  check_norm_input(x, eps, op);
  auto run = [&]<class T>(auto kernel) {
    const Tensor w = norm_parameter<T>(weight, x.size(-1), op, "weight");
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    return norm_backward<T>(grad, x, weight.defined(), false, op,
                            [=](const T* g, const T* in, T* dx, T* dw, T*, size_t n) {
                              kernel(g, in, pw, eps, dx, dw, n);
                            });
  };
  if (any_f64({&grad, &x, &weight})) return run.operator()<double>(ref::RmsNormBackward<double>);
  return run.operator()<float>(kernels::RmsNormBackward);
}

namespace {

template <class T>
Tensor sum_to_shape_as(const Tensor& grad, const Shape& shape);

}  // namespace

Tensor sum_to_shape(const Tensor& grad, const Shape& shape) {
  if (any_f64({&grad})) return sum_to_shape_as<double>(grad, shape);
  return sum_to_shape_as<float>(grad, shape);
}

namespace {

template <class T>
Tensor sum_to_shape_as(const Tensor& grad, const Shape& shape) {
  constexpr const char* op = "sum_to_shape";
  check_input(grad, op, "grad");
  const int64_t ndim = grad.dim();
  const int64_t lead = ndim - static_cast<int64_t>(shape.size());
  bool fits = lead >= 0;
  for (size_t i = 0; fits && i < shape.size(); ++i) {
    const int64_t want = shape[i], have = grad.size(lead + static_cast<int64_t>(i));
    fits = want == have || (want == 1 && have >= 0);
  }
  QKV_CHECK(fits, op, ": shape ", shape_string(shape), " does not broadcast to grad's shape ",
            shape_string(grad.shape()),
            " (each dim must equal grad's, aligned from the right, or be 1)");
  Tensor out = Tensor::zeros(shape, dtype_of<T>::value);
  if (out.numel() == 0 || grad.numel() == 0) return out;
  const Tensor in = contiguous_as<T>(grad);

  // grad's dims (size-1 ones dropped) merged into alternating kept / summed groups.
  std::vector<DimGroup> kept, summed;
  bool last_summed = false, any = false, inner_summed = false;
  int64_t stride = 1;
  for (int64_t i = ndim - 1; i >= 0; --i) {
    const int64_t size = grad.size(i);
    if (size != 1) {
      const bool is_summed = i < lead || shape[static_cast<size_t>(i - lead)] == 1;
      std::vector<DimGroup>& groups = is_summed ? summed : kept;
      if (!any) inner_summed = is_summed;  // the innermost non-1 dim
      if (any && is_summed == last_summed) {
        groups.front().size *= size;
      } else {
        groups.insert(groups.begin(), DimGroup{size, stride});
      }
      last_summed = is_summed;
      any = true;
    }
    stride *= size;
  }
  if (summed.empty())
    return in.storage() == grad.storage() ? in.clone().view(shape) : in.view(shape);

  const T* src = in.data<T>();
  T* dst = out.data<T>();
  if (inner_summed) {
    // Each output element sums runs of `run` contiguous floats.
    const int64_t run = summed.back().size;
    summed.pop_back();
    const int64_t runs = count_of(summed), outputs = count_of(kept);
    detail::parallel_for(0, outputs, row_grain(runs * run), [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const T* base = src + offset_of(o, kept);
        double acc = 0.0;
        for (int64_t r = 0; r < runs; ++r) {
          const T* p = base + offset_of(r, summed);
          for (int64_t j = 0; j < run; ++j) acc += p[j];
        }
        dst[o] = static_cast<T>(acc);
      }
    });
    return out;
  }
  // The innermost dim is kept: column chunks of each output row add up the
  // matching runs of every summed position, in order.
  const int64_t width = kept.back().size;
  kept.pop_back();
  const int64_t chunks = (width + kColumnChunk - 1) / kColumnChunk;
  const int64_t runs = count_of(summed), outputs = count_of(kept);
  detail::parallel_for(0, outputs * chunks, row_grain(runs * std::min(width, kColumnChunk)),
                       [&](int64_t begin, int64_t end) {
                         double acc[kColumnChunk];
                         for (int64_t item = begin; item < end; ++item) {
                           const int64_t o = item / chunks, c0 = item % chunks * kColumnChunk;
                           const int64_t len = std::min(kColumnChunk, width - c0);
                           const T* base = src + offset_of(o, kept) + c0;
                           std::fill(acc, acc + len, 0.0);
                           for (int64_t r = 0; r < runs; ++r) {
                             const T* p = base + offset_of(r, summed);
                             for (int64_t j = 0; j < len; ++j) acc[j] += p[j];
                           }
                           T* q = dst + o * width + c0;
                           for (int64_t j = 0; j < len; ++j) q[j] = static_cast<T>(acc[j]);
                         }
                       });
  return out;
}

}  // namespace

DropoutResult dropout(const Tensor& x, double p, Generator& generator) {
  check_input(x, "dropout", "x");
  QKV_CHECK(p >= 0 && p < 1, "dropout: p is ", p, "; expected a probability in [0, 1)");
  if (p == 0) return {x, Tensor()};
  const uint64_t seed = generator.next_u64();
  // Keep iff hash24 >= p 2^24, i.e. >= ceil(p 2^24): probability 1 - p up to 2^-24.
  const auto threshold = static_cast<uint32_t>(std::ceil(p * 0x1p24));
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  const bool f64 = any_f64({&x});
  // f64 takes the mask of the f32 kernel run on zeros (the mask depends on
  // the seed and position only), then scales in double.
  const Tensor in = f64 ? Tensor::zeros(x.shape()) : contiguous_f32(x);
  Tensor out = f64 ? in : scratch_for(in, x);
  Tensor mask = Tensor::empty(x.shape(), DType::boolean);
  const float* px = in.data<float>();
  float* po = out.data<float>();
  bool* pm = mask.data<bool>();
  detail::parallel_for(0, in.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    kernels::Dropout(px + begin, seed, static_cast<uint64_t>(begin), threshold, scale, po + begin,
                     pm + begin, static_cast<size_t>(end - begin));
  });
  if (f64) return {dropout_backward(x, mask, p), mask};
  return {out.to(x.dtype()).contiguous(), mask};
}

Tensor dropout_backward(const Tensor& grad, const Tensor& mask, double p) {
  constexpr const char* op = "dropout_backward";
  check_input(grad, op, "grad");
  QKV_CHECK(p >= 0 && p < 1, op, ": p is ", p, "; expected a probability in [0, 1)");
  const bool f64 = any_f64({&grad});
  if (p == 0 && !mask.defined()) {
    const Tensor g = f64 ? contiguous_as<double>(grad) : contiguous_f32(grad);
    return g.storage() == grad.storage() ? g.clone() : g;
  }
  QKV_CHECK(mask.defined(), op, ": argument mask is undefined but p is ", p,
            "; only p == 0 has no mask");
  QKV_CHECK(mask.dtype() == DType::boolean, op, ": argument mask has dtype ",
            dtype_name(mask.dtype()), "; expected bool");
  check_same_shape(grad, mask, op, "mask");
  if (f64) {  // x * mask / (1 - p) in double
    const double keep_scale = 1.0 / (1.0 - p);
    const Tensor g = contiguous_as<double>(grad);
    const Tensor m = mask.contiguous();
    Tensor out = scratch_for(g, grad);
    const double* pg = g.data<double>();
    const bool* pm = m.data<bool>();
    double* po = out.data<double>();
    for (int64_t i = 0; i < g.numel(); ++i) po[i] = pm[i] ? pg[i] * keep_scale : 0.0;
    return out;
  }
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  const Tensor g = contiguous_f32(grad);
  const Tensor m = mask.contiguous();
  Tensor out = scratch_for(g, grad);
  const float* pg = g.data<float>();
  const bool* pm = m.data<bool>();
  float* po = out.data<float>();
  detail::parallel_for(0, g.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    kernels::DropoutBackward(pg + begin, pm + begin, scale, po + begin,
                             static_cast<size_t>(end - begin));
  });
  return out;
}

}  // namespace qkv
