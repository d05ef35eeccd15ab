// The backward ops of qkv/ops.h: validate once, bring the operands to
// contiguous f32, run the kernels of kernels/cpu/backward.h over runs or rows
// spread on the thread team. Every result is a function of the inputs alone:
// work is split into pieces fixed by the shapes, never by the thread count,
// and partial sums are combined in a fixed order.
#include "kernels/cpu/backward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/parallel.h"
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

// A contiguous f32 buffer for a result made from `in` (contiguous f32 copy of
// the caller's `from`): `in` itself when it is a private copy, else new.
Tensor scratch_for(const Tensor& in, const Tensor& from) {
  return in.storage() == from.storage() ? Tensor::empty(in.shape(), DType::f32) : in;
}

// out = kernel(grad, x) element by element.
template <class Kernel>
Tensor map_grad(const Tensor& grad, const Tensor& x, const char* op, const char* arg,
                Kernel kernel) {
  check_input(grad, op, "grad");
  check_input(x, op, arg);
  check_same_shape(grad, x, op, arg);
  const Tensor g = contiguous_f32(grad);
  const Tensor in = contiguous_f32(x);
  Tensor out = scratch_for(g, grad);
  const float* pg = g.data<float>();
  const float* px = in.data<float>();
  float* po = out.data<float>();
  detail::parallel_for(0, g.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    kernel(pg + begin, px + begin, po + begin, static_cast<size_t>(end - begin));
  });
  return out;
}

// out = kernel(grad row, y row) over every row along `dim`.
template <class Kernel>
Tensor map_grad_rows(const Tensor& grad, const Tensor& y, int64_t dim, const char* op,
                     Kernel kernel) {
  check_input(grad, op, "grad");
  check_input(y, op, "y");
  check_same_shape(grad, y, op, "y");
  if (y.dim() == 0) {  // one row of one element, as the forward
    wrap_dim(dim, 1, op);
    return map_grad_rows(grad.reshape({1}), y.reshape({1}), 0, op, kernel).reshape({});
  }
  const int64_t d = wrap_dim(dim, y.dim(), op);
  if (y.numel() == 0) return Tensor::empty(y.shape(), DType::f32);
  const RowsAlong g = rows_along(grad, d);
  const RowsAlong p = rows_along(y, d);
  Tensor out = scratch_for(g.data, grad);
  const int64_t n = g.n;
  const float* pg = g.data.data<float>();
  const float* py = p.data.data<float>();
  float* po = out.data<float>();
  detail::parallel_for(0, g.outer * g.inner, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      kernel(pg + r * n, py + r * n, po + r * n, static_cast<size_t>(n));
  });
  if (g.inner == 1) return out.view(y.shape());
  Tensor back = Tensor::empty(y.shape(), DType::f32);
  transpose_batched(po, back.data<float>(), g.outer, g.inner, n);
  return back;
}

// A norm over the last dim: row(grad, x, dx, dweight, dbias, n) per row,
// where dweight / dbias point into per-block accumulators (or are null). Rows
// go in blocks of a size fixed by n; the block partials are summed in double
// by sum_to_shape, in block order.
template <class Row>
NormGradients norm_backward(const Tensor& grad, const Tensor& x, bool want_weight, bool want_bias,
                            const char* op, Row row) {
  check_input(grad, op, "grad");
  check_same_shape(grad, x, op, "x");
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  const Tensor g = contiguous_f32(grad);
  const Tensor in = contiguous_f32(x);
  NormGradients result;
  result.input = scratch_for(g, grad);
  const int64_t params = int64_t{want_weight} + int64_t{want_bias};
  const int64_t block_rows = row_grain(n);
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
  Tensor partial = Tensor::zeros({std::max<int64_t>(blocks, 1), params, n}, DType::f32);
  const float* pg = g.data<float>();
  const float* px = in.data<float>();
  float* pdx = result.input.data<float>();
  float* pp = partial.data<float>();
  detail::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* dw = want_weight ? pp + b * params * n : nullptr;
      float* db = want_bias ? pp + (b * params + params - 1) * n : nullptr;
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
  return map_grad(grad, x, "relu_backward", "x", kernels::ReluBackward);
}

Tensor silu_backward(const Tensor& grad, const Tensor& x) {
  return map_grad(grad, x, "silu_backward", "x", kernels::SiluBackward);
}

Tensor gelu_backward(const Tensor& grad, const Tensor& x, GeluApproximation approximation) {
  QKV_CHECK(approximation == GeluApproximation::none || approximation == GeluApproximation::tanh,
            "gelu_backward: approximation ", static_cast<int>(approximation),
            " is not none or tanh");
  return map_grad(grad, x, "gelu_backward", "x",
                  approximation == GeluApproximation::tanh ? kernels::GeluTanhBackward
                                                           : kernels::GeluErfBackward);
}

Tensor softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim) {
  return map_grad_rows(grad, y, dim, "softmax_backward", kernels::SoftmaxBackward);
}

Tensor log_softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim) {
  return map_grad_rows(grad, y, dim, "log_softmax_backward", kernels::LogSoftmaxBackward);
}

NormGradients layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                  const Tensor& bias, double eps) {
  constexpr const char* op = "layer_norm_backward";
  check_norm_input(x, eps, op);
  const Tensor w = norm_parameter(weight, x.size(-1), op, "weight");
  norm_parameter(bias, x.size(-1), op, "bias");
  const float* pw = w.defined() ? w.data<float>() : nullptr;
  return norm_backward(
      grad, x, weight.defined(), bias.defined(), op,
      [=](const float* g, const float* in, float* dx, float* dw, float* db, size_t n) {
        kernels::LayerNormBackward(g, in, pw, eps, dx, dw, db, n);
      });
}

NormGradients rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                double eps) {
  constexpr const char* op = "rms_norm_backward";
  check_norm_input(x, eps, op);
  const Tensor w = norm_parameter(weight, x.size(-1), op, "weight");
  const float* pw = w.defined() ? w.data<float>() : nullptr;
  return norm_backward(grad, x, weight.defined(), false, op,
                       [=](const float* g, const float* in, float* dx, float* dw, float*,
                           size_t n) { kernels::RmsNormBackward(g, in, pw, eps, dx, dw, n); });
}

Tensor sum_to_shape(const Tensor& grad, const Shape& shape) {
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
  Tensor out = Tensor::zeros(shape, DType::f32);
  if (out.numel() == 0 || grad.numel() == 0) return out;
  const Tensor in = contiguous_f32(grad);

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

  const float* src = in.data<float>();
  float* dst = out.data<float>();
  if (inner_summed) {
    // Each output element sums runs of `run` contiguous floats.
    const int64_t run = summed.back().size;
    summed.pop_back();
    const int64_t runs = count_of(summed), outputs = count_of(kept);
    detail::parallel_for(0, outputs, row_grain(runs * run), [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const float* base = src + offset_of(o, kept);
        double acc = 0.0;
        for (int64_t r = 0; r < runs; ++r) {
          const float* p = base + offset_of(r, summed);
          for (int64_t j = 0; j < run; ++j) acc += p[j];
        }
        dst[o] = static_cast<float>(acc);
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
                           const float* base = src + offset_of(o, kept) + c0;
                           std::fill(acc, acc + len, 0.0);
                           for (int64_t r = 0; r < runs; ++r) {
                             const float* p = base + offset_of(r, summed);
                             for (int64_t j = 0; j < len; ++j) acc[j] += p[j];
                           }
                           float* q = dst + o * width + c0;
                           for (int64_t j = 0; j < len; ++j) q[j] = static_cast<float>(acc[j]);
                         }
                       });
  return out;
}

DropoutResult dropout(const Tensor& x, double p, Generator& generator) {
  check_input(x, "dropout", "x");
  QKV_CHECK(p >= 0 && p < 1, "dropout: p is ", p, "; expected a probability in [0, 1)");
  if (p == 0) return {x, Tensor()};
  const uint64_t seed = generator.next_u64();
  // Keep iff hash24 >= p 2^24, i.e. >= ceil(p 2^24): probability 1 - p up to 2^-24.
  const auto threshold = static_cast<uint32_t>(std::ceil(p * 0x1p24));
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  const Tensor in = contiguous_f32(x);
  Tensor out = scratch_for(in, x);
  Tensor mask = Tensor::empty(x.shape(), DType::boolean);
  const float* px = in.data<float>();
  float* po = out.data<float>();
  bool* pm = mask.data<bool>();
  detail::parallel_for(0, in.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    kernels::Dropout(px + begin, seed, static_cast<uint64_t>(begin), threshold, scale, po + begin,
                     pm + begin, static_cast<size_t>(end - begin));
  });
  return {out.to(x.dtype()).contiguous(), mask};
}

Tensor dropout_backward(const Tensor& grad, const Tensor& mask, double p) {
  constexpr const char* op = "dropout_backward";
  check_input(grad, op, "grad");
  QKV_CHECK(p >= 0 && p < 1, op, ": p is ", p, "; expected a probability in [0, 1)");
  if (p == 0 && !mask.defined()) {
    const Tensor g = contiguous_f32(grad);
    return g.storage() == grad.storage() ? g.clone() : g;
  }
  QKV_CHECK(mask.defined(), op, ": argument mask is undefined but p is ", p,
            "; only p == 0 has no mask");
  QKV_CHECK(mask.dtype() == DType::boolean, op, ": argument mask has dtype ",
            dtype_name(mask.dtype()), "; expected bool");
  check_same_shape(grad, mask, op, "mask");
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
