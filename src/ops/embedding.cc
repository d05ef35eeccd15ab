// embedding and embedding_backward (qkv/ops.h): a row gather from a table
// and its gradient, the deterministic scatter-add of gradient rows into the
// rows their ids name.
//
// The backward never races and never depends on the thread count: ids are
// bucketed by row (a counting sort, stable, so each bucket keeps the order in
// which its positions occur), then every output element is the sum of its
// bucket's gradient rows in that order, whichever thread computes it. The
// work is split over (row, column block) items so that a small table with
// many ids (token types: 2 rows) still spreads over the thread team.
#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/elementwise.h"
#include "qkv/ops.h"

namespace qkv {
namespace {

// Floats moved per parallel chunk: below this a fork costs more than the copy.
constexpr int64_t kGrainElements = int64_t{1} << 15;

int64_t grain_rows(int64_t row_length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1));
}

// "[i0, i1, ...]": the multi-index of flat position `flat` in `shape`.
std::string index_string(int64_t flat, const Shape& shape) {
  Shape index(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return shape_string(index);
}

// The ids as contiguous i64, each checked to lie in [0, n).
std::vector<int64_t> checked_ids(const Tensor& ids, int64_t n, const char* op) {
  QKV_CHECK(ids.defined(), op, ": argument ids is an undefined tensor");
  QKV_CHECK(ids.device().type == DeviceType::cpu, op, ": argument ids is on ",
            to_string(ids.device()), "; only cpu tensors are supported");
  QKV_CHECK(ids.dtype() == DType::i32 || ids.dtype() == DType::i64, op, ": argument ids has dtype ",
            dtype_name(ids.dtype()), "; expected i32 or i64");
  const Tensor c = ids.contiguous();
  std::vector<int64_t> out(static_cast<size_t>(c.numel()));
  if (c.dtype() == DType::i64) {
    std::copy_n(c.data<int64_t>(), out.size(), out.begin());
  } else {
    std::copy_n(c.data<int32_t>(), out.size(), out.begin());
  }
  for (size_t i = 0; i < out.size(); ++i)
    QKV_CHECK(out[i] >= 0 && out[i] < n, op, ": id ", out[i], " at position ",
              index_string(static_cast<int64_t>(i), ids.shape()), " of ids ",
              shape_string(ids.shape()), " is out of range for ", n, " embeddings [0, ", n, ")");
  return out;
}

// out[0, n) = row[0, n) as f32.
template <class T>
void row_to_f32(const T* row, float* out, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(out, row, static_cast<size_t>(n) * sizeof(float));
  } else if constexpr (std::is_same_v<T, bf16>) {
    for (int64_t c = 0; c < n; ++c) out[c] = bf16_bits_to_f32(row[c].bits);
  } else {
    for (int64_t c = 0; c < n; ++c) out[c] = f16_bits_to_f32(row[c].bits);
  }
}

// out[i, :] = weight[ids[i], :] for weight rows `row_stride` elements apart.
// weight: [N, D] (unit column stride), out: [n, D] contiguous f32.
template <class T>
void gather_rows(const T* weight, int64_t row_stride, const int64_t* ids, int64_t n, int64_t dim,
                 float* out) {
  detail::parallel_for(0, n, grain_rows(dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      row_to_f32(weight + ids[i] * row_stride, out + i * dim, dim);
  });
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const char* op = "embedding";
  QKV_CHECK(weight.defined(), op, ": argument weight is an undefined tensor");
  QKV_CHECK(weight.device().type == DeviceType::cpu, op, ": argument weight is on ",
            to_string(weight.device()), "; only cpu tensors are supported");
  QKV_CHECK(weight.dim() == 2, op, ": argument weight must be 2-D [num_embeddings, dim], got ",
            shape_string(weight.shape()));
  QKV_CHECK(is_floating(weight.dtype()), op, ": argument weight has dtype ",
            dtype_name(weight.dtype()), "; expected f32, f64, bf16 or f16");
  const int64_t rows = weight.size(0), dim = weight.size(1);
  const std::vector<int64_t> flat = checked_ids(ids, rows, op);

  Shape shape = ids.shape();
  shape.push_back(dim);
  const int64_t n = static_cast<int64_t>(flat.size());
  if (weight.dtype() == DType::f64) {  // the f64 path (gradcheck): rows copied as they are
    Tensor out = Tensor::empty(shape, DType::f64);
    const Tensor w = weight.contiguous();
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(w.data<double>() + flat[i] * dim, dim, out.data<double>() + i * dim);
    return out;
  }
  Tensor out = Tensor::empty(shape);
  if (n == 0 || dim == 0) return out;
  // Rows are read in place (a table of 50k x 4k is not copied for a few
  // ids); only a table whose columns are not adjacent is made contiguous.
  const Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  const int64_t stride = w.stride(0);
  float* dst = out.data<float>();
  switch (w.dtype()) {
    case DType::f32: gather_rows(w.data<float>(), stride, flat.data(), n, dim, dst); break;
    case DType::bf16: gather_rows(w.data<bf16>(), stride, flat.data(), n, dim, dst); break;
    default: gather_rows(w.data<f16>(), stride, flat.data(), n, dim, dst); break;
  }
  return out;
}

Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t num_embeddings,
                          int64_t padding_idx) {
  const char* op = "embedding_backward";
  QKV_CHECK(num_embeddings >= 0, op, ": num_embeddings must be >= 0, got ", num_embeddings);
  QKV_CHECK(padding_idx == -1 || (padding_idx >= 0 && padding_idx < num_embeddings), op,
            ": padding_idx ", padding_idx, " must be -1 (none) or in [0, ", num_embeddings, ")");
  QKV_CHECK(grad.defined(), op, ": argument grad is an undefined tensor");
  QKV_CHECK(grad.device().type == DeviceType::cpu, op, ": argument grad is on ",
            to_string(grad.device()), "; only cpu tensors are supported");
  QKV_CHECK(is_floating(grad.dtype()), op, ": argument grad has dtype ", dtype_name(grad.dtype()),
            "; expected f32, f64, bf16 or f16");
  QKV_CHECK(ids.defined(), op, ": argument ids is an undefined tensor");
  Shape want = ids.shape();
  QKV_CHECK(
      grad.dim() == ids.dim() + 1 && Shape(grad.shape().begin(), grad.shape().end() - 1) == want,
      op, ": grad ", shape_string(grad.shape()), " must be ids' shape ", shape_string(ids.shape()),
      " plus the embedding dim");
  const int64_t dim = grad.size(-1);
  const std::vector<int64_t> flat = checked_ids(ids, num_embeddings, op);
  const int64_t n = static_cast<int64_t>(flat.size());

  if (grad.dtype() == DType::f64) {  // the f64 path (gradcheck): in id order, in double
    Tensor out = Tensor::zeros({num_embeddings, dim}, DType::f64);
    const Tensor g = grad.contiguous();
    for (int64_t i = 0; i < n; ++i) {
      if (flat[i] == padding_idx) continue;
      double* row = out.data<double>() + flat[i] * dim;
      const double* from = g.data<double>() + i * dim;
      for (int64_t c = 0; c < dim; ++c) row[c] += from[c];
    }
    return out;
  }
  Tensor out = Tensor::zeros({num_embeddings, dim});
  if (n == 0 || dim == 0 || num_embeddings == 0) return out;
  const Tensor g = grad.to(DType::f32).contiguous();
  const float* src = g.data<float>();
  float* dst = out.data<float>();

  // Counting sort: positions of row r are order[start[r] .. start[r + 1]),
  // ascending (the order of the summation, fixed for every thread count).
  std::vector<int64_t> start(static_cast<size_t>(num_embeddings) + 1, 0);
  for (const int64_t id : flat) ++start[id + 1];
  for (int64_t r = 0; r < num_embeddings; ++r) start[r + 1] += start[r];
  std::vector<int64_t> order(static_cast<size_t>(n));
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[next[flat[i]]++] = i;
  }

  // Column blocks of at least 64 floats (whole cache lines), enough of them
  // that a table of a few rows still gives every thread work.
  const int64_t threads = num_threads();
  const int64_t max_blocks = std::max<int64_t>(1, dim / 64);
  const int64_t blocks = std::min(
      max_blocks, std::max<int64_t>(1, (4 * threads + num_embeddings - 1) / num_embeddings));
  const int64_t block_cols = (dim + blocks - 1) / blocks;
  // Grain: about kGrainElements additions per chunk (rows average n / N ids).
  const int64_t adds_per_item = std::max<int64_t>(1, block_cols * n / num_embeddings);
  detail::parallel_for(
      0, num_embeddings * blocks, std::max<int64_t>(1, kGrainElements / adds_per_item),
      [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t r = item / blocks, c0 = item % blocks * block_cols;
          const int64_t cols = std::min(block_cols, dim - c0);
          if (r == padding_idx || cols <= 0) continue;
          float* acc = dst + r * dim + c0;
          for (int64_t k = start[r]; k < start[r + 1]; ++k)
            kernels::Add(acc, src + order[k] * dim + c0, acc, static_cast<size_t>(cols));
        }
      });
  return out;
}

}  // namespace qkv
