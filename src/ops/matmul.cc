// qkv::matmul: validation, layout planning and a primitive cache over oneDNN.
//
// oneDNN reads strided operands directly, so transposes, slices and broadcast
// batch dims cost nothing here: they become strides and size-1 batch dims in
// the memory descriptors. Before building a primitive the layout is reduced:
// batch dims that move together are merged, and a weight-like `b` shared by
// every batch is folded into M, so a [B, T, K] x [K, N] product is one large
// GEMM instead of B small ones.
#include "qkv/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/onednn.h"
#include "qkv/threads.h"

namespace qkv {
namespace {

constexpr int64_t kMaxOneDnnDims = 12;

// One operand as oneDNN will read it: [batch..., rows, cols].
struct Layout {
  Shape dims;
  Shape strides;
};

struct Plan {
  dnnl::matmul primitive;
  dnnl::memory::desc a_desc, b_desc, c_desc;
  // The primitive's temporary buffer, which each call brings (user scratchpad
  // mode): with the library's shared one, a primitive run by two threads at
  // once, or by a thread other than its creator, corrupts results.
  dnnl::memory::desc scratchpad_desc;
  // Operands oneDNN cannot read in place (or only with its slow reference
  // kernel); they are made contiguous once per call.
  bool copy_a = false;
  bool copy_b = false;
};

// A batch dim of the product: the output's size and each operand's size
// (1 when broadcast, else the output's) and stride.
struct BatchDim {
  int64_t out, a_size, a_stride, b_size, b_stride;
};

bool operands_move_together(int64_t outer_size, int64_t outer_stride, int64_t inner_size,
                            int64_t inner_stride) {
  if (outer_size == 1 && inner_size == 1) return true;
  return outer_size != 1 && inner_size != 1 && outer_stride == inner_stride * inner_size;
}

// Merges adjacent batch dims that every operand walks with one stride; drops
// the dims the output has size 1 in.
std::vector<BatchDim> collapse_batch(const std::vector<BatchDim>& dims) {
  std::vector<BatchDim> merged;  // innermost first
  for (size_t i = dims.size(); i-- > 0;) {
    const BatchDim& d = dims[i];
    if (d.out == 1) continue;
    if (!merged.empty()) {
      BatchDim& in = merged.back();
      if (operands_move_together(d.a_size, d.a_stride, in.a_size, in.a_stride) &&
          operands_move_together(d.b_size, d.b_stride, in.b_size, in.b_stride)) {
        in.out *= d.out;
        in.a_size *= d.a_size;
        in.b_size *= d.b_size;
        continue;
      }
    }
    merged.push_back(d);
  }
  std::reverse(merged.begin(), merged.end());
  return merged;
}

// Gives size-1 dims the strides a plain row-major (or column-major) layout
// would have. Their strides never address memory, but oneDNN's fast kernels
// recognise a layout by comparing every stride.
void normalize_unit_strides(Layout& layout) {
  const size_t n = layout.dims.size();
  int64_t& s_rows = layout.strides[n - 2];
  int64_t& s_cols = layout.strides[n - 1];
  const int64_t rows = layout.dims[n - 2];
  const int64_t cols = layout.dims[n - 1];
  if (rows == 1 && cols == 1) {
    s_rows = 1;
    s_cols = 1;
  } else if (rows == 1) {
    s_rows = s_cols == 1 ? cols : 1;
  } else if (cols == 1) {
    s_cols = s_rows == 1 ? rows : 1;
  }
  int64_t extent = std::max(rows * s_rows, cols * s_cols);
  for (size_t d = n - 2; d-- > 0;) {
    if (layout.dims[d] == 1) layout.strides[d] = extent;
    extent = layout.strides[d] * layout.dims[d];
  }
}

struct OneDnnLayouts {
  Layout a, b, c;
};

// a: [batch_a..., M, K], b: [batch_b..., K, N] with the given strides; the
// output is contiguous [batch..., M, N].
OneDnnLayouts plan_layouts(const Shape& a_shape, const Shape& a_strides, const Shape& b_shape,
                           const Shape& b_strides, const Shape& batch) {
  const size_t nb = batch.size();
  const size_t a_nb = a_shape.size() - 2;
  const size_t b_nb = b_shape.size() - 2;
  std::vector<BatchDim> dims(nb);
  for (size_t d = 0; d < nb; ++d) {
    dims[d].out = batch[d];
    const bool in_a = d + a_nb >= nb;
    const bool in_b = d + b_nb >= nb;
    dims[d].a_size = in_a ? a_shape[d + a_nb - nb] : 1;
    dims[d].a_stride = in_a ? a_strides[d + a_nb - nb] : 0;
    dims[d].b_size = in_b ? b_shape[d + b_nb - nb] : 1;
    dims[d].b_stride = in_b ? b_strides[d + b_nb - nb] : 0;
  }
  std::vector<BatchDim> merged = collapse_batch(dims);

  const int64_t M = a_shape[a_nb], K = a_shape[a_nb + 1], N = b_shape[b_nb + 1];
  int64_t a_rows = M;
  int64_t a_row_stride = a_strides[a_nb];
  const int64_t a_col_stride = a_strides[a_nb + 1];
  // One batch dim over which b is shared and a's rows continue evenly: the
  // whole product is a single [batch * M, K] x [K, N] GEMM.
  if (merged.size() == 1 && merged[0].b_size == 1 && merged[0].a_size == merged[0].out &&
      a_col_stride == 1 && merged[0].a_stride == M * a_row_stride) {
    a_rows = M * merged[0].out;
    merged.clear();
  }

  OneDnnLayouts out;
  for (const BatchDim& d : merged) {
    out.a.dims.push_back(d.a_size);
    out.a.strides.push_back(d.a_stride);
    out.b.dims.push_back(d.b_size);
    out.b.strides.push_back(d.b_stride);
    out.c.dims.push_back(d.out);
  }
  out.a.dims.insert(out.a.dims.end(), {a_rows, K});
  out.a.strides.insert(out.a.strides.end(), {a_row_stride, a_col_stride});
  out.b.dims.insert(out.b.dims.end(), {K, N});
  out.b.strides.insert(out.b.strides.end(), {b_strides[b_nb], b_strides[b_nb + 1]});
  out.c.dims.insert(out.c.dims.end(), {a_rows, N});
  out.c.strides = contiguous_strides(out.c.dims);
  normalize_unit_strides(out.a);
  normalize_unit_strides(out.b);
  return out;
}

bool is_reference_impl(const dnnl::matmul::primitive_desc& pd) {
  return std::string(pd.impl_info_str()).rfind("ref", 0) == 0;
}

// Builds the primitive for these layouts: in place when oneDNN has a real
// kernel for them, else with the non-contiguous operands copied.
std::shared_ptr<Plan> build_plan(const Tensor& a, const Tensor& b, const Shape& batch) {
  const auto& engine = detail::onednn::cpu_engine();
  const bool can_copy_a = !a.is_contiguous();
  const bool can_copy_b = !b.is_contiguous();
  std::string last_error;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool copy_a = attempt == 1 && can_copy_a;
    const bool copy_b = attempt == 1 && can_copy_b;
    if (attempt == 1 && !copy_a && !copy_b) break;
    const OneDnnLayouts l =
        plan_layouts(a.shape(), copy_a ? contiguous_strides(a.shape()) : a.strides(), b.shape(),
                     copy_b ? contiguous_strides(b.shape()) : b.strides(), batch);
    QKV_CHECK(static_cast<int64_t>(l.c.dims.size()) <= kMaxOneDnnDims, "matmul: a ",
              shape_string(a.shape()), " and b ", shape_string(b.shape()), " need ",
              l.c.dims.size(), " dims after merging batch dims; oneDNN takes at most ",
              kMaxOneDnnDims);
    auto plan = std::make_shared<Plan>();
    plan->a_desc = detail::onednn::strided_desc(l.a.dims, l.a.strides, a.dtype(), "matmul");
    plan->b_desc = detail::onednn::strided_desc(l.b.dims, l.b.strides, b.dtype(), "matmul");
    plan->c_desc = detail::onednn::strided_desc(l.c.dims, l.c.strides, DType::f32, "matmul");
    try {
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      dnnl::matmul::primitive_desc pd(
          dnnl::matmul::desc(plan->a_desc, plan->b_desc, plan->c_desc), attr, engine);
      const bool copies_would_help = attempt == 0 && (can_copy_a || can_copy_b);
      if (is_reference_impl(pd) && copies_would_help) continue;
      plan->primitive = dnnl::matmul(pd);
      plan->scratchpad_desc = pd.scratchpad_desc();
    } catch (const dnnl::error& e) {
      last_error = e.what();
      continue;
    }
    plan->copy_a = copy_a;
    plan->copy_b = copy_b;
    return plan;
  }
  throw Error(detail::str("matmul: oneDNN has no kernel for a ", shape_string(a.shape()), " ",
                          dtype_name(a.dtype()), " x b ", shape_string(b.shape()), " ",
                          dtype_name(b.dtype()), ": ", last_error));
}

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& key) const {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t v : key) h = (h ^ static_cast<uint64_t>(v)) * 0x100000001b3ull;
    return static_cast<size_t>(h);
  }
};

struct PlanCache {
  std::mutex mutex;
  std::unordered_map<std::vector<int64_t>, std::shared_ptr<Plan>, KeyHash> plans;
  std::atomic<int64_t> created{0};
};

PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// The thread count is part of the key because some oneDNN kernels fix their
// thread partition when the primitive is created (oneDNN's own primitive
// cache keys on it for that reason); one built for two threads must not run
// after set_num_threads(1).
std::shared_ptr<Plan> find_plan(const Tensor& a, const Tensor& b, const Shape& batch) {
  std::vector<int64_t> key{static_cast<int64_t>(a.dtype()), num_threads(), a.dim(), b.dim()};
  for (const Tensor* t : {&a, &b}) {
    key.insert(key.end(), t->shape().begin(), t->shape().end());
    key.insert(key.end(), t->strides().begin(), t->strides().end());
  }
  PlanCache& cache = plan_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto it = cache.plans.find(key);
    if (it != cache.plans.end()) return it->second;
  }
  // Built outside the lock: creating a primitive takes milliseconds and other
  // shapes should not wait for it.
  std::shared_ptr<Plan> plan = build_plan(a, b, batch);
  std::lock_guard<std::mutex> lock(cache.mutex);
  auto [it, inserted] = cache.plans.emplace(std::move(key), std::move(plan));
  if (inserted) ++cache.created;
  return it->second;
}

// A view of `t` in which expanded batch dims (stride 0) are size 1 again, so
// oneDNN broadcasts them instead of a copy materialising them.
Tensor unexpand_batch(Tensor t) {
  for (int64_t d = 0; d + 2 < t.dim(); ++d)
    if (t.stride(d) == 0 && t.size(d) > 1) t = t.narrow(d, 0, 1);
  return t;
}

void check_operand(const Tensor& t, const char* name) {
  QKV_CHECK(t.defined(), "matmul: argument ", name, " is undefined");
  QKV_CHECK(t.device().type == DeviceType::cpu, "matmul: argument ", name, " is on ",
            to_string(t.device()), "; only cpu is supported");
  QKV_CHECK(t.dim() >= 2, "matmul: argument ", name, " must have rank >= 2, got shape ",
            shape_string(t.shape()), " (rank ", t.dim(), ")");
  QKV_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f64,
            "matmul: argument ", name, " has dtype ", dtype_name(t.dtype()),
            "; supported are f32, bf16 and f64");
}

// The operands as the product reads them, and the result's shape.
struct Product {
  Tensor a, b;  // [..., M, K] and [..., K, N] views, transposes applied
  Shape batch;
  Shape out_shape;
  int64_t K = 0;
};

Product validate(const Tensor& a_in, const Tensor& b_in, const MatmulOptions& options) {
  check_operand(a_in, "a");
  check_operand(b_in, "b");
  const bool f64 = a_in.dtype() == DType::f64 || b_in.dtype() == DType::f64;
  QKV_CHECK(f64 || a_in.dtype() == b_in.dtype(), "matmul: a has dtype ",
            dtype_name(a_in.dtype()), " but b has dtype ", dtype_name(b_in.dtype()),
            "; both must be f32 or both bf16 (or either f64)");
  Product p;
  // f64 promotes the other operand (torch's type promotion).
  p.a = f64 ? a_in.to(DType::f64) : a_in;
  p.b = f64 ? b_in.to(DType::f64) : b_in;
  if (options.transpose_a) p.a = p.a.transpose(-2, -1);
  if (options.transpose_b) p.b = p.b.transpose(-2, -1);
  const int64_t M = p.a.size(-2), N = p.b.size(-1);
  p.K = p.a.size(-1);
  QKV_CHECK(p.b.size(-2) == p.K, "matmul: inner dims differ: a ", shape_string(a_in.shape()),
            options.transpose_a ? " (transposed)" : "", " gives K = ", p.K, ", b ",
            shape_string(b_in.shape()), options.transpose_b ? " (transposed)" : "",
            " gives K = ", p.b.size(-2));
  const Shape a_batch(p.a.shape().begin(), p.a.shape().end() - 2);
  const Shape b_batch(p.b.shape().begin(), p.b.shape().end() - 2);
  try {
    p.batch = broadcast_shapes(a_batch, b_batch, "matmul");
  } catch (const Error&) {
    throw Error(detail::str("matmul: batch dims of a ", shape_string(a_batch), " and b ",
                            shape_string(b_batch), " are not broadcastable (a ",
                            shape_string(a_in.shape()), ", b ", shape_string(b_in.shape()), ")"));
  }
  p.out_shape = p.batch;
  p.out_shape.insert(p.out_shape.end(), {M, N});
  return p;
}

// The f64 product (for checking, not speed: oneDNN has no f64 matmul on
// the CPU): each output row is a double dot product over contiguous copies.
void run_f64(const Product& p, const Tensor& out) {
  Shape a_shape = p.batch, b_shape = p.batch;
  a_shape.insert(a_shape.end(), {p.a.size(-2), p.K});
  b_shape.insert(b_shape.end(), {p.K, p.b.size(-1)});
  const Tensor a = p.a.expand(a_shape).contiguous();
  const Tensor bt = p.b.expand(b_shape).transpose(-2, -1).contiguous();  // [..., N, K]
  const int64_t M = a.size(-2), N = bt.size(-2), K = p.K;
  const int64_t batches = shape_numel(p.batch);
  const double* pa = a.data<double>();
  const double* pb = bt.data<double>();
  double* po = out.data<double>();
  detail::parallel_for(0, batches * M, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, N * K)),
                       [&](int64_t begin, int64_t end) {
                         for (int64_t row = begin; row < end; ++row) {
                           const int64_t batch = row / M;
                           const double* x = pa + row * K;
                           for (int64_t n = 0; n < N; ++n) {
                             const double* y = pb + (batch * N + n) * K;
                             double acc = 0.0;
                             for (int64_t k = 0; k < K; ++k) acc += x[k] * y[k];
                             po[row * N + n] = acc;
                           }
                         }
                       });
}

void run(Product p, const Tensor& out) {
  if (out.numel() == 0) return;
  if (out.dtype() == DType::f64) {
    run_f64(p, out);
    return;
  }
  // oneDNN rejects K = 0; the empty sum is 0.
  if (p.K == 0) {
    std::memset(out.raw_data(), 0, out.nbytes());
    return;
  }
  const Tensor a = unexpand_batch(std::move(p.a));
  const Tensor b = unexpand_batch(std::move(p.b));
  const std::shared_ptr<Plan> plan = find_plan(a, b, p.batch);
  const Tensor a_run = plan->copy_a ? a.contiguous() : a;
  const Tensor b_run = plan->copy_b ? b.contiguous() : b;

  const auto& engine = detail::onednn::cpu_engine();
  dnnl::memory a_mem(plan->a_desc, engine, a_run.raw_data());
  dnnl::memory b_mem(plan->b_desc, engine, b_run.raw_data());
  dnnl::memory c_mem(plan->c_desc, engine, out.raw_data());
  dnnl::memory scratchpad_mem(plan->scratchpad_desc, engine,
                              detail::onednn::scratchpad(plan->scratchpad_desc.get_size()));
  detail::sync_openmp_threads();
  dnnl::stream& stream = detail::onednn::cpu_stream();
  try {
    plan->primitive.execute(stream, {{DNNL_ARG_SRC, a_mem},
                                     {DNNL_ARG_WEIGHTS, b_mem},
                                     {DNNL_ARG_DST, c_mem},
                                     {DNNL_ARG_SCRATCHPAD, scratchpad_mem}});
    stream.wait();
  } catch (const dnnl::error& e) {
    throw Error(detail::str("matmul: oneDNN failed on a ", shape_string(a.shape()), " x b ",
                            shape_string(b.shape()), ": ", e.what()));
  }
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, const MatmulOptions& options) {
  Product p = validate(a, b, options);
  Tensor out = Tensor::empty(p.out_shape, p.a.dtype() == DType::f64 ? DType::f64 : DType::f32);
  run(std::move(p), out);
  return out;
}

void matmul_into(const Tensor& a, const Tensor& b, const Tensor& out,
                 const MatmulOptions& options) {
  Product p = validate(a, b, options);
  QKV_CHECK(out.defined(), "matmul_into: argument out is undefined");
  const DType out_dtype = p.a.dtype() == DType::f64 ? DType::f64 : DType::f32;
  QKV_CHECK(out.dtype() == out_dtype && out.is_contiguous() && out.shape() == p.out_shape,
            "matmul_into: out must be a contiguous ", dtype_name(out_dtype), " ",
            shape_string(p.out_shape),
            ", got a ", out.is_contiguous() ? "contiguous " : "non-contiguous ",
            dtype_name(out.dtype()), " ", shape_string(out.shape()));
  QKV_CHECK(out.device().type == DeviceType::cpu, "matmul_into: out is on ",
            to_string(out.device()), "; only cpu is supported");
  for (const Tensor* t : {&a, &b})
    QKV_CHECK(out.numel() == 0 || t->storage() != out.storage(),
              "matmul_into: out shares storage with ", t == &a ? "a" : "b",
              "; the product cannot be written over its inputs");
  run(std::move(p), out);
}

int64_t matmul_primitive_count() { return plan_cache().created.load(); }

}  // namespace qkv
