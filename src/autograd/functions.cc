// Ops on Variables: each forward beside its backward. A backward captures
// only the tensors its formula reads.
#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>

#include "core/parallel.h"
#include "qkv/autograd.h"

namespace qkv::autograd {
namespace {

// The value of an optional operand (undefined stays undefined).
Tensor value_of(const Variable& v) {
  return v.defined() ? v.value() : Tensor();
}

bool needs_grad(const Variable& v) {
  return v.defined() && v.requires_grad();
}

thread_local bool autocasting = false;

// The operand a matrix product reads under autocast: a bf16 copy (recorded).
Variable autocast(const Variable& x) {
  return autocasting && x.defined() && x.dtype() == DType::f32 ? to(x, DType::bf16) : x;
}

// g in the dtype of the operand it multiplies (bf16 products under autocast).
Tensor like(const Tensor& g, const Tensor& operand) {
  return g.to(operand.dtype());
}

// y[r, :] += bias for the fresh contiguous f32 [rows, n] product of a linear:
// one pass in place, the same single rounding as add(y, bias).
void add_bias_rows(Tensor& y, const Tensor& bias) {
  const Tensor b = bias.to(DType::f32).contiguous();
  const int64_t rows = y.size(0), n = y.size(1);
  float* out = y.data<float>();
  const float* add = b.data<float>();
  qkv::detail::parallel_for(0, rows,
                            std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(n, 1)),
                            [&](int64_t begin, int64_t end) {
                              for (int64_t r = begin; r < end; ++r) {
                                float* row = out + r * n;
                                for (int64_t j = 0; j < n; ++j) row[j] += add[j];
                              }
                            });
}

// Column sums of a [rows, n] matrix (a linear's bias gradient) without
// transposing it: rows added in blocks of 64 and the block sums added up (a
// two-level sum, as accurate as torch's cascade sum here), columns split over
// the threads, so the result does not depend on the thread count.
Tensor column_sums(const Tensor& x) {
  const Tensor c = x.to(DType::f32).contiguous();
  const int64_t rows = c.size(0), n = c.size(1);
  Tensor out = Tensor::empty({n}, DType::f32);
  const float* src = c.data<float>();
  float* dst = out.data<float>();
  constexpr int64_t kBlock = 64, kCols = 64;
  qkv::detail::parallel_for(0, (n + kCols - 1) / kCols, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = t * kCols, width = std::min(n, c0 + kCols) - c0;
      float total[kCols] = {}, part[kCols];
      for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
        std::fill(part, part + kCols, 0.0f);
        for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r) {
          const float* row = src + r * n + c0;
          for (int64_t j = 0; j < width; ++j) part[j] += row[j];
        }
        for (int64_t j = 0; j < width; ++j) total[j] += part[j];
      }
      std::copy(total, total + width, dst + c0);
    }
  });
  return out;
}

}  // namespace

AutocastGuard::AutocastGuard(bool enabled) : previous_(autocasting) {
  autocasting = enabled;
}
AutocastGuard::~AutocastGuard() {
  autocasting = previous_;
}
bool autocast_enabled() {
  return autocasting;
}
void set_autocast_enabled(bool on) {
  autocasting = on;
}

Variable to(const Variable& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  const DType grad_dtype = gradient_dtype(x.dtype());
  return record("to", x.value().to(dtype), {x}, [grad_dtype](const Tensor& g) {
    return std::vector<Tensor>{g.to(grad_dtype)};
  });
}

// ---- element-wise ----------------------------------------------------------

Variable add(const Variable& a, const Variable& b) {
  return record("add", qkv::add(a.value(), b.value()), {a, b},
                [sa = a.shape(), sb = b.shape()](const Tensor& g) {
                  return std::vector<Tensor>{sum_to_shape(g, sa), sum_to_shape(g, sb)};
                });
}

Variable sub(const Variable& a, const Variable& b) {
  return record(
      "sub", qkv::sub(a.value(), b.value()), {a, b},
      [sa = a.shape(), sb = b.shape()](const Tensor& g) {
        return std::vector<Tensor>{sum_to_shape(g, sa), sum_to_shape(qkv::scale(g, -1.0), sb)};
      });
}

Variable mul(const Variable& a, const Variable& b) {
  const Tensor av = a.value(), bv = b.value();
  // d a = g b, d b = g a: each side keeps the other operand, if it is needed.
  return record("mul", qkv::mul(av, bv), {a, b},
                [a_saved = needs_grad(b) ? av : Tensor(), b_saved = needs_grad(a) ? bv : Tensor(),
                 sa = a.shape(), sb = b.shape()](const Tensor& g) {
                  return std::vector<Tensor>{
                      b_saved.defined() ? sum_to_shape(qkv::mul(g, b_saved), sa) : Tensor(),
                      a_saved.defined() ? sum_to_shape(qkv::mul(g, a_saved), sb) : Tensor()};
                });
}

Variable scale(const Variable& x, double factor) {
  return record("scale", qkv::scale(x.value(), factor), {x},
                [factor](const Tensor& g) { return std::vector<Tensor>{qkv::scale(g, factor)}; });
}

// ---- products --------------------------------------------------------------

Variable matmul(const Variable& a_in, const Variable& b_in, const MatmulOptions& options) {
  const Variable a = autocast(a_in), b = autocast(b_in);
  const Tensor av = a.value(), bv = b.value();
  const bool ta = options.transpose_a, tb = options.transpose_b;
  // With A = op(a), B = op(b): dA = g B^T, dB = A^T g; da = dA (or dA^T), summed
  // over batch dims a broadcast over.
  return record("matmul", qkv::matmul(av, bv, options), {a, b},
                [av = needs_grad(b) ? av : Tensor(), bv = needs_grad(a) ? bv : Tensor(), ta, tb,
                 sa = a.shape(), sb = b.shape()](const Tensor& g) {
                  Tensor da, db;
                  if (bv.defined()) {
                    const Tensor d = qkv::matmul(like(g, bv), bv, {.transpose_b = !tb});
                    da = sum_to_shape(ta ? d.transpose(-1, -2) : d, sa);
                  }
                  if (av.defined()) {
                    const Tensor d = qkv::matmul(av, like(g, av), {.transpose_a = !ta});
                    db = sum_to_shape(tb ? d.transpose(-1, -2) : d, sb);
                  }
                  return std::vector<Tensor>{da, db};
                });
}

Variable linear(const Variable& x_in, const Variable& weight_in, const Variable& bias) {
  const Variable x = autocast(x_in), weight = autocast(weight_in);
  const Tensor xv = x.value(), wv = weight.value();
  QKV_CHECK(xv.dim() >= 1 && wv.dim() == 2 && xv.size(-1) == wv.size(1), "linear: input ",
            shape_string(xv.shape()), " and weight ", shape_string(wv.shape()),
            " do not fit (weight is [out, in])");
  const int64_t in = wv.size(1), out = wv.size(0);  // weight: [out, in]
  Shape out_shape = xv.shape();
  out_shape.back() = out;
  const Tensor rows = xv.reshape({-1, in});
  Tensor y = qkv::matmul(rows, wv, {.transpose_b = true});
  if (bias.defined()) {
    QKV_CHECK(bias.dim() == 1 && bias.size(0) == out, "linear: bias ", shape_string(bias.shape()),
              " does not fit weight ", shape_string(wv.shape()), " (bias is [out])");
    if (y.dtype() == DType::f32 && bias.dtype() != DType::f64)
      add_bias_rows(y, bias.value());
    else
      y = qkv::add(y, bias.value());  // f64 (or promoted to it)
  }
  const bool wants_w = needs_grad(weight), wants_b = needs_grad(bias);
  return record("linear", y.view(out_shape), {x, weight, bias},
                [rows = wants_w ? rows : Tensor(), wv = needs_grad(x) ? wv : Tensor(), wants_b,
                 xs = xv.shape(), out](const Tensor& g) {
                  const Tensor g_rows = g.reshape({-1, out});
                  // One copy of g in the products' dtype (bf16 under autocast) for both.
                  const Tensor& operand = wv.defined() ? wv : rows;
                  const Tensor g_mm = operand.defined() ? like(g_rows, operand) : Tensor();
                  Tensor dx, dw, db;
                  if (wv.defined()) dx = qkv::matmul(g_mm, wv).view(xs);
                  if (rows.defined()) dw = qkv::matmul(g_mm, rows, {.transpose_a = true});
                  if (wants_b)
                    db = g_rows.dtype() == DType::f64 ? qkv::sum(g_rows, 0) : column_sums(g_rows);
                  return std::vector<Tensor>{dx, dw, db};
                });
}

// ---- activations and normalisation ---------------------------------------

Variable relu(const Variable& x) {
  return record("relu", qkv::relu(x.value()), {x}, [xv = x.value()](const Tensor& g) {
    return std::vector<Tensor>{relu_backward(g, xv)};
  });
}

Variable gelu(const Variable& x, GeluApproximation approximation) {
  return record("gelu", qkv::gelu(x.value(), approximation), {x},
                [xv = x.value(), approximation](const Tensor& g) {
                  return std::vector<Tensor>{gelu_backward(g, xv, approximation)};
                });
}

Variable silu(const Variable& x) {
  return record("silu", qkv::silu(x.value()), {x}, [xv = x.value()](const Tensor& g) {
    return std::vector<Tensor>{silu_backward(g, xv)};
  });
}

Variable softmax(const Variable& x, int64_t dim) {
  const Tensor y = qkv::softmax(x.value(), dim);
  return record("softmax", y, {x}, [y, dim](const Tensor& g) {
    return std::vector<Tensor>{softmax_backward(g, y, dim)};
  });
}

Variable log_softmax(const Variable& x, int64_t dim) {
  const Tensor y = qkv::log_softmax(x.value(), dim);
  return record("log_softmax", y, {x}, [y, dim](const Tensor& g) {
    return std::vector<Tensor>{log_softmax_backward(g, y, dim)};
  });
}

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps) {
  const Tensor xv = x.value(), wv = value_of(weight), bv = value_of(bias);
  return record("layer_norm", qkv::layer_norm(xv, wv, bv, eps), {x, weight, bias},
                [xv, wv, bv, eps](const Tensor& g) {
                  NormGradients n = layer_norm_backward(g, xv, wv, bv, eps);
                  return std::vector<Tensor>{n.input, n.weight, n.bias};
                });
}

Variable rms_norm(const Variable& x, const Variable& weight, double eps) {
  const Tensor xv = x.value(), wv = value_of(weight);
  return record("rms_norm", qkv::rms_norm(xv, wv, eps), {x, weight},
                [xv, wv, eps](const Tensor& g) {
                  NormGradients n = rms_norm_backward(g, xv, wv, eps);
                  return std::vector<Tensor>{n.input, n.weight};
                });
}

Variable dropout(const Variable& x, double p, Generator& generator, bool training) {
  if (!training || p == 0.0) return x;
  DropoutResult r = qkv::dropout(x.value(), p, generator);
  return record("dropout", r.output, {x}, [mask = r.mask, p](const Tensor& g) {
    return std::vector<Tensor>{dropout_backward(g, mask, p)};
  });
}

Variable embedding(const Variable& weight, const Tensor& ids, int64_t padding_idx) {
  const int64_t n = weight.size(0);
  return record("embedding", qkv::embedding(weight.value(), ids), {weight},
                [ids, n, padding_idx](const Tensor& g) {
                  return std::vector<Tensor>{embedding_backward(g, ids, n, padding_idx)};
                });
}

// ---- shapes and reductions -------------------------------------------------

Variable reshape(const Variable& x, const Shape& shape) {
  return record("reshape", x.value().reshape(shape), {x},
                [s = x.shape()](const Tensor& g) { return std::vector<Tensor>{g.reshape(s)}; });
}

Variable permute(const Variable& x, const Shape& dims) {
  Shape inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i)
    inverse[static_cast<size_t>(wrap_dim(dims[i], x.dim(), "permute"))] = static_cast<int64_t>(i);
  return record("permute", x.value().permute(dims), {x},
                [inverse](const Tensor& g) { return std::vector<Tensor>{g.permute(inverse)}; });
}

Variable transpose(const Variable& x, int64_t dim0, int64_t dim1) {
  return record("transpose", x.value().transpose(dim0, dim1), {x}, [dim0, dim1](const Tensor& g) {
    return std::vector<Tensor>{g.transpose(dim0, dim1)};
  });
}

// The gradient of a slice: zeros, with g in the slice's place.
Variable narrow(const Variable& x, int64_t dim, int64_t start, int64_t length) {
  return record("narrow", x.value().narrow(dim, start, length), {x},
                [s = x.shape(), dim, start, length](const Tensor& g) {
                  Tensor full = Tensor::zeros(s, g.dtype());
                  full.narrow(dim, start, length).copy_(g);
                  return std::vector<Tensor>{full};
                });
}

Variable select(const Variable& x, int64_t dim, int64_t index) {
  return record("select", x.value().select(dim, index), {x},
                [s = x.shape(), dim, index](const Tensor& g) {
                  Tensor full = Tensor::zeros(s, g.dtype());
                  full.select(dim, index).copy_(g);
                  return std::vector<Tensor>{full};
                });
}

Variable sum(const Variable& x) {
  return record("sum", qkv::sum(x.value()), {x}, [s = x.shape()](const Tensor& g) {
    return std::vector<Tensor>{g.reshape({}).expand(s)};
  });
}

Variable mean(const Variable& x) {
  const double n = static_cast<double>(x.value().numel());
  return record("mean", qkv::mean(x.value()), {x}, [s = x.shape(), n](const Tensor& g) {
    return std::vector<Tensor>{qkv::scale(g.reshape({}), 1.0 / n).expand(s)};
  });
}

Variable sum(const Variable& x, int64_t dim, bool keepdim) {
  const int64_t d = wrap_dim(dim, x.dim(), "sum");
  return record("sum", qkv::sum(x.value(), d, keepdim), {x},
                [s = x.shape(), d, keepdim](const Tensor& g) {
                  return std::vector<Tensor>{(keepdim ? g : g.unsqueeze(d)).expand(s)};
                });
}

Variable mean(const Variable& x, int64_t dim, bool keepdim) {
  const int64_t d = wrap_dim(dim, x.dim(), "mean");
  const double n = static_cast<double>(x.size(d));
  return record(
      "mean", qkv::mean(x.value(), d, keepdim), {x},
      [s = x.shape(), d, keepdim, n](const Tensor& g) {
        return std::vector<Tensor>{qkv::scale(keepdim ? g : g.unsqueeze(d), 1.0 / n).expand(s)};
      });
}

// ---- attention and losses ----------------------------------------------------

Variable attention(const Variable& q_in, const Variable& k_in, const Variable& v_in,
                   const AttentionOptions& options) {
  const Variable q = autocast(q_in), k = autocast(k_in), v = autocast(v_in);
  AttentionOptions o = options;
  o.return_lse = true;
  o.weights_heads.clear();
  AttentionResult r = qkv::attention(q.value(), k.value(), v.value(), o);
  const Tensor out = r.output;
  return record(
      "attention", out, {q, k, v},
      [qv = q.value(), kv = k.value(), vv = v.value(), saved = std::move(r), o](const Tensor& g) {
        AttentionGradients a = attention_backward(g, qv, kv, vv, saved, o);
        return std::vector<Tensor>{a.grad_q, a.grad_k, a.grad_v};
      });
}

Variable packed_self_attention(const Variable& qkv_in, int64_t heads,
                               const std::optional<RotaryOptions>& rotary,
                               const AttentionOptions& options) {
  const bool bf16 = autocast_enabled() && qkv_in.dtype() == DType::f32;
  const Variable qkv = bf16 ? to(qkv_in, DType::bf16) : qkv_in;
  const Shape shape = qkv.shape();  // [B, L, 3 H Dh]
  QKV_CHECK(qkv.dim() == 3 && heads > 0 && shape[2] % (3 * heads) == 0,
            "packed_self_attention: qkv has shape ", shape_string(shape), "; expected [B, L, 3 * ",
            heads, " * head_dim]");
  const int64_t b = shape[0], l = shape[1], dh = shape[2] / (3 * heads);
  const Tensor packed = qkv.value().view({b, l, 3, heads, dh});
  Tensor q = packed.select(2, 0), k = packed.select(2, 1);
  const Tensor v = packed.select(2, 2);
  if (rotary) {
    q = qkv::rotary_embedding(q, *rotary), k = qkv::rotary_embedding(k, *rotary);
    if (bf16) q = q.to(DType::bf16), k = k.to(DType::bf16);
  }
  const bool recording = grad_enabled() && qkv.requires_grad();
  AttentionOptions o = options;
  o.layout = AttentionLayout::blhd;
  o.return_lse = recording;
  o.weights_heads.clear();
  AttentionResult r = qkv::attention(q, k, v, o);
  Tensor out = r.output;
  if (!recording) return Variable(std::move(out));
  return record("self_attention", std::move(out), {qkv},
                [q, k, v, saved = std::move(r), o, rotary, shape](const Tensor& g) {
                  AttentionGradients a = attention_backward(g, q, k, v, saved, o);
                  if (rotary) {
                    a.grad_q = qkv::rotary_embedding_backward(a.grad_q, *rotary);
                    a.grad_k = qkv::rotary_embedding_backward(a.grad_k, *rotary);
                  }
                  Tensor grad = Tensor::empty(shape);
                  const Tensor parts =
                      grad.view(Shape{shape[0], shape[1], 3, q.size(2), q.size(3)});
                  parts.select(2, 0).copy_(a.grad_q);
                  parts.select(2, 1).copy_(a.grad_k);
                  parts.select(2, 2).copy_(a.grad_v);
                  return std::vector<Tensor>{grad};
                });
}

Variable t5_attention(const Variable& q_in, const Variable& k_in, const Variable& v_in,
                      const Variable& table, const T5BiasOptions& t5,
                      const AttentionOptions& options) {
  const Variable q = autocast(q_in), k = autocast(k_in), v = autocast(v_in);
  AttentionOptions o = options;
  const ScoreModPtr bias = t5_bias_score(table.value(), t5);
  o.score_mod = options.score_mod ? score_chain(bias, options.score_mod) : bias;
  o.return_lse = true;
  o.weights_heads.clear();
  AttentionResult r = qkv::attention(q.value(), k.value(), v.value(), o);
  const Tensor out = r.output;
  return record(
      "t5_attention", out, {q, k, v, table},
      [qv = q.value(), kv = k.value(), vv = v.value(), saved = std::move(r), o](const Tensor& g) {
        AttentionGradients a = attention_backward(g, qv, kv, vv, saved, o);
        // The table's gradient comes first: t5's modifier is the chain's first.
        return std::vector<Tensor>{a.grad_q, a.grad_k, a.grad_v, a.grad_score_mod.at(0)};
      });
}

Variable shaw_attention(const Variable& q_in, const Variable& k_in, const Variable& v_in,
                        const Variable& relative_key, const Variable& relative_value,
                        int64_t max_distance, const AttentionOptions& options,
                        int64_t query_offset) {
  const Variable q = autocast(q_in), k = autocast(k_in), v = autocast(v_in);
  const ShawPositions positions{.key = value_of(relative_key),
                                .value = value_of(relative_value),
                                .max_distance = max_distance,
                                .query_offset = query_offset};
  AttentionOptions o = options;
  o.weights_heads.clear();
  ShawResult r = qkv::shaw_attention(q.value(), k.value(), v.value(), positions, o);
  const Tensor out = r.attention.output;
  return record("shaw_attention", out, {q, k, v, relative_key, relative_value},
                [qv = q.value(), kv = k.value(), vv = v.value(), positions, saved = std::move(r),
                 o](const Tensor& g) {
                  ShawGradients s = shaw_attention_backward(g, qv, kv, vv, positions, saved, o);
                  return std::vector<Tensor>{s.attention.grad_q, s.attention.grad_k,
                                             s.attention.grad_v, s.grad_key, s.grad_value};
                });
}

Variable linformer_attention(const Variable& q, const Variable& k, const Variable& v,
                             const Variable& e, const Variable& f,
                             const AttentionOptions& options) {
  AttentionResult r =
      qkv::linformer_attention(q.value(), k.value(), v.value(), e.value(), f.value(), options);
  const Tensor out = r.output;
  return record("linformer_attention", out, {q, k, v, e, f},
                [qv = q.value(), kv = k.value(), vv = v.value(), ev = e.value(), fv = f.value(),
                 saved = std::move(r), options](const Tensor& g) {
                  LinformerGradients l =
                      linformer_attention_backward(g, qv, kv, vv, ev, fv, saved, options);
                  return std::vector<Tensor>{l.grad_q, l.grad_k, l.grad_v, l.grad_e, l.grad_f};
                });
}

Variable linear_attention(const Variable& q, const Variable& k, const Variable& v,
                          const LinearAttentionOptions& options) {
  return record("linear_attention", qkv::linear_attention(q.value(), k.value(), v.value(), options),
                {q, k, v},
                [qv = q.value(), kv = k.value(), vv = v.value(), options](const Tensor& g) {
                  LinearAttentionGradients l = linear_attention_backward(g, qv, kv, vv, options);
                  return std::vector<Tensor>{l.grad_q, l.grad_k, l.grad_v};
                });
}

Variable performer_attention(const Variable& q, const Variable& k, const Variable& v,
                             const Tensor& w, const LinearAttentionOptions& options) {
  return record(
      "performer_attention", qkv::performer_attention(q.value(), k.value(), v.value(), w, options),
      {q, k, v}, [qv = q.value(), kv = k.value(), vv = v.value(), w, options](const Tensor& g) {
        LinearAttentionGradients l = performer_attention_backward(g, qv, kv, vv, w, options);
        return std::vector<Tensor>{l.grad_q, l.grad_k, l.grad_v};
      });
}

Variable rotary_embedding(const Variable& x, const RotaryOptions& options) {
  return record("rotary_embedding", qkv::rotary_embedding(x.value(), options), {x},
                [options](const Tensor& g) {
                  return std::vector<Tensor>{qkv::rotary_embedding_backward(g, options)};
                });
}

Variable cross_entropy(const Variable& logits, const Tensor& targets,
                       const CrossEntropyOptions& options) {
  const Tensor lv = logits.value();
  return record("cross_entropy", qkv::cross_entropy(lv, targets, options), {logits},
                [lv, targets, options](const Tensor& g) {
                  return std::vector<Tensor>{cross_entropy_backward(g, lv, targets, options)};
                });
}

Variable mse_loss(const Variable& input, const Variable& target, Reduction reduction) {
  const Tensor iv = input.value(), tv = target.value();
  return record("mse_loss", qkv::mse_loss(iv, tv, reduction), {input, target},
                [iv, tv, reduction](const Tensor& g) {
                  const Tensor d = mse_loss_backward(g, iv, tv, reduction);
                  return std::vector<Tensor>{d, qkv::scale(d, -1.0)};
                });
}

Variable kl_div_distillation(const Variable& student_logits, const Tensor& teacher_logits,
                             double temperature, Reduction reduction) {
  const Tensor sv = student_logits.value();
  return record("kl_div_distillation",
                qkv::kl_div_distillation(sv, teacher_logits, temperature, reduction),
                {student_logits}, [sv, teacher_logits, temperature, reduction](const Tensor& g) {
                  return std::vector<Tensor>{
                      kl_div_distillation_backward(g, sv, teacher_logits, temperature, reduction)};
                });
}

}  // namespace qkv::autograd
