// MultiHeadAttention: torch.nn.MultiheadAttention's parameters and results
// (Vaswani et al. 2017, sec. 3.2.2), with the projections reshaped into head
// views (no copies) for the fused attention, and an explicit backward.
#include <cmath>
#include <sstream>

#include "qkv/matmul.h"
#include "qkv/nn.h"
#include "qkv/ops.h"

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
Tensor rows(const Tensor& x) { return x.reshape({-1, x.size(-1)}); }

}  // namespace

MultiHeadAttention::MultiHeadAttention(const MultiHeadAttentionConfig& config, Generator& generator)
    : config_(config) {
  const int64_t e = config.embed_dim, h = config.num_heads;
  QKV_CHECK(e > 0 && h > 0 && e % h == 0, "MultiHeadAttention: embed_dim ", e,
            " must be a positive multiple of num_heads ", h);
  QKV_CHECK(config.dropout >= 0 && config.dropout < 1, "MultiHeadAttention: dropout must be in [0, 1), got ",
            config.dropout);
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
  parameters_["out_proj.weight"] = uniform({e, e}, 1.0 / std::sqrt(static_cast<double>(e)), generator);
  if (config.bias) {
    parameters_["in_proj_bias"] = Tensor::zeros({3 * e});
    parameters_["out_proj.bias"] = Tensor::zeros({e});
  }
  dropout_generator_ = Generator(generator.next_u64());
}

void MultiHeadAttention::load_state_dict(const std::map<std::string, Tensor>& state) {
  std::ostringstream missing, unexpected, mismatched;
  for (const auto& [name, t] : parameters_) {
    auto it = state.find(name);
    if (it == state.end()) missing << " " << name;
    else if (it->second.shape() != t.shape())
      mismatched << " " << name << " (" << shape_string(it->second.shape()) << " vs "
                 << shape_string(t.shape()) << ")";
  }
  for (const auto& [name, t] : state)
    if (!parameters_.count(name)) unexpected << " " << name;
  QKV_CHECK(missing.str().empty() && unexpected.str().empty() && mismatched.str().empty(),
            "MultiHeadAttention.load_state_dict: missing keys:", missing.str(),
            "; unexpected keys:", unexpected.str(), "; size mismatch:", mismatched.str());
  for (auto& [name, t] : parameters_) t.copy_(state.at(name));
}

MultiHeadAttentionOutput MultiHeadAttention::forward(const MultiHeadAttentionInputs& in) {
  const int64_t e = config_.embed_dim, h = config_.num_heads, dh = e / h;
  const char* op = "MultiHeadAttention";
  for (const auto& [t, name, dim] : {std::tuple{&in.query, "query", e},
                                     std::tuple{&in.key, "key", config_.kdim},
                                     std::tuple{&in.value, "value", config_.vdim}}) {
    QKV_CHECK(t->defined() && t->dim() == 3 && t->size(2) == dim, op, ": argument ", name,
              " must be 3-D ", config_.batch_first ? "[B, L, " : "[L, B, ", dim,
              "], got ", t->defined() ? shape_string(t->shape()) : "undefined");
  }
  const int bdim = config_.batch_first ? 0 : 1;
  const int64_t batch = in.query.size(bdim), lq = in.query.size(1 - bdim),
                lk = in.key.size(1 - bdim);
  QKV_CHECK(in.key.size(bdim) == batch && in.value.size(bdim) == batch &&
                in.value.size(1 - bdim) == lk,
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
  if (in.need_weights)
    for (int64_t i = 0; i < h; ++i) s.options.weights_heads.push_back(i);
  s.attention = attention(s.q, s.k, s.v, s.options);

  // [B, Lq, H, Dh] -> rows in the query's order -> output projection.
  const Tensor heads = config_.batch_first ? s.attention.output : s.attention.output.transpose(0, 1);
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

  const Tensor heads = config_.batch_first ? s.attention.output : s.attention.output.transpose(0, 1);
  const Tensor heads_rows = heads.reshape({-1, e});
  const LinearGrads out = linear_backward(rows(grad_output.to(DType::f32)), heads_rows,
                                          weight("out_proj.weight"), config_.bias);
  g.parameters["out_proj.weight"] = out.weight;
  if (config_.bias) g.parameters["out_proj.bias"] = out.bias;

  // d(attention output), back in [B, Lq, H, Dh].
  const Tensor& q_in = s.inputs.query;
  Tensor grad_heads = out.input.view({q_in.size(0), q_in.size(1), h, dh});
  if (!config_.batch_first) grad_heads = grad_heads.transpose(0, 1);
  const AttentionGradients ga = attention_backward(grad_heads, s.q, s.k, s.v, s.attention, s.options);

  const bool packed = parameters_.count("in_proj_weight") > 0;
  if (packed) g.parameters["in_proj_weight"] = Tensor::zeros({3 * e, e});
  if (config_.bias) g.parameters["in_proj_bias"] = Tensor::zeros({3 * e});
  auto input_grad = [&](int which, const Tensor& grad_bl, const Tensor& x, const char* separate) {
    const Tensor w = packed ? weight("in_proj_weight").narrow(0, which * e, e) : weight(separate);
    // [B, L, H, Dh] -> rows in x's order.
    const Tensor grad = rows((config_.batch_first ? grad_bl : grad_bl.transpose(0, 1))
                                 .reshape({x.size(0), x.size(1), e}));
    const LinearGrads lg = linear_backward(grad, rows(x).to(DType::f32), w, config_.bias);
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
