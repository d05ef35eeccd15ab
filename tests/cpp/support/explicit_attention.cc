// The test twin MultiHeadAttention (support/explicit_attention.h):
// torch.nn.MultiheadAttention's parameters and results (Vaswani et al. 2017,
// sec. 3.2.2), with the projections reshaped into head views (no copies) for
// the fused attention, and an explicit backward.
#include <cmath>

#include "nn/attention_variant.h"
#include "nn/state_dict.h"
#include "qkv/linear_attention.h"
#include "qkv/matmul.h"
#include "support/explicit_attention.h"
#include "qkv/ops.h"
#include "qkv/positions.h"

namespace qkv::nn {
namespace {

Tensor uniform(const Shape& shape, double bound, Generator& gen) {
  return add(scale(rand(shape, gen), 2 * bound), Tensor::full({}, -bound));
}

// x [N, in] -> x W^T + b, [N, out] (torch.nn.functional.linear).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Tensor y = matmul(x, weight, {.transpose_b = true});
  return bias.defined() ? add(y, bias) : y;
}

// The gradients of linear(): d(weight) = dY^T X, d(bias) = sum over rows of dY,
// dX = dY W.
struct LinearGrads {
  Tensor input, weight, bias;
};
LinearGrads linear_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, bool bias) {
  LinearGrads g;
  g.input = matmul(grad, weight);
  g.weight = matmul(grad, x, {.transpose_a = true});
  if (bias) g.bias = sum(grad, 0);
  return g;
}

Tensor logical_not(const Tensor& mask) {
  Tensor out = Tensor::empty(mask.shape(), DType::boolean);
  const Tensor in = mask.contiguous();
  for (int64_t i = 0; i < in.numel(); ++i) out.data<bool>()[i] = !in.data<bool>()[i];
  return out;
}

// [L0, L1, E] rows as [L0 * L1, E] (a view when contiguous).
Tensor rows(const Tensor& x) {
  return x.reshape({-1, x.size(-1)});
}

// [B, L, H, D] <-> [B, H, L, D] (views).
Tensor swap_heads(const Tensor& t) {
  return t.permute({0, 2, 1, 3});
}

}  // namespace

MultiHeadAttention::MultiHeadAttention(const MultiHeadAttentionConfig& config, Generator& generator)
    : config_(config) {
  const int64_t e = config.embed_dim, h = config.num_heads;
  QKV_CHECK(e > 0 && h > 0 && e % h == 0, "MultiHeadAttention: embed_dim ", e,
            " must be a positive multiple of num_heads ", h);
  QKV_CHECK(config.dropout >= 0 && config.dropout < 1,
            "MultiHeadAttention: dropout must be in [0, 1), got ", config.dropout);
  if (config_.kdim == 0) config_.kdim = e;
  if (config_.vdim == 0) config_.vdim = e;
  // torch's _reset_parameters: Xavier-uniform projections, zero biases; the
  // output projection keeps Linear's kaiming_uniform(a = sqrt 5) = U(+-1/sqrt(fan_in)).
  auto xavier = [&](const Shape& shape) {
    return uniform(shape, std::sqrt(6.0 / static_cast<double>(shape[0] + shape[1])), generator);
  };
  if (config_.kdim == e && config_.vdim == e) {
    parameters_["in_proj_weight"] = xavier({3 * e, e});
  } else {
    parameters_["q_proj_weight"] = xavier({e, e});
    parameters_["k_proj_weight"] = xavier({e, config_.kdim});
    parameters_["v_proj_weight"] = xavier({e, config_.vdim});
  }
  parameters_["out_proj.weight"] =
      uniform({e, e}, 1.0 / std::sqrt(static_cast<double>(e)), generator);
  if (config.bias) {
    parameters_["in_proj_bias"] = Tensor::zeros({3 * e});
    parameters_["out_proj.bias"] = Tensor::zeros({e});
  }
  dropout_generator_ = Generator(generator.next_u64());
  init_variant(generator);
}

void MultiHeadAttention::init_variant(Generator& generator) {
  detail::VariantTensors variant = detail::make_variant(
      config_, config_.embed_dim, config_.num_heads, config_.vdim, generator, "MultiHeadAttention");
  for (auto& [name, t] : variant.learned) parameters_[name] = std::move(t);
  performer_projection_ = std::move(variant.performer_projection);
}

void MultiHeadAttention::redraw_features(uint64_t seed) {
  performer_projection_ =
      detail::redraw_performer_features(config_, config_.embed_dim / config_.num_heads, seed,
                                        "MultiHeadAttention.redraw_features");
}

void MultiHeadAttention::attend(Saved& s, bool need_weights) {
  const char* op = "MultiHeadAttention";
  if (config_.positions == AttentionPositions::rotary) {
    const RotaryOptions r = detail::rotary_for_heads(config_.rotary);
    s.q = rotary_embedding(s.q, r);
    s.k = rotary_embedding(s.k, r);
  }
  if (config_.kernel == AttentionKernel::softmax) {
    s.options.mask_mod = config_.mask_mod;
    s.options.score_mod = detail::fixed_score_mod(config_, config_.num_heads);
    if (config_.positions == AttentionPositions::t5)
      s.options.score_mod = t5_bias_score(weight("relative_attention_bias.weight"),
                                          detail::t5_for_heads(config_.t5));
    if (need_weights)
      for (int64_t i = 0; i < config_.num_heads; ++i) s.options.weights_heads.push_back(i);
    if (config_.positions == AttentionPositions::shaw) {
      ShawResult r = shaw_attention(s.q, s.k, s.v, shaw_positions(), s.options);
      s.attention = std::move(r.attention);
      s.value_weights = std::move(r.value_weights);
    } else {
      s.attention = attention(s.q, s.k, s.v, s.options);
    }
    return;
  }
  // Kernels without a weight matrix, masks or dropout.
  const LinearAttentionOptions lo =
      detail::linear_kernel_options(config_, s.options, need_weights, op);
  const Tensor q = swap_heads(s.q), k = swap_heads(s.k), v = swap_heads(s.v);
  AttentionResult r;
  if (config_.kernel == AttentionKernel::linformer) {
    r = linformer_attention(q, k, v, weight("linformer_e"), weight("linformer_f"));
  } else {
    r.output = config_.kernel == AttentionKernel::linear
                   ? linear_attention(q, k, v, lo)
                   : performer_attention(q, k, v, performer_projection_, lo);
  }
  r.output = swap_heads(r.output);  // [B, Lq, H, Dh] like the fused path's
  s.attention = std::move(r);
}

AttentionGradients MultiHeadAttention::attend_backward(const Saved& s, const Tensor& grad_heads,
                                                       std::map<std::string, Tensor>& parameters) {
  AttentionGradients g;
  if (config_.kernel == AttentionKernel::softmax) {
    if (config_.positions == AttentionPositions::shaw) {
      ShawGradients sg = shaw_attention_backward(grad_heads, s.q, s.k, s.v, shaw_positions(),
                                                 {s.attention, s.value_weights}, s.options);
      parameters["relative_key"] = sg.grad_key;
      parameters["relative_value"] = sg.grad_value;
      g = std::move(sg.attention);
    } else {
      g = attention_backward(grad_heads, s.q, s.k, s.v, s.attention, s.options);
      if (config_.positions == AttentionPositions::t5)
        parameters["relative_attention_bias.weight"] = g.grad_score_mod.at(0);
    }
  } else {
    const Tensor q = swap_heads(s.q), k = swap_heads(s.k), v = swap_heads(s.v);
    const Tensor go = swap_heads(grad_heads);
    if (config_.kernel == AttentionKernel::linformer) {
      const AttentionResult forward{swap_heads(s.attention.output), s.attention.lse};
      const LinformerGradients lg = linformer_attention_backward(go, q, k, v, weight("linformer_e"),
                                                                 weight("linformer_f"), forward);
      parameters["linformer_e"] = lg.grad_e;
      parameters["linformer_f"] = lg.grad_f;
      g = {lg.grad_q, lg.grad_k, lg.grad_v};
    } else {
      const LinearAttentionOptions lo =
          detail::linear_kernel_options(config_, s.options, false, "MultiHeadAttention");
      const LinearAttentionGradients lg =
          config_.kernel == AttentionKernel::linear
              ? linear_attention_backward(go, q, k, v, lo)
              : performer_attention_backward(go, q, k, v, performer_projection_, lo);
      g = {lg.grad_q, lg.grad_k, lg.grad_v};
    }
    g.grad_q = swap_heads(g.grad_q);
    g.grad_k = swap_heads(g.grad_k);
    g.grad_v = swap_heads(g.grad_v);
  }
  if (config_.positions == AttentionPositions::rotary) {
    const RotaryOptions r = detail::rotary_for_heads(config_.rotary);
    g.grad_q = rotary_embedding_backward(g.grad_q, r);
    g.grad_k = rotary_embedding_backward(g.grad_k, r);
  }
  return g;
}

ShawPositions MultiHeadAttention::shaw_positions() const {
  return {.key = weight("relative_key"),
          .value = weight("relative_value"),
          .max_distance = config_.shaw_max_distance};
}

void MultiHeadAttention::to(DType dtype) {
  QKV_CHECK(is_floating(dtype), "MultiHeadAttention.to: ", dtype_name(dtype),
            " is not a float dtype (f32, f64, bf16, f16)");
  for (auto& [name, p] : parameters_) p = p.to(dtype);
  if (performer_projection_.defined()) performer_projection_ = performer_projection_.to(dtype);
}

void MultiHeadAttention::load_state_dict(const std::map<std::string, Tensor>& state) {
  detail::load_state_dict("MultiHeadAttention", parameters_, state, /*strict=*/true);
}

MultiHeadAttentionOutput MultiHeadAttention::forward(const MultiHeadAttentionInputs& in) {
  const int64_t e = config_.embed_dim, h = config_.num_heads, dh = e / h;
  const char* op = "MultiHeadAttention";
  for (const auto& [t, name, dim] :
       {std::tuple{&in.query, "query", e}, std::tuple{&in.key, "key", config_.kdim},
        std::tuple{&in.value, "value", config_.vdim}}) {
    QKV_CHECK(t->defined() && t->dim() == 3 && t->size(2) == dim, op, ": argument ", name,
              " must be 3-D ", config_.batch_first ? "[B, L, " : "[L, B, ", dim, "], got ",
              t->defined() ? shape_string(t->shape()) : "undefined");
  }
  const int bdim = config_.batch_first ? 0 : 1;
  const int64_t batch = in.query.size(bdim), lq = in.query.size(1 - bdim),
                lk = in.key.size(1 - bdim);
  QKV_CHECK(
      in.key.size(bdim) == batch && in.value.size(bdim) == batch && in.value.size(1 - bdim) == lk,
      op, ": query ", shape_string(in.query.shape()), ", key ", shape_string(in.key.shape()),
      " and value ", shape_string(in.value.shape()), " disagree on batch or length");

  const Tensor in_bias = config_.bias ? weight("in_proj_bias") : Tensor();
  auto proj = [&](int which, const Tensor& x, const char* separate) {
    const Tensor w = parameters_.count(separate) ? weight(separate)
                                                 : weight("in_proj_weight").narrow(0, which * e, e);
    const Tensor b = in_bias.defined() ? in_bias.narrow(0, which * e, e) : Tensor();
    // [L0 * L1, E] -> [L0, L1, H, Dh] -> [B, L, H, Dh] (a view either way).
    const Tensor y = linear(rows(x), w, b).view({x.size(0), x.size(1), h, dh});
    return config_.batch_first ? y : y.transpose(0, 1);
  };
  Saved s;
  s.inputs = in;
  s.q = proj(0, in.query, "q_proj_weight");
  s.k = proj(1, in.key, "k_proj_weight");
  s.v = proj(2, in.value, "v_proj_weight");

  s.options.layout = AttentionLayout::blhd;
  s.options.causal = in.is_causal ? Causal::top_left : Causal::none;
  if (in.attn_mask.defined()) {
    Tensor mask = in.attn_mask;
    if (mask.dim() == 3) mask = mask.reshape({batch, h, lq, lk});
    s.options.mask = mask.dtype() == DType::boolean ? logical_not(mask) : mask;
  }
  s.options.key_padding_mask = in.key_padding_mask;
  if (training_ && config_.dropout > 0) {
    s.options.dropout = config_.dropout;
    s.options.dropout_seed = dropout_generator_.next_u64();
  }
  s.options.return_lse = true;
  attend(s, in.need_weights);

  // [B, Lq, H, Dh] -> rows in the query's order -> output projection.
  const Tensor heads =
      config_.batch_first ? s.attention.output : s.attention.output.transpose(0, 1);
  MultiHeadAttentionOutput out;
  out.output = linear(heads.reshape({-1, e}), weight("out_proj.weight"),
                      config_.bias ? weight("out_proj.bias") : Tensor())
                   .view(in.query.shape());
  if (in.need_weights)
    out.weights = in.average_attn_weights ? mean(s.attention.weights, 1) : s.attention.weights;
  s.attention.weights = Tensor();
  s.options.weights_heads.clear();
  saved_ = std::move(s);
  has_saved_ = true;
  return out;
}

MultiHeadAttentionGradients MultiHeadAttention::backward(const Tensor& grad_output) {
  QKV_CHECK(has_saved_, "MultiHeadAttention.backward: call forward() first");
  const Saved& s = saved_;
  QKV_CHECK(grad_output.defined() && grad_output.shape() == s.inputs.query.shape(),
            "MultiHeadAttention.backward: argument grad_output has shape ",
            grad_output.defined() ? shape_string(grad_output.shape()) : "undefined",
            "; expected the output's shape ", shape_string(s.inputs.query.shape()));
  const int64_t e = config_.embed_dim, h = config_.num_heads, dh = e / h;
  MultiHeadAttentionGradients g;

  const Tensor heads =
      config_.batch_first ? s.attention.output : s.attention.output.transpose(0, 1);
  const Tensor heads_rows = heads.reshape({-1, e});
  const DType dtype = heads_rows.dtype();  // f32, or f64 after to(DType::f64)
  const LinearGrads out = linear_backward(rows(grad_output.to(dtype)), heads_rows,
                                          weight("out_proj.weight"), config_.bias);
  g.parameters["out_proj.weight"] = out.weight;
  if (config_.bias) g.parameters["out_proj.bias"] = out.bias;

  // d(attention output), back in [B, Lq, H, Dh].
  const Tensor& q_in = s.inputs.query;
  Tensor grad_heads = out.input.view({q_in.size(0), q_in.size(1), h, dh});
  if (!config_.batch_first) grad_heads = grad_heads.transpose(0, 1);
  const AttentionGradients ga = attend_backward(s, grad_heads, g.parameters);

  const bool packed = parameters_.count("in_proj_weight") > 0;
  if (packed) g.parameters["in_proj_weight"] = Tensor::zeros({3 * e, e}, dtype);
  if (config_.bias) g.parameters["in_proj_bias"] = Tensor::zeros({3 * e}, dtype);
  auto input_grad = [&](int which, const Tensor& grad_bl, const Tensor& x, const char* separate) {
    const Tensor w = packed ? weight("in_proj_weight").narrow(0, which * e, e) : weight(separate);
    // [B, L, H, Dh] -> rows in x's order.
    const Tensor grad = rows((config_.batch_first ? grad_bl : grad_bl.transpose(0, 1))
                                 .reshape({x.size(0), x.size(1), e}));
    const LinearGrads lg = linear_backward(grad, rows(x).to(dtype), w, config_.bias);
    if (packed)
      g.parameters["in_proj_weight"].narrow(0, which * e, e).copy_(lg.weight);
    else
      g.parameters[separate] = lg.weight;
    if (config_.bias) g.parameters["in_proj_bias"].narrow(0, which * e, e).copy_(lg.bias);
    return lg.input.view(x.shape());
  };
  g.query = input_grad(0, ga.grad_q, s.inputs.query, "q_proj_weight");
  g.key = input_grad(1, ga.grad_k, s.inputs.key, "k_proj_weight");
  g.value = input_grad(2, ga.grad_v, s.inputs.value, "v_proj_weight");
  return g;
}

}  // namespace qkv::nn
