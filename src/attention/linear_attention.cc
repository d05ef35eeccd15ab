// Linformer, linear attention (elu + 1) and Performer FAVOR+.
//
// The two kernelised forms share one engine, parameterised by the feature map
// (FeatureMap below): the map turns q and k into phi(q), phi(k) [N, L, m] and
// back-propagates through itself; the engine does the rest with batched
// oneDNN products. The denominator rides along as one more value column:
// v1 = [v, 1], so S1 = phi(k)^T v1 [m, Dv + 1] holds S and z together and one
// product phi(q) S1 gives numerator and denominator.
//
// Causal form, chunked (Katharopoulos et al. 2020, eq. 9, as block prefix
// sums): rows are cut into chunks of C; chunk c sees
//   its own keys through tril(phi(q)_c phi(k)_c^T) v1_c   (a C x C product)
//   earlier chunks through phi(q)_c S1_{<c}               (an exclusive scan of
//                                                          the chunk states)
// The non-causal form is the same code with one chunk, no intra-chunk term and
// the full sum as the state. The backward runs the same products transposed,
// with a reverse (suffix) scan for the key side.
//
// Everything runs in f32 (bf16 inputs converted), or in f64 when any floating
// input is f64 (for gradcheck): the raw loops below are templated on the
// element type and dispatched on the tensors' dtype, the products are
// qkv::matmul's (a double GEMM for f64).
#include "qkv/linear_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/elementwise.h"
#include "qkv/matmul.h"
#include "qkv/ops.h"

namespace qkv {
namespace {

// ---------------------------------------------------------------- arguments

// Every tensor argument: defined, on the cpu, of a dtype the family computes from.
void check_tensor(const Tensor& t, const char* op, const char* name) {
  QKV_CHECK(t.defined(), op, ": argument ", name, " is undefined");
  QKV_CHECK(t.device().type == DeviceType::cpu, op, ": argument ", name, " is on ",
            to_string(t.device()), "; only cpu is supported");
  QKV_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f64, op,
            ": argument ", name, " has dtype ", dtype_name(t.dtype()),
            "; expected f32, bf16 or f64");
}

void check_input(const Tensor& t, const char* op, const char* name) {
  check_tensor(t, op, name);
  QKV_CHECK(t.dim() == 4, op, ": argument ", name, " must be [B, H, L, D], got shape ",
            shape_string(t.shape()));
}

// q: [B, H, Lq, D], k: [B, H, Lk, D], v: [B, H, Lk, Dv].
void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  check_input(q, op, "q");
  check_input(k, op, "k");
  check_input(v, op, "v");
  QKV_CHECK(q.size(0) == k.size(0) && k.size(0) == v.size(0) && q.size(1) == k.size(1) &&
                k.size(1) == v.size(1),
            op, ": q ", shape_string(q.shape()), ", k ", shape_string(k.shape()), " and v ",
            shape_string(v.shape()), " must share batch and head dims [B, H]");
  QKV_CHECK(q.size(3) == k.size(3), op, ": q has head dim ", q.size(3), " but k has ", k.size(3),
            " (q ", shape_string(q.shape()), ", k ", shape_string(k.shape()), ")");
  QKV_CHECK(k.size(2) == v.size(2), op, ": k has ", k.size(2), " keys but v has ", v.size(2),
            " (k ", shape_string(k.shape()), ", v ", shape_string(v.shape()), ")");
}

void check_grad_output(const Tensor& g, const Tensor& q, const Tensor& v, const char* op) {
  check_input(g, op, "grad_output");
  const Shape want{q.size(0), q.size(1), q.size(2), v.size(3)};
  QKV_CHECK(g.shape() == want, op, ": argument grad_output has shape ", shape_string(g.shape()),
            "; expected ", shape_string(want));
}

void check_kernelised(const Tensor& q, const Tensor& k, const Tensor& v,
                      const LinearAttentionOptions& o, const char* op) {
  check_qkv(q, k, v, op);
  QKV_CHECK(std::isfinite(o.eps) && o.eps >= 0, op, ": options.eps is ", o.eps,
            "; expected a finite value >= 0");
  QKV_CHECK(o.chunk >= 1, op, ": options.chunk is ", o.chunk, "; expected >= 1");
  QKV_CHECK(!o.causal || q.size(2) == k.size(2), op,
            ": causal needs as many queries as keys, got Lq = ", q.size(2),
            " and Lk = ", k.size(2));
}

// The dtype the computation runs in: f64 when any floating input is, else
// f32 (bf16 inputs are computed in f32).
template <class... Tensors>
DType compute_dtype(const Tensors&... inputs) {
  return ((inputs.dtype() == DType::f64) || ...) ? DType::f64 : DType::f32;
}

// Runs f.template operator()<T>() with T the element type of `dtype` (f32 or
// f64, the two compute dtypes): the raw loops are written once, templated.
template <class F>
decltype(auto) dispatch(DType dtype, F&& f) {
  if (dtype == DType::f64) return f.template operator()<double>();
  return f.template operator()<float>();
}

// [B, H, L, D] as contiguous [B H, L, D] of the compute dtype.
Tensor heads(const Tensor& t, DType dtype) {
  return t.to(dtype).contiguous().reshape({t.size(0) * t.size(1), t.size(2), t.size(3)});
}

// ----------------------------------------------------------- small kernels

// exp over a run in place: the vectorised kernel for f32, std::exp for f64.
void exp_run(float* x, int64_t n) {
  kernels::Exp(x, x, static_cast<size_t>(n));
}
void exp_run(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// The rows of a [N, L, X] tensor of T whose rows are contiguous (a narrowed
// view of a padded buffer included), with the pointer arithmetic hoisted.
template <class T>
class Rows {
 public:
  explicit Rows(const Tensor& t)
      : base_(t.data<T>()), n_stride_(t.stride(0)), stride_(t.stride(1)) {}
  T* operator()(int64_t n, int64_t i) const { return base_ + n * n_stride_ + i * stride_; }

 private:
  T* base_;
  int64_t n_stride_, stride_;
};

// dst += src, both contiguous of one shape and dtype.
void add_into(const Tensor& dst, const Tensor& src) {
  dispatch(dst.dtype(), [&]<class T>() {
    T* d = dst.data<T>();
    const T* s = src.data<T>();
    detail::parallel_for(0, dst.numel(), 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) d[i] += s[i];
    });
  });
}

// Zeroes the entries above the diagonal of every C x C block of [N, nC, C, C].
void keep_lower_triangle(const Tensor& blocks) {
  const int64_t c = blocks.size(-1), count = blocks.numel() / (c * c);
  dispatch(blocks.dtype(), [&]<class T>() {
    T* base = blocks.data<T>();
    detail::parallel_for(0, count, 16, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m)
        for (int64_t i = 0; i < c; ++i)
          std::fill_n(base + (m * c + i) * c + i + 1, c - 1 - i, T(0));
    });
  });
}

// Exclusive prefix sums over the chunk dim of [N, nC, m, E], in place, run
// forward (state before chunk c) or in reverse (state after chunk c).
// Accumulated in double: a long sequence adds up thousands of chunk states.
void exclusive_scan(const Tensor& states, bool reverse) {
  const int64_t n = states.size(0), chunks = states.size(1), size = states.size(2) * states.size(3);
  dispatch(states.dtype(), [&]<class T>() {
    T* base = states.data<T>();
    detail::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
      std::vector<double> run(static_cast<size_t>(size));
      for (int64_t h = b; h < e; ++h) {
        std::fill(run.begin(), run.end(), 0.0);
        for (int64_t step = 0; step < chunks; ++step) {
          const int64_t c = reverse ? chunks - 1 - step : step;
          T* s = base + (h * chunks + c) * size;
          for (int64_t i = 0; i < size; ++i) {
            const double here = s[i];
            s[i] = static_cast<T>(run[i]);
            run[i] += here;
          }
        }
      }
    });
  });
}

// ------------------------------------------------------------ feature maps

class FeatureMap {
 public:
  virtual ~FeatureMap() = default;
  virtual int64_t features() const = 0;
  // x: [N, L, D] contiguous -> phi(x): [N, L, m] contiguous, of x's dtype
  // (f32 or f64).
  virtual Tensor apply(const Tensor& x, bool queries) const = 0;
  // d loss / dx [N, L, D] from d loss / d phi; phi = apply(x), both [N, L, m]
  // with contiguous rows.
  virtual Tensor backward(const Tensor& x, const Tensor& phi, const Tensor& grad_phi) const = 0;
};

// Katharopoulos et al. 2020: phi(x) = elu(x) + 1, whose derivative is 1 for
// x > 0 and exp(x) = phi(x) below.
class EluPlusOne final : public FeatureMap {
 public:
  explicit EluPlusOne(int64_t d) : d_(d) {}
  int64_t features() const override { return d_; }
  Tensor apply(const Tensor& x, bool) const override {
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    dispatch(x.dtype(), [&]<class T>() {
      const T* in = x.data<T>();
      T* o = out.data<T>();
      // elu(x) + 1 = exp(min(x, 0)) + max(x, 0): branch-free, through the
      // vectorised exp.
      detail::parallel_for(0, x.numel(), 1 << 14, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) o[i] = std::min(in[i], T(0));
        exp_run(o + b, e - b);
        for (int64_t i = b; i < e; ++i) o[i] += std::max(in[i], T(0));
      });
    });
    return out;
  }
  Tensor backward(const Tensor& x, const Tensor& phi, const Tensor& grad_phi) const override {
    Tensor dx = Tensor::empty(x.shape(), x.dtype());
    const int64_t len = x.size(1), d = d_;
    dispatch(x.dtype(), [&]<class T>() {
      const Rows<T> xs(x), ps(phi), gs(grad_phi), outs(dx);
      detail::parallel_for(0, x.size(0) * len, 64, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t n = r / len, i = r % len;
          const T* xi = xs(n, i);
          const T* p = ps(n, i);
          const T* g = gs(n, i);
          T* out = outs(n, i);
          for (int64_t c = 0; c < d; ++c) out[c] = g[c] * (xi[c] > 0 ? T(1) : p[c]);
        }
      });
    });
    return dx;
  }

 private:
  int64_t d_;
};

// Choromanski et al. 2021, eq. (7) with the positive features of lemma 1:
// phi(x) = exp(W x' - |x'|^2 / 2 - c) / sqrt(m), x' = x d^(-1/4).
class PositiveRandomFeatures final : public FeatureMap {
 public:
  PositiveRandomFeatures(Tensor w, int64_t d)
      : w_(std::move(w)), m_(w_.size(0)), s_(std::pow(static_cast<double>(d), -0.25)) {}
  int64_t features() const override { return m_; }

  Tensor apply(const Tensor& x, bool queries) const override {
    Tensor u = matmul(x, w_, {.transpose_b = true});  // [N, L, m]: W x
    const int64_t n = x.size(0), len = x.size(1), d = x.size(2);
    dispatch(x.dtype(), [&]<class T>() {
      const T s = static_cast<T>(s_), half_s2 = static_cast<T>(s_ * s_ / 2);
      const T norm = static_cast<T>(1 / std::sqrt(static_cast<double>(m_)));
      // In place: u <- W x' - |x'|^2 / 2, the exponent before the stabiliser.
      detail::parallel_for(0, n * len, 64, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const T* xi = x.data<T>() + r * d;
          T sq = 0;
          for (int64_t c = 0; c < d; ++c) sq += xi[c] * xi[c];
          T* ui = u.data<T>() + r * m_;
          for (int64_t f = 0; f < m_; ++f) ui[f] = s * ui[f] - half_s2 * sq;
        }
      });
      // The stabiliser: the largest exponent of each query row, or of all the
      // keys of a head (one constant, so the keys keep their relative weights).
      detail::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
        for (int64_t h = b; h < e; ++h) {
          T* head = u.data<T>() + h * len * m_;
          T top = -std::numeric_limits<T>::infinity();
          if (!queries) top = *std::max_element(head, head + len * m_);
          for (int64_t i = 0; i < len; ++i) {
            T* ui = head + i * m_;
            const T c = queries ? *std::max_element(ui, ui + m_) : top;
            for (int64_t f = 0; f < m_; ++f) ui[f] -= c;
            exp_run(ui, m_);
            for (int64_t f = 0; f < m_; ++f) ui[f] *= norm;
          }
        }
      });
    });
    return u;
  }

  // With a = W x' - |x'|^2 / 2: da = dphi * phi, dx' = W^T da - (sum da) x',
  // dx = d^(-1/4) dx'.
  Tensor backward(const Tensor& x, const Tensor& phi, const Tensor& grad_phi) const override {
    const int64_t n = x.size(0), len = x.size(1), d = x.size(2);
    Tensor da = Tensor::empty({n, len, m_}, x.dtype());
    Tensor row_sum = Tensor::empty({n, len}, x.dtype());
    dispatch(x.dtype(), [&]<class T>() {
      const Rows<T> ps(phi), gs(grad_phi);
      detail::parallel_for(0, n * len, 64, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t h = r / len, i = r % len;
          const T* p = ps(h, i);
          const T* g = gs(h, i);
          T* out = da.data<T>() + r * m_;
          double sum = 0;
          for (int64_t f = 0; f < m_; ++f) {
            out[f] = g[f] * p[f];
            sum += out[f];
          }
          row_sum.data<T>()[r] = static_cast<T>(sum);
        }
      });
    });
    Tensor dx = matmul(da, w_);  // [N, L, D]
    dispatch(x.dtype(), [&]<class T>() {
      const T s = static_cast<T>(s_), s2 = static_cast<T>(s_ * s_);
      detail::parallel_for(0, n * len, 64, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const T* xi = x.data<T>() + r * d;
          T* out = dx.data<T>() + r * d;
          const T sum = row_sum.data<T>()[r];
          for (int64_t c = 0; c < d; ++c) out[c] = s * out[c] - s2 * sum * xi[c];
        }
      });
    });
    return dx;
  }

 private:
  Tensor w_;  // [m, d] of the compute dtype, contiguous
  int64_t m_;
  double s_;  // d^(-1/4)
};

// ------------------------------------------------------------------ engine

// One kernelised product, laid out in chunks: [N, nC, C, .] for the rows.
// Non-causal: one "chunk" holding every row (queries and keys may then differ
// in length). Every tensor has the compute dtype.
struct Chunked {
  bool causal = false;
  DType dtype = DType::f32;
  int64_t n = 0, lq = 0, lk = 0, dv = 0, m = 0, chunks = 1, rows_q = 0, rows_k = 0;
  double eps = 0;       // options.eps rounded to the compute dtype
  Tensor phi_q, phi_k;  // [N, nC, Cq, m], [N, nC, Ck, m]; rows past the end are 0
  Tensor v1;            // [N, nC, Ck, Dv + 1]: [v, 1], padding rows 0
  Tensor scores;        // causal: tril(phi_q phi_k^T) per chunk, [N, nC, C, C]
  Tensor states;        // [N, nC, m, Dv + 1]: S1 before each chunk, or the full sum
  Tensor num;           // [N, nC, Cq, Dv + 1]: numerators and (last column) denominators - eps

  // The unpadded [N, L, X] view of a chunked [N, nC, C, X] tensor.
  static Tensor unchunk(const Tensor& t, int64_t len) {
    return t.reshape({t.size(0), t.size(1) * t.size(2), t.size(3)}).narrow(1, 0, len);
  }
  // [N, L, X] into chunks of `rows` (zero padding past L).
  Tensor chunk(const Tensor& t, int64_t rows) const {
    const int64_t len = t.size(1), x = t.size(2);
    if (chunks * rows == len) return t.reshape({t.size(0), chunks, rows, x});
    Tensor out = Tensor::zeros({t.size(0), chunks * rows, x}, t.dtype());
    out.narrow(1, 0, len).copy_(t);
    return out.reshape({t.size(0), chunks, rows, x});
  }
};

Chunked kernelised_forward(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                           const LinearAttentionOptions& o) {
  Chunked s;
  s.causal = o.causal;
  s.dtype = v.dtype();
  s.n = v.size(0);
  s.lq = phi_q.size(1);
  s.lk = v.size(1);
  s.dv = v.size(2);
  s.m = phi_q.size(2);
  s.eps = s.dtype == DType::f64 ? o.eps : static_cast<float>(o.eps);
  if (s.causal) {
    s.rows_q = s.rows_k = std::min(o.chunk, s.lq);
    s.chunks = (s.lq + s.rows_q - 1) / s.rows_q;
  } else {
    s.rows_q = s.lq;
    s.rows_k = s.lk;
  }
  s.phi_q = s.chunk(phi_q, s.rows_q);
  s.phi_k = s.chunk(phi_k, s.rows_k);
  const int64_t e = s.dv + 1;
  s.v1 = Tensor::zeros({s.n, s.chunks, s.rows_k, e}, s.dtype);
  dispatch(s.dtype, [&]<class T>() {
    detail::parallel_for(0, s.n * s.lk, 256, [&](int64_t b, int64_t end) {
      for (int64_t r = b; r < end; ++r) {
        const int64_t h = r / s.lk, j = r % s.lk;
        T* out = s.v1.data<T>() + (h * s.chunks * s.rows_k + j) * e;
        std::copy_n(v.data<T>() + r * s.dv, s.dv, out);
        out[s.dv] = T(1);
      }
    });
  });
  // Across chunks: phi_q S1, S1 = the sum of phi_k^T v1 over earlier chunks.
  s.states = matmul(s.phi_k, s.v1, {.transpose_a = true});
  if (s.causal) exclusive_scan(s.states, false);
  s.num = matmul(s.phi_q, s.states);
  if (s.causal) {  // within a chunk: the masked C x C product
    s.scores = matmul(s.phi_q, s.phi_k, {.transpose_b = true});
    keep_lower_triangle(s.scores);
    add_into(s.num, matmul(s.scores, s.v1));
  }
  return s;
}

// out_i = num_i / (den_i + eps), as [N, Lq, Dv].
Tensor kernelised_output(const Chunked& s) {
  Tensor out = Tensor::empty({s.n, s.lq, s.dv}, s.dtype);
  dispatch(s.dtype, [&]<class T>() {
    const Rows<T> num(Chunked::unchunk(s.num, s.lq));
    const T eps = static_cast<T>(s.eps);
    detail::parallel_for(0, s.n * s.lq, 256, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* in = num(r / s.lq, r % s.lq);
        T* o = out.data<T>() + r * s.dv;
        const T inv = T(1) / (in[s.dv] + eps);
        for (int64_t c = 0; c < s.dv; ++c) o[c] = in[c] * inv;
      }
    });
  });
  return out;
}

struct KernelisedGradients {
  Tensor phi_q, phi_k;  // [N, L, m] views with contiguous rows
  Tensor v;             // [N, Lk, Dv] view with contiguous rows
};

// With out_i = n_i / d_i (d_i = den_i + eps) and g = dL/dout:
//   dn_i = g_i / d_i,  dd_i = -(g_i . out_i) / d_i,  G1_i = [dn_i, dd_i],
// and each product of the forward transposed:
//   dphi_q = G1 S1^T (+ tril(G1 v1^T) phi_k within a chunk)
//   dphi_k = v1 R^T  (+ tril(G1 v1^T)^T phi_q)
//   dv1    = phi_k R (+ tril(phi_q phi_k^T)^T G1)
// where R = the sum of phi_q^T G1 over later chunks (a reverse scan), or over
// every row without the causal mask.
KernelisedGradients kernelised_backward(const Chunked& s, const Tensor& grad_out) {
  const int64_t e = s.dv + 1;
  Tensor g1 = Tensor::zeros({s.n, s.chunks, s.rows_q, e}, s.dtype);
  dispatch(s.dtype, [&]<class T>() {
    const Rows<T> num(Chunked::unchunk(s.num, s.lq)), g1_rows(Chunked::unchunk(g1, s.lq));
    detail::parallel_for(0, s.n * s.lq, 256, [&](int64_t b, int64_t end) {
      for (int64_t r = b; r < end; ++r) {
        const int64_t h = r / s.lq, i = r % s.lq;
        const T* in = num(h, i);
        const T* g = grad_out.data<T>() + r * s.dv;
        T* out = g1_rows(h, i);
        const double inv = 1.0 / (static_cast<double>(in[s.dv]) + s.eps);
        double dot = 0;
        for (int64_t c = 0; c < s.dv; ++c) {
          out[c] = static_cast<T>(g[c] * inv);
          dot += static_cast<double>(g[c]) * in[c];
        }
        out[s.dv] = static_cast<T>(-dot * inv * inv);
      }
    });
  });
  Tensor dphi_q = matmul(g1, s.states, {.transpose_b = true});
  Tensor r_states = matmul(s.phi_q, g1, {.transpose_a = true});
  if (s.causal) exclusive_scan(r_states, true);
  Tensor dphi_k = matmul(s.v1, r_states, {.transpose_b = true});
  Tensor dv1 = matmul(s.phi_k, r_states);
  if (s.causal) {
    Tensor p = matmul(g1, s.v1, {.transpose_b = true});
    keep_lower_triangle(p);
    add_into(dphi_q, matmul(p, s.phi_k));
    add_into(dphi_k, matmul(p, s.phi_q, {.transpose_a = true}));
    add_into(dv1, matmul(s.scores, g1, {.transpose_a = true}));
  }
  return {Chunked::unchunk(dphi_q, s.lq), Chunked::unchunk(dphi_k, s.lk),
          Chunked::unchunk(dv1, s.lk).narrow(2, 0, s.dv)};
}

// Every kernelised attention: q, k, v [B, H, L, D] -> [B, H, Lq, Dv], computed
// in `dtype` (the feature map's too).
Tensor kernelised_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                            const FeatureMap& map, const LinearAttentionOptions& o, DType dtype) {
  const Shape shape{q.size(0), q.size(1), q.size(2), v.size(3)};
  if (shape_numel(shape) == 0) return Tensor::zeros(shape, dtype);
  if (k.size(2) == 0 || q.size(3) == 0) return Tensor::zeros(shape, dtype);  // 0 / eps
  const Chunked s = kernelised_forward(map.apply(heads(q, dtype), true),
                                       map.apply(heads(k, dtype), false), heads(v, dtype), o);
  return kernelised_output(s).reshape(shape);
}

LinearAttentionGradients kernelised_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                       const Tensor& k, const Tensor& v,
                                                       const FeatureMap& map,
                                                       const LinearAttentionOptions& o,
                                                       DType dtype) {
  if (q.numel() == 0 || k.numel() == 0 || v.numel() == 0)
    return {Tensor::zeros(q.shape(), dtype), Tensor::zeros(k.shape(), dtype),
            Tensor::zeros(v.shape(), dtype)};
  const Tensor qh = heads(q, dtype), kh = heads(k, dtype);
  const Tensor phi_q = map.apply(qh, true), phi_k = map.apply(kh, false);
  const Chunked s = kernelised_forward(phi_q, phi_k, heads(v, dtype), o);
  const KernelisedGradients g = kernelised_backward(s, heads(grad_output, dtype));
  return {map.backward(qh, phi_q, g.phi_q).reshape(q.shape()),
          map.backward(kh, phi_k, g.phi_k).reshape(k.shape()), g.v.contiguous().reshape(v.shape())};
}

// ------------------------------------------------------------- Linformer

// e, f: [kproj, Lk] or [H, kproj, Lk]; returns kproj.
int64_t check_projections(const Tensor& e, const Tensor& f, const Tensor& k, const char* op) {
  const int64_t heads = k.size(1), lk = k.size(2);
  for (const auto& [t, name] : {std::pair{&e, "e"}, std::pair{&f, "f"}}) {
    check_tensor(*t, op, name);
    const bool shared = t->dim() == 2, per_head = t->dim() == 3 && t->size(0) == heads;
    QKV_CHECK((shared || per_head) && t->size(-1) == lk && t->size(-2) >= 1, op, ": argument ",
              name, " has shape ", shape_string(t->shape()), "; expected [kproj, ", lk, "] or [",
              heads, ", kproj, ", lk, "] (Lk = ", lk, ", H = ", heads, ", kproj >= 1)");
  }
  QKV_CHECK(e.size(-2) == f.size(-2), op, ": e projects to ", e.size(-2), " keys but f to ",
            f.size(-2), " values (e ", shape_string(e.shape()), ", f ", shape_string(f.shape()),
            ")");
  return e.size(-2);
}

// The options attention() gets on the projected keys; rejects what does not apply.
AttentionOptions linformer_options(const AttentionOptions& o, const char* op) {
  QKV_CHECK(o.layout == AttentionLayout::bhld, op,
            ": options.layout must be bhld ([B, H, L, D]); blhd is not supported");
  QKV_CHECK(o.causal == Causal::none, op,
            ": options.causal is not supported: the projection E k mixes every key, future "
            "ones included, into each projected key");
  QKV_CHECK(!o.mask.defined() && !o.key_padding_mask.defined(), op,
            ": options.mask and options.key_padding_mask are not supported (the keys are "
            "projected; mask the sequence before projecting it)");
  QKV_CHECK(!o.mask_mod && !o.score_mod, op,
            ": options.mask_mod and options.score_mod are not supported");
  QKV_CHECK(o.dropout == 0.0, op, ": options.dropout is ", o.dropout, "; dropout is not supported");
  AttentionOptions inner;
  inner.scale = o.scale;
  inner.return_lse = true;
  inner.weights_heads = o.weights_heads;
  return inner;
}

// Sums a [B, H, kproj, Lk] gradient down to the projection's own shape.
Tensor reduce_projection_grad(const Tensor& full, const Tensor& projection) {
  Tensor g = sum(full, 0);
  return projection.dim() == 2 ? sum(g, 0) : g;
}

}  // namespace

AttentionResult linformer_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& e, const Tensor& f,
                                    const AttentionOptions& options) {
  const char* op = "linformer_attention";
  check_qkv(q, k, v, op);
  check_projections(e, f, k, op);
  const AttentionOptions inner = linformer_options(options, op);
  const DType dtype = compute_dtype(q, k, v, e, f);
  const Tensor kp = matmul(e.to(dtype), k.to(dtype));  // [B, H, kproj, D]
  const Tensor vp = matmul(f.to(dtype), v.to(dtype));  // [B, H, kproj, Dv]
  // f64 runs attention()'s double oracle.
  return attention(q.to(dtype), kp, vp, inner);
}

LinformerGradients linformer_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                const Tensor& k, const Tensor& v, const Tensor& e,
                                                const Tensor& f, const AttentionResult& forward,
                                                const AttentionOptions& options) {
  const char* op = "linformer_attention_backward";
  check_qkv(q, k, v, op);
  check_grad_output(grad_output, q, v, op);
  check_projections(e, f, k, op);
  const AttentionOptions inner = linformer_options(options, op);
  QKV_CHECK(forward.output.defined() && forward.lse.defined(), op,
            ": argument forward must hold linformer_attention's output and lse");
  const DType dtype = compute_dtype(q, k, v, e, f);
  const Tensor ec = e.to(dtype), fc = f.to(dtype), kc = k.to(dtype), vc = v.to(dtype);
  const Tensor kp = matmul(ec, kc), vp = matmul(fc, vc);
  // f64 runs attention_backward()'s double oracle (which recomputes the forward).
  const AttentionGradients inner_grads =
      attention_backward(grad_output.to(dtype), q.to(dtype), kp, vp, forward, inner);
  // K' = E k: dk = E^T dK', dE = sum over batch (and heads when shared) of dK' k^T.
  LinformerGradients g;
  g.grad_q = inner_grads.grad_q;
  g.grad_k = matmul(ec, inner_grads.grad_k, {.transpose_a = true});
  g.grad_v = matmul(fc, inner_grads.grad_v, {.transpose_a = true});
  g.grad_e = reduce_projection_grad(matmul(inner_grads.grad_k, kc, {.transpose_b = true}), e);
  g.grad_f = reduce_projection_grad(matmul(inner_grads.grad_v, vc, {.transpose_b = true}), f);
  return g;
}

// ------------------------------------------------------ kernelised, public

Tensor linear_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                        const LinearAttentionOptions& options) {
  check_kernelised(q, k, v, options, "linear_attention");
  return kernelised_attention(q, k, v, EluPlusOne(q.size(3)), options, compute_dtype(q, k, v));
}

LinearAttentionGradients linear_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                   const Tensor& k, const Tensor& v,
                                                   const LinearAttentionOptions& options) {
  const char* op = "linear_attention_backward";
  check_kernelised(q, k, v, options, op);
  check_grad_output(grad_output, q, v, op);
  return kernelised_attention_backward(grad_output, q, k, v, EluPlusOne(q.size(3)), options,
                                       compute_dtype(q, k, v));
}

namespace {

// Checks w; the features compute in `dtype`.
PositiveRandomFeatures performer_features(const Tensor& w, const Tensor& q, const char* op,
                                          DType dtype) {
  check_tensor(w, op, "w");
  QKV_CHECK(w.dim() == 2 && w.size(1) == q.size(3) && w.size(0) >= 1, op, ": argument w has shape ",
            shape_string(w.shape()), "; expected [m, ", q.size(3),
            "] (m >= 1 features of the head dim D = ", q.size(3), ")");
  return PositiveRandomFeatures(w.to(dtype).contiguous(), q.size(3));
}

}  // namespace

Tensor performer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w,
                           const LinearAttentionOptions& options) {
  const char* op = "performer_attention";
  check_kernelised(q, k, v, options, op);
  const DType dtype = compute_dtype(q, k, v, w);
  return kernelised_attention(q, k, v, performer_features(w, q, op, dtype), options, dtype);
}

LinearAttentionGradients performer_attention_backward(const Tensor& grad_output, const Tensor& q,
                                                      const Tensor& k, const Tensor& v,
                                                      const Tensor& w,
                                                      const LinearAttentionOptions& options) {
  const char* op = "performer_attention_backward";
  check_kernelised(q, k, v, options, op);
  check_grad_output(grad_output, q, v, op);
  const DType dtype = compute_dtype(q, k, v, w);
  return kernelised_attention_backward(grad_output, q, k, v, performer_features(w, q, op, dtype),
                                       options, dtype);
}

// Orthogonal random features (Choromanski et al. 2021, section 2.4, the
// regularised variant): Gaussian d x d blocks orthonormalised by modified
// Gram-Schmidt in double (run twice, which keeps the rows orthogonal to
// rounding), rows rescaled by chi_d-distributed norms.
Tensor performer_projection(int64_t features, int64_t dim, uint64_t seed) {
  QKV_CHECK(features >= 1, "performer_projection: argument features is ", features,
            "; expected >= 1");
  QKV_CHECK(dim >= 1, "performer_projection: argument dim is ", dim, "; expected >= 1");
  Generator gen(seed);
  std::vector<double> w(static_cast<size_t>(features * dim));
  std::vector<double> block(static_cast<size_t>(dim * dim));
  for (int64_t first = 0; first < features; first += dim) {
    for (double& x : block) x = gen.normal();
    for (int64_t i = 0; i < dim; ++i) {
      double* r = block.data() + i * dim;
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t j = 0; j < i; ++j) {
          const double* u = block.data() + j * dim;
          double dot = 0;
          for (int64_t c = 0; c < dim; ++c) dot += r[c] * u[c];
          for (int64_t c = 0; c < dim; ++c) r[c] -= dot * u[c];
        }
      double norm = 0;
      for (int64_t c = 0; c < dim; ++c) norm += r[c] * r[c];
      norm = std::sqrt(norm);
      for (int64_t c = 0; c < dim; ++c) r[c] /= norm;
    }
    const int64_t rows = std::min(dim, features - first);
    for (int64_t i = 0; i < rows; ++i) {
      double length = 0;
      for (int64_t c = 0; c < dim; ++c) {
        const double x = gen.normal();
        length += x * x;
      }
      length = std::sqrt(length);
      for (int64_t c = 0; c < dim; ++c) w[(first + i) * dim + c] = block[i * dim + c] * length;
    }
  }
  return Tensor::from_values(w, {features, dim});
}

}  // namespace qkv
