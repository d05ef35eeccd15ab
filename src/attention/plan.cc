#include "attention/plan.h"

#include <cmath>

namespace qkv::detail {
namespace {

// [B, H, L, D] view of a tensor in `layout`.
Tensor as_bhld(const Tensor& t, AttentionLayout layout) {
  return layout == AttentionLayout::bhld ? t : t.permute({0, 2, 1, 3});
}

const char* layout_name(AttentionLayout layout) {
  return layout == AttentionLayout::bhld ? "[B, H, L, D]" : "[B, L, H, D]";
}

void check_qkv(const Tensor& t, const char* op, const char* name, AttentionLayout layout) {
  QKV_CHECK(t.defined(), op, ": argument ", name, " is an undefined tensor");
  QKV_CHECK(t.device().type == DeviceType::cpu, op, ": argument ", name, " is on ",
            to_string(t.device()), "; only cpu tensors are supported");
  QKV_CHECK(t.dim() == 4, op, ": argument ", name, " has shape ", shape_string(t.shape()),
            "; expected 4 dims ", layout_name(layout));
  QKV_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f64, op,
            ": argument ", name, " has dtype ", dtype_name(t.dtype()),
            "; expected f32, bf16 or f64");
}

// The kernel reads each row as contiguous values.
Tensor with_contiguous_rows(const Tensor& t) {
  return t.size(3) <= 1 || t.stride(3) == 1 ? t : t.contiguous();
}

}  // namespace

AttentionPlan plan_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                             const AttentionOptions& options, const char* op) {
  AttentionPlan p;
  p.layout = options.layout;
  check_qkv(q_in, op, "q", p.layout);
  check_qkv(k_in, op, "k", p.layout);
  check_qkv(v_in, op, "v", p.layout);
  // An f64 operand makes all three f64 (torch's promotion): the oracle's
  // double path, for checking (gradcheck).
  const bool f64 = q_in.dtype() == DType::f64 || k_in.dtype() == DType::f64 ||
                   v_in.dtype() == DType::f64;
  QKV_CHECK(f64 || (q_in.dtype() == k_in.dtype() && q_in.dtype() == v_in.dtype()), op,
            ": q, k and v must share a dtype; got ", dtype_name(q_in.dtype()), ", ",
            dtype_name(k_in.dtype()), " and ", dtype_name(v_in.dtype()));
  const auto promoted = [f64](const Tensor& t) { return f64 ? t.to(DType::f64) : t; };
  p.q = with_contiguous_rows(as_bhld(promoted(q_in), p.layout));
  p.k = with_contiguous_rows(as_bhld(promoted(k_in), p.layout));
  p.v = with_contiguous_rows(as_bhld(promoted(v_in), p.layout));
  p.batch = p.q.size(0);
  p.heads = p.q.size(1);
  p.lq = p.q.size(2);
  p.d = p.q.size(3);
  p.kv_heads = p.k.size(1);
  p.lk = p.k.size(2);
  p.dv = p.v.size(3);
  const auto shapes = [&] {
    return detail::str(" (q ", shape_string(q_in.shape()), ", k ", shape_string(k_in.shape()),
                       ", v ", shape_string(v_in.shape()), ", layout ", layout_name(p.layout), ")");
  };
  QKV_CHECK(p.k.size(0) == p.batch && p.v.size(0) == p.batch, op,
            ": q, k and v must have the same batch size", shapes());
  QKV_CHECK(p.k.size(3) == p.d, op, ": q and k must have the same head dim", shapes());
  QKV_CHECK(p.v.size(1) == p.kv_heads && p.v.size(2) == p.lk, op,
            ": k and v must have the same heads and length", shapes());
  QKV_CHECK(p.kv_heads > 0 ? p.heads % p.kv_heads == 0 : p.heads == 0, op, ": q's ", p.heads,
            " heads are not a multiple of k's and v's ", p.kv_heads, " heads", shapes());

  const double scale =
      options.scale.value_or(p.d > 0 ? 1.0 / std::sqrt(static_cast<double>(p.d)) : 1.0);
  QKV_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  p.scale = static_cast<float>(scale);
  p.scale_f64 = scale;
  if (options.causal == Causal::top_left) p.causal_diagonal = 0;
  if (options.causal == Causal::bottom_right) p.causal_diagonal = p.lk - p.lq;

  QKV_CHECK(options.dropout >= 0.0 && options.dropout < 1.0, op,
            ": dropout must be in [0, 1), got ", options.dropout);
  p.dropout = static_cast<float>(options.dropout);
  p.dropout_seed = options.dropout_seed;
  for (int64_t h : options.weights_heads)
    QKV_CHECK(h >= 0 && h < p.heads, op, ": weights_heads has head ", h, "; q has ", p.heads,
              " heads");
  p.weights_heads = options.weights_heads;
  if (options.mask_mod) options.mask_mod->check(p.batch, p.heads, p.lq, p.lk);
  if (options.score_mod) options.score_mod->check(p.batch, p.heads, p.lq, p.lk);
  if (options.mask_mod || options.score_mod)
    p.hooks = std::make_shared<ModifierHooks>(options.mask_mod, options.score_mod);

  const Shape scores{p.batch, p.heads, p.lq, p.lk};
  if (options.mask.defined()) {
    const Tensor& mask = options.mask;
    QKV_CHECK(mask.dtype() == DType::boolean || is_floating(mask.dtype()), op,
              ": argument mask has dtype ", dtype_name(mask.dtype()),
              "; expected bool (true = may attend) or a float bias");
    bool broadcasts = mask.dim() <= 4;
    for (int64_t i = 1; broadcasts && i <= mask.dim(); ++i)
      broadcasts = mask.size(-i) == 1 || mask.size(-i) == scores[4 - i];
    QKV_CHECK(broadcasts, op, ": argument mask has shape ", shape_string(mask.shape()),
              ", which does not broadcast to the scores' shape ", shape_string(scores));
    if (mask.dtype() == DType::boolean)
      p.allowed = mask.expand(scores);
    else
      p.bias = mask.to(DType::f32).expand(scores);
  }
  if (options.key_padding_mask.defined()) {
    const Tensor& kpm = options.key_padding_mask;
    QKV_CHECK(kpm.dtype() == DType::boolean, op, ": argument key_padding_mask has dtype ",
              dtype_name(kpm.dtype()), "; expected bool (true = padding)");
    QKV_CHECK(kpm.shape() == (Shape{p.batch, p.lk}), op, ": argument key_padding_mask has shape ",
              shape_string(kpm.shape()), "; expected [B, Lk] = ", shape_string({p.batch, p.lk}));
    p.key_padding = kpm;
  }
  return p;
}

AttentionResult AttentionPlan::make_result(bool with_lse) const {
  AttentionResult r;
  const Shape shape =
      layout == AttentionLayout::bhld ? Shape{batch, heads, lq, dv} : Shape{batch, lq, heads, dv};
  const DType dtype = result_dtype();
  r.output = Tensor::zeros(shape, dtype);
  if (with_lse) r.lse = Tensor::full({batch, heads, lq}, -INFINITY, dtype);
  if (!weights_heads.empty())
    r.weights = Tensor::zeros({batch, static_cast<int64_t>(weights_heads.size()), lq, lk}, dtype);
  return r;
}

Tensor AttentionPlan::output_bhld(const AttentionResult& result, AttentionLayout layout) {
  return as_bhld(result.output, layout);
}

kernels::AttentionSlice AttentionPlan::slice(int64_t b, int64_t h,
                                             const AttentionResult& result) const {
  kernels::AttentionSlice s;
  const int64_t g = h / (heads / kv_heads);  // the K/V head this query head reads
  const size_t elem = dtype_size(q.dtype());
  auto at = [elem](const Tensor& t, int64_t i0, int64_t i1) {
    return static_cast<const char*>(t.raw_data()) +
           (i0 * t.stride(0) + i1 * t.stride(1)) * static_cast<int64_t>(elem);
  };
  s.bf16 = q.dtype() == DType::bf16;
  s.f64 = q.dtype() == DType::f64;
  s.q = at(q, b, h);
  s.k = at(k, b, g);
  s.v = at(v, b, g);
  s.q_stride = q.stride(2);
  s.k_stride = k.stride(2);
  s.v_stride = v.stride(2);
  const Tensor out = output_bhld(result, layout);
  if (!s.f64) {
    s.o = static_cast<float*>(out.raw_data()) + b * out.stride(0) + h * out.stride(1);
    s.o_stride = out.stride(2);
    if (result.lse.defined())
      s.lse = static_cast<float*>(result.lse.raw_data()) + (b * heads + h) * lq;
  }
  s.lq = lq;
  s.lk = lk;
  s.d = d;
  s.dv = dv;
  s.scale = scale;
  s.scale_f64 = scale_f64;
  if (allowed.defined()) {
    s.allowed = static_cast<const uint8_t*>(allowed.raw_data()) + b * allowed.stride(0) +
                h * allowed.stride(1);
    s.allowed_row_stride = allowed.stride(2);
    s.allowed_col_stride = allowed.stride(3);
  }
  if (bias.defined()) {
    s.bias = static_cast<const float*>(bias.raw_data()) + b * bias.stride(0) + h * bias.stride(1);
    s.bias_row_stride = bias.stride(2);
    s.bias_col_stride = bias.stride(3);
  }
  if (key_padding.defined()) {
    s.key_padding = static_cast<const uint8_t*>(key_padding.raw_data()) + b * key_padding.stride(0);
    s.key_padding_stride = key_padding.stride(1);
  }
  s.causal_diagonal = causal_diagonal;
  s.hooks = hooks.get();
  s.batch = b;
  s.head = h;
  s.dropout = dropout;
  s.dropout_seed = dropout_seed;
  s.dropout_stream = static_cast<uint64_t>(b * heads + h);
  return s;
}

// ---- ModifierHooks ---------------------------------------------------------

using Visibility = kernels::AttentionHooks::Visibility;

Visibility ModifierHooks::visibility(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0,
                                     int64_t k1) const {
  if (!mask_) return kAll;
  switch (mask_->visibility({b, h, q0, q1, k0, k1})) {
    case BlockVisibility::none: return kNone;
    case BlockVisibility::all: return kAll;
    case BlockVisibility::some: return kSome;
  }
  return kSome;
}

void ModifierHooks::modify_scores(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0,
                                  int64_t k1, float* s, int64_t ld) const {
  if (score_) score_->apply({b, h, q0, q1, k0, k1}, s, ld);
}

void ModifierHooks::mask_scores(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0,
                                int64_t k1, float* s, int64_t ld) const {
  if (mask_) mask_->apply({b, h, q0, q1, k0, k1}, s, ld);
}

void ModifierHooks::score_backward(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0,
                                   int64_t k1, const float* raw, float* grad, int64_t ld) const {
  if (!score_) return;
  if (gradients_ != nullptr) gradients_->accumulate({b, h, q0, q1, k0, k1}, raw, grad, ld);
  score_->backward({b, h, q0, q1, k0, k1}, raw, grad, ld);
}

void ModifierHooks::add_grad_probability_term(int64_t b, int64_t h, int64_t q0, int64_t q1,
                                              int64_t k0, int64_t k1, float* dp, int64_t ld) const {
  grad_probability_term_->apply({b, h, q0, q1, k0, k1}, dp, ld);
}

bool ModifierHooks::allowed(int64_t b, int64_t h, int64_t q, int64_t k) const {
  return !mask_ || mask_->allowed(b, h, q, k);
}

double ModifierHooks::score(double s, int64_t b, int64_t h, int64_t q, int64_t k) const {
  return score_ ? score_->score(s, b, h, q, k) : s;
}

double ModifierHooks::derivative(double s, int64_t b, int64_t h, int64_t q, int64_t k) const {
  return score_ ? score_->derivative(s, b, h, q, k) : 1.0;
}

}  // namespace qkv::detail
