// Multi-head attention, the encoder and decoder layers, their stacks and the
// encoder-decoder Transformer, as torch.nn defines them (torch/nn/modules/
// activation.py and transformer.py): the same names, forward order and masks.
#include <limits>
#include <string>

#include "nn/attention_variant.h"
#include "nn/init.h"
#include "qkv/layers.h"

namespace qkv::nn {

using autograd::Variable;

namespace {

// torch's bool masks are true where attention is NOT allowed; qkv's are true
// where it is.
Tensor logical_not(const Tensor& mask) {
  const Tensor in = mask.contiguous();
  Tensor out = Tensor::empty(mask.shape(), DType::boolean);
  for (int64_t i = 0; i < in.numel(); ++i) out.data<bool>()[i] = !in.data<bool>()[i];
  return out;
}

// torch's _canonical_mask: a bool mask (true = not allowed) as -inf / 0; a
// float mask unchanged.
Tensor additive(const Tensor& mask) {
  if (mask.dtype() != DType::boolean) return mask.to(DType::f32);
  const Tensor in = mask.contiguous();
  Tensor out = Tensor::zeros(mask.shape());
  for (int64_t i = 0; i < in.numel(); ++i)
    if (in.data<bool>()[i]) out.data<float>()[i] = -std::numeric_limits<float>::infinity();
  return out;
}

LayerNormConfig norm_config(const TransformerLayerConfig& c) {
  return {.dim = c.d_model, .eps = c.layer_norm_eps, .bias = c.bias};
}

// The self- and cross-attention of both layer kinds.
AttentionConfig attention_config(const TransformerLayerConfig& c) {
  return {.embed_dim = c.d_model,
          .num_heads = c.nhead,
          .dropout = c.dropout,
          .bias = c.bias,
          .batch_first = c.batch_first};
}

// The self-attention's: the same, with the layer's variant.
AttentionConfig self_attention_config(const TransformerLayerConfig& c) {
  AttentionConfig a = attention_config(c);
  static_cast<AttentionVariant&>(a) = c.self_attention;
  return a;
}

void check_layer_config(const char* op, const TransformerLayerConfig& c) {
  QKV_CHECK(c.activation == Activation::relu || c.activation == Activation::gelu, op,
            ": activation must be relu or gelu, got ", activation_name(c.activation));
  QKV_CHECK(c.dim_feedforward > 0, op, ": dim_feedforward must be positive, got ",
            c.dim_feedforward);
}

Variable activate(Activation a, const Variable& x) {
  return a == Activation::gelu ? autograd::gelu(x) : autograd::relu(x);
}

// Both layers' position-wise feed-forward: linear2(dropout(activation(linear1(x)))).
Variable feed_forward(Activation a, Linear& linear1, Dropout& dropout, Linear& linear2,
                      const Variable& x) {
  return linear2.forward(dropout.forward(activate(a, linear1.forward(x))));
}

// Batched inputs only: [B, L, E] or [L, B, E].
void check_sequence(const char* op, const char* argument, const Variable& x, int64_t d_model,
                    bool batch_first) {
  detail::check_features(op, argument, x.value(), "d_model", d_model, 3);
  QKV_CHECK(x.dim() == 3, op, ": ", argument, " has shape ", shape_string(x.shape()),
            "; expected 3-D ", batch_first ? "[B, L, " : "[L, B, ", d_model, "]");
}

}  // namespace

// ---- Attention ---------------------------------------------------------------

AttentionNames AttentionNames::torch() {
  return {.packed_weight = "in_proj_weight",
          .packed_bias = "in_proj_bias",
          .query_weight = "q_proj_weight",
          .key_weight = "k_proj_weight",
          .value_weight = "v_proj_weight",
          .output = "out_proj"};
}

AttentionNames AttentionNames::nanogpt() {
  return {.packed_weight = "c_attn.weight", .packed_bias = "c_attn.bias", .output = "c_proj"};
}

AttentionNames AttentionNames::bert() {
  return {.query_weight = "self.query.weight",
          .query_bias = "self.query.bias",
          .key_weight = "self.key.weight",
          .key_bias = "self.key.bias",
          .value_weight = "self.value.weight",
          .value_bias = "self.value.bias",
          .output = "output.dense"};
}

AttentionCache::AttentionCache(int64_t batch, int64_t heads, int64_t capacity, int64_t head_dim) {
  QKV_CHECK(batch > 0 && heads > 0 && capacity > 0 && head_dim > 0,
            "AttentionCache: batch, heads, capacity and head_dim must be positive, got ", batch,
            ", ", heads, ", ", capacity, " and ", head_dim);
  keys_ = Tensor::empty({batch, heads, capacity, head_dim});
  values_ = Tensor::empty({batch, heads, capacity, head_dim});
}

std::pair<Tensor, Tensor> AttentionCache::append(const Tensor& k, const Tensor& v, const char* op) {
  QKV_CHECK(keys_.defined(), op, ": the cache is empty (made without sizes)");
  const Shape expected{batch(), k.defined() ? k.size(1) : 0, heads(), head_dim()};
  QKV_CHECK(k.defined() && v.defined() && k.shape() == expected && v.shape() == expected, op,
            ": keys ", k.defined() ? shape_string(k.shape()) : "undefined", " and values ",
            v.defined() ? shape_string(v.shape()) : "undefined", " do not fit the cache's [B ",
            batch(), ", T, H ", heads(), ", Dh ", head_dim(), "]");
  const int64_t t = k.size(1), end = length_ + t;
  QKV_CHECK(end <= capacity(), op, ": ", t, " new positions after ", length_,
            " cached pass the cache's capacity ", capacity());
  keys_.narrow(2, length_, t).copy_(k.permute({0, 2, 1, 3}));
  values_.narrow(2, length_, t).copy_(v.permute({0, 2, 1, 3}));
  length_ = end;
  return {keys_.narrow(2, 0, end), values_.narrow(2, 0, end)};
}

std::pair<Tensor, Tensor> AttentionCache::contents() const {
  QKV_CHECK(keys_.defined(), "AttentionCache: the cache is empty (made without sizes)");
  return {keys_.narrow(2, 0, length_), values_.narrow(2, 0, length_)};
}

KVCache::KVCache(int64_t layers, int64_t batch, int64_t heads, int64_t capacity,
                 int64_t head_dim) {
  QKV_CHECK(layers > 0, "KVCache: layers must be positive, got ", layers);
  for (int64_t l = 0; l < layers; ++l) layers_.emplace_back(batch, heads, capacity, head_dim);
}

void KVCache::clear() {
  for (AttentionCache& layer : layers_) layer.clear();
}

void DecoderCache::clear() {
  self_.clear();
  for (AttentionCache& layer : cross_) layer.clear();
}

Attention::Attention(const AttentionConfig& config, Generator& generator) : config_(config) {
  const char* op = "MultiheadAttention";
  const int64_t e = config.embed_dim, h = config.num_heads;
  QKV_CHECK(e > 0 && h > 0 && e % h == 0, op, ": embed_dim ", e,
            " must be a positive multiple of num_heads ", h);
  QKV_CHECK(config.dropout >= 0 && config.dropout < 1, op, ": dropout must be in [0, 1), got ",
            config.dropout);
  if (config_.kdim == 0) config_.kdim = e;
  if (config_.vdim == 0) config_.vdim = e;
  const AttentionNames& names = config_.names;
  const bool torch_init = config.init == AttentionInit::torch;
  // torch's _reset_parameters: Xavier-uniform projections (the packed one as
  // one [3E, E] matrix), zero biases; out_proj keeps Linear's weight init.
  auto weight = [&](const Shape& shape) {
    return torch_init ? detail::uniform(shape, detail::xavier_bound(shape), generator)
                      : Tensor::empty(shape);
  };
  auto bias = [&](int64_t n) { return torch_init ? Tensor::zeros({n}) : Tensor::empty({n}); };
  const bool packed_bias = config.bias && !names.packed_bias.empty();
  if (!names.packed_weight.empty() && config_.kdim == e && config_.vdim == e) {
    in_proj_weight_ = register_parameter(names.packed_weight, weight({3 * e, e}));
  } else {
    const std::string* weight_names[] = {&names.query_weight, &names.key_weight,
                                         &names.value_weight};
    const std::string* bias_names[] = {&names.query_bias, &names.key_bias, &names.value_bias};
    const int64_t in[] = {e, config_.kdim, config_.vdim};
    for (int i = 0; i < 3; ++i) {
      const bool has_bias_name = packed_bias || !config.bias || !bias_names[i]->empty();
      QKV_CHECK(!weight_names[i]->empty() && has_bias_name, op,
                ": these parameter names have no separate projections (kdim ", config_.kdim,
                ", vdim ", config_.vdim, ", embed_dim ", e, ")");
      separate_weight_[i] = register_parameter(*weight_names[i], weight({e, in[i]}));
      if (config.bias && !packed_bias)
        separate_bias_[i] = register_parameter(*bias_names[i], bias(e));
    }
  }
  if (packed_bias) in_proj_bias_ = register_parameter(names.packed_bias, bias(3 * e));
  const LinearConfig out{e, e, config.bias};
  out_proj_ = register_module(names.output, torch_init ? std::make_shared<Linear>(out, generator)
                                                       : std::make_shared<Linear>(out));
  if (torch_init) {
    if (config.bias) {
      Tensor b = out_proj_->bias().value();
      b.copy_(Tensor::zeros({e}));
    }
    dropout_generator_ = Generator(generator.next_u64());
  }
  detail::VariantTensors variant = detail::make_variant(config_, e, h, config_.vdim, generator, op);
  for (auto& [name, t] : variant.learned) variant_[name] = register_parameter(name, std::move(t));
  performer_projection_ = std::move(variant.performer_projection);
}

void Attention::redraw_features(uint64_t seed) {
  performer_projection_ =
      detail::redraw_performer_features(config_, config_.embed_dim / config_.num_heads, seed,
                                        "MultiheadAttention.redraw_features");
}

std::optional<RotaryOptions> Attention::head_rotary() const {
  if (config_.positions != AttentionPositions::rotary) return std::nullopt;
  return detail::rotary_for_heads(config_.rotary);
}

void Attention::add_modifiers(AttentionOptions& o) const {
  o.mask_mod = config_.mask_mod;
  o.score_mod = detail::fixed_score_mod(config_, config_.num_heads);
}

bool Attention::packed_op() const {
  const AttentionPositions p = config_.positions;
  return config_.kernel == AttentionKernel::softmax &&
         (p == AttentionPositions::none || p == AttentionPositions::rotary ||
          p == AttentionPositions::alibi);
}

void Attention::set_dropout(AttentionOptions& o, const std::optional<uint64_t>& seed) {
  if (!training() || config_.dropout == 0) return;
  if (!seed && !dropout_generator_) return;  // a model-driven layer drops only when given a seed
  o.dropout = config_.dropout;
  o.dropout_seed = seed ? *seed : dropout_generator_->next_u64();
}

AttentionOptions Attention::mask_options(const AttentionMasks& masks, int64_t batch, int64_t lq,
                                         int64_t lk) const {
  const char* op = "MultiheadAttention";
  const int64_t h = config_.num_heads;
  AttentionOptions o;
  o.layout = AttentionLayout::blhd;
  o.causal = masks.is_causal ? Causal::top_left : Causal::none;
  Tensor attn = masks.attn_mask;
  const Tensor& padding = masks.key_padding_mask;
  if (attn.defined()) {
    const bool ok =
        (attn.dim() == 2 && attn.size(0) == lq && attn.size(1) == lk) ||
        (attn.dim() == 3 && attn.size(0) == batch * h && attn.size(1) == lq && attn.size(2) == lk);
    QKV_CHECK(ok, op, ": attn_mask has shape ", shape_string(attn.shape()), "; expected [", lq,
              ", ", lk, "] or [", batch * h, ", ", lq, ", ", lk, "] (B * num_heads, Lq, Lk)");
    if (attn.dim() == 3) attn = attn.reshape({batch, h, lq, lk});
  }
  if (padding.defined())
    QKV_CHECK(padding.dim() == 2 && padding.size(0) == batch && padding.size(1) == lk, op,
              ": key_padding_mask has shape ", shape_string(padding.shape()), "; expected [", batch,
              ", ", lk, "]");
  const bool bool_masks = (!attn.defined() || attn.dtype() == DType::boolean) &&
                          (!padding.defined() || padding.dtype() == DType::boolean);
  if (bool_masks) {
    if (attn.defined()) o.mask = logical_not(attn);
    o.key_padding_mask = padding;
  } else {
    // A float mask: both as one additive bias, as torch merges them.
    if (attn.defined()) o.mask = additive(attn);
    if (padding.defined()) {
      const Tensor p = additive(padding).view({batch, 1, 1, lk});
      o.mask = o.mask.defined() ? add(o.mask, p) : p;
    }
  }
  return o;
}

Variable Attention::attend(const Variable& q_in, const Variable& k_in, const Variable& v,
                           AttentionOptions o, Tensor* weights) {
  const AttentionVariant& variant = config_;
  const int64_t h = config_.num_heads;
  Variable q = q_in, k = k_in;
  if (const auto r = head_rotary()) {
    q = autograd::rotary_embedding(q, *r);
    k = autograd::rotary_embedding(k, *r);
  }
  auto learned = [&](const char* name) { return variant_.at(name); };
  if (variant.kernel == AttentionKernel::softmax) {
    add_modifiers(o);
    const bool t5 = variant.positions == AttentionPositions::t5;
    const bool shaw = variant.positions == AttentionPositions::shaw;
    const T5BiasOptions t5_options = detail::t5_for_heads(variant.t5);
    if (weights != nullptr) {  // values only (the caller holds a NoGradGuard)
      for (int64_t i = 0; i < h; ++i) o.weights_heads.push_back(i);
      if (t5) o.score_mod = t5_bias_score(learned("relative_attention_bias.weight").value(), t5_options);
      const ShawPositions positions{.key = shaw ? learned("relative_key").value() : Tensor(),
                                    .value = shaw ? learned("relative_value").value() : Tensor(),
                                    .max_distance = variant.shaw_max_distance};
      *weights = shaw ? shaw_attention(q.value(), k.value(), v.value(), positions, o).attention.weights
                      : attention(q.value(), k.value(), v.value(), o).weights;
      return {};
    }
    if (t5)
      return autograd::t5_attention(q, k, v, learned("relative_attention_bias.weight"), t5_options,
                                    o);
    if (shaw)
      return autograd::shaw_attention(q, k, v, learned("relative_key"), learned("relative_value"),
                                      variant.shaw_max_distance, o);
    return autograd::attention(q, k, v, o);
  }
  // The linear kernels take [B, H, L, Dh]: swapped views both ways.
  const LinearAttentionOptions lo =
      detail::linear_kernel_options(variant, o, weights != nullptr, "MultiheadAttention");
  auto swap = [](const Variable& x) { return autograd::transpose(x, 1, 2); };
  Variable heads;
  if (variant.kernel == AttentionKernel::linformer)
    heads = autograd::linformer_attention(swap(q), swap(k), swap(v), learned("linformer_e"),
                                          learned("linformer_f"));
  else if (variant.kernel == AttentionKernel::linear)
    heads = autograd::linear_attention(swap(q), swap(k), swap(v), lo);
  else
    heads = autograd::performer_attention(swap(q), swap(k), swap(v), performer_projection_, lo);
  return swap(heads);
}

Variable Attention::forward(const Variable& query, const Variable& key, const Variable& value,
                            const AttentionMasks& masks) {
  return run(query, key, value, masks, false, false).output;
}

Attention::WithWeights Attention::forward_with_weights(const Variable& query, const Variable& key,
                                                       const Variable& value,
                                                       const AttentionMasks& masks,
                                                       bool average_attn_weights) {
  return run(query, key, value, masks, true, average_attn_weights);
}

Attention::WithWeights Attention::run(const Variable& query, const Variable& key,
                                      const Variable& value, const AttentionMasks& masks,
                                      bool want_weights, bool average,
                                      const std::optional<uint64_t>& dropout_seed) {
  const char* op = "MultiheadAttention";
  const int64_t e = config_.embed_dim;
  const bool bf = config_.batch_first;
  check_sequence(op, "query", query, e, bf);
  detail::check_features(op, "key", key.value(), "kdim", config_.kdim, 3);
  detail::check_features(op, "value", value.value(), "vdim", config_.vdim, 3);
  const int bdim = bf ? 0 : 1;
  const int64_t batch = query.size(bdim), lq = query.size(1 - bdim), lk = key.size(1 - bdim);
  QKV_CHECK(key.dim() == 3 && value.dim() == 3 && key.size(bdim) == batch &&
                value.size(bdim) == batch && value.size(1 - bdim) == lk,
            op, ": query ", shape_string(query.shape()), ", key ", shape_string(key.shape()),
            " and value ", shape_string(value.shape()), " disagree on batch or length");

  // [L0, L1, E] -> [L0, L1, H, Dh] -> [B, L, H, Dh] (views).
  auto heads_of = [&](int which, const Variable& x) {
    const Variable y = project(which, x);
    return bf ? y : autograd::transpose(y, 0, 1);
  };
  const Variable q = heads_of(0, query), k = heads_of(1, key), v = heads_of(2, value);

  AttentionOptions o = mask_options(masks, batch, lq, lk);
  WithWeights out;
  if (want_weights) {
    autograd::NoGradGuard no_grad;
    Tensor weights;
    attend(q, k, v, o, &weights);
    out.weights = average ? mean(weights, 1) : weights;
  }
  set_dropout(o, dropout_seed);
  // [B, Lq, H, Dh] -> rows in the query's order [L0, L1, E] -> out_proj.
  Variable heads = attend(q, k, v, o, nullptr);
  if (!bf) heads = autograd::transpose(heads, 0, 1);
  out.output = out_proj_->forward(autograd::reshape(heads, {query.size(0), query.size(1), e}));
  return out;
}

Variable Attention::project(int which, const Variable& x) const {
  // x W_i^T + b_i, W_i rows [i E, (i + 1) E) of the packed weight or the separate one.
  const int64_t e = config_.embed_dim, h = config_.num_heads;
  const Variable w = in_proj_weight_.defined() ? autograd::narrow(in_proj_weight_, 0, which * e, e)
                                               : separate_weight_[which];
  return autograd::reshape(autograd::linear(x, w, input_bias(which)),
                           {x.size(0), x.size(1), h, e / h});
}

void Attention::check_cacheable(const char* op, const AttentionCall& call) const {
  const AttentionVariant& variant = config_;
  QKV_CHECK(!autograd::grad_enabled(), op,
            ": the KV cache path records no gradient; call it under NoGradGuard");
  QKV_CHECK(variant.kernel == AttentionKernel::softmax && !variant.mask_mod &&
                (variant.positions == AttentionPositions::none ||
                 variant.positions == AttentionPositions::rotary),
            op, ": a KV cache serves the softmax kernel with no or rotary positions and no "
                "mask_mod; this layer's kernel is ",
            name_of(kAttentionKernelNames, variant.kernel));
  QKV_CHECK(call.weights == nullptr, op, ": a call with a KV cache returns no weights");
}

Tensor Attention::attend_cached(const Tensor& q, const Tensor& keys, const Tensor& values,
                                const AttentionMasks& masks) const {
  const int64_t l = q.size(1);
  AttentionOptions o = mask_options(masks, q.size(0), l, keys.size(2));
  o.layout = AttentionLayout::bhld;
  o.causal = masks.is_causal && l > 1 ? Causal::bottom_right : Causal::none;
  return attention(q.permute({0, 2, 1, 3}), keys, values, o).output.permute({0, 2, 1, 3});
}

Variable Attention::input_bias(int which) const {
  const int64_t e = config_.embed_dim;
  return in_proj_bias_.defined() ? autograd::narrow(in_proj_bias_, 0, which * e, e)
                                 : separate_bias_[which];
}

Variable Attention::forward(const Variable& x, const AttentionCall& call) {
  const char* op = "MultiheadAttention";
  const int64_t e = config_.embed_dim, h = config_.num_heads, dh = e / h;
  const bool bf = config_.batch_first;
  check_sequence(op, "x", x, e, bf);
  QKV_CHECK(config_.kdim == e && config_.vdim == e, op,
            ": self-attention needs kdim and vdim equal to embed_dim ", e, ", got ", config_.kdim,
            " and ", config_.vdim);
  const Variable in = bf ? x : autograd::transpose(x, 0, 1);  // [B, L, E]
  const int64_t b = in.size(0), l = in.size(1);

  // The input projection: one [B, L, 3E] product when the weight is packed.
  Variable packed, q, k, v;  // q, k, v: [B, L, H, Dh] views the fused kernel reads in place
  if (in_proj_weight_.defined()) {
    packed = autograd::linear(in, in_proj_weight_, in_proj_bias_);
  } else if (!autograd::grad_enabled() && autograd::autocast_enabled()) {
    // bf16 inference: the three weights stacked [3E, E] and converted to bf16
    // in one copy (autocast would convert each per call anyway), one product,
    // its output converted once for the attention: 3% faster on
    // all-MiniLM-L6-v2 at batch 32. (In f32 the stacking copy costs more than
    // the single product saves at batch 1.)
    Tensor w = Tensor::empty({3 * e, e}, DType::bf16), bias;
    if (config_.bias) bias = Tensor::empty({3 * e});
    for (int i = 0; i < 3; ++i) {
      w.narrow(0, i * e, e).copy_(separate_weight_[i].value());
      if (bias.defined()) bias.narrow(0, i * e, e).copy_(input_bias(i).value());
    }
    packed = autograd::to(autograd::linear(in, Variable(w), Variable(bias)), DType::bf16);
  } else {
    q = project(0, in), k = project(1, in), v = project(2, in);
  }
  auto split = [&] {
    if (q.defined()) return;
    const Variable y = autograd::reshape(packed, {b, l, 3, h, dh});
    q = autograd::select(y, 2, 0), k = autograd::select(y, 2, 1), v = autograd::select(y, 2, 2);
  };

  Variable heads;  // [B, L, H, Dh]
  if (call.cache) {
    // Decoding: this call's keys and values join the cache's.
    check_cacheable(op, call);
    split();
    Tensor qt = q.value(), kt = k.value();
    if (auto r = head_rotary()) {
      r->offset = call.cache->length();
      qt = rotary_embedding(qt, *r), kt = rotary_embedding(kt, *r);
    }
    const auto [keys, values] = call.cache->append(kt, v.value(), op);
    heads = Variable(attend_cached(qt, keys, values, call.masks));
  } else {
    AttentionOptions o = mask_options(call.masks, b, l, l);
    if (call.weights) {
      autograd::NoGradGuard no_grad;
      split();
      attend(q, k, v, o, call.weights);
    }
    set_dropout(o, call.dropout_seed);
    if (packed.defined() && packed_op()) {
      add_modifiers(o);
      heads = autograd::packed_self_attention(packed, h, head_rotary(), o);
    } else {
      split();
      heads = attend(q, k, v, o, nullptr);
    }
  }
  const Variable y = out_proj_->forward(autograd::reshape(heads, {b, l, e}));
  return bf ? y : autograd::transpose(y, 0, 1);
}

Variable Attention::forward(const Variable& query, const Variable& memory,
                            const AttentionCall& call) {
  if (!call.cache) {
    WithWeights out =
        run(query, memory, memory, call.masks, call.weights != nullptr, false, call.dropout_seed);
    if (call.weights) *call.weights = out.weights;
    return out.output;
  }
  const char* op = "MultiheadAttention";
  const int64_t e = config_.embed_dim, h = config_.num_heads;
  const bool bf = config_.batch_first;
  check_cacheable(op, call);
  QKV_CHECK(config_.positions == AttentionPositions::none, op,
            ": cross-attention with a cache takes no positions");
  check_sequence(op, "query", query, e, bf);
  const Variable q_in = bf ? query : autograd::transpose(query, 0, 1);  // [B, Lq, E]
  const int64_t b = q_in.size(0), l = q_in.size(1);
  AttentionCache& cache = *call.cache;
  if (cache.length() == 0) {
    QKV_CHECK(memory.defined(), op, ": the first call with an empty cache needs the memory");
    detail::check_features(op, "memory", memory.value(), "kdim", config_.kdim, 3);
    QKV_CHECK(config_.kdim == config_.vdim, op, ": memory is both key and value, but kdim ",
              config_.kdim, " != vdim ", config_.vdim);
    const Variable m = bf ? memory : autograd::transpose(memory, 0, 1);  // [B, Ls, kdim]
    QKV_CHECK(m.size(0) == b, op, ": query ", shape_string(query.shape()), " and memory ",
              shape_string(memory.shape()), " disagree on the batch size");
    if (cache.capacity() == 0) cache = AttentionCache(b, h, m.size(1), e / h);
    cache.append(project(1, m).value(), project(2, m).value(), op);
  }
  const auto [keys, values] = cache.contents();
  const Tensor heads = attend_cached(project(0, q_in).value(), keys, values, call.masks);
  const Variable y = out_proj_->forward(Variable(heads.reshape({b, l, e})));
  return bf ? y : autograd::transpose(y, 0, 1);
}

// ---- encoder and decoder layers ---------------------------------------------

TransformerEncoderLayer::TransformerEncoderLayer(const TransformerLayerConfig& config,
                                                 Generator& generator)
    : config_(config) {
  check_layer_config("TransformerEncoderLayer", config);
  const DropoutConfig drop{config.dropout};
  self_attn_ = register_module(
      "self_attn", std::make_shared<Attention>(self_attention_config(config), generator));
  linear1_ = register_module(
      "linear1", std::make_shared<Linear>(
                     LinearConfig{config.d_model, config.dim_feedforward, config.bias}, generator));
  dropout_ = register_module("dropout", std::make_shared<Dropout>(drop, generator));
  linear2_ = register_module(
      "linear2", std::make_shared<Linear>(
                     LinearConfig{config.dim_feedforward, config.d_model, config.bias}, generator));
  norm1_ = register_module("norm1", std::make_shared<LayerNorm>(norm_config(config), generator));
  norm2_ = register_module("norm2", std::make_shared<LayerNorm>(norm_config(config), generator));
  dropout1_ = register_module("dropout1", std::make_shared<Dropout>(drop, generator));
  dropout2_ = register_module("dropout2", std::make_shared<Dropout>(drop, generator));
}

Variable TransformerEncoderLayer::forward(const Variable& src, const AttentionMasks& src_masks) {
  check_sequence("TransformerEncoderLayer", "src", src, config_.d_model, config_.batch_first);
  auto sa_block = [&](const Variable& x) {
    return dropout1_->forward(self_attn_->forward(x, x, x, src_masks));
  };
  auto ff_block = [&](const Variable& x) {
    return dropout2_->forward(feed_forward(config_.activation, *linear1_, *dropout_, *linear2_, x));
  };
  Variable x = src;
  if (config_.norm_first) {
    x = autograd::add(x, sa_block(norm1_->forward(x)));
    x = autograd::add(x, ff_block(norm2_->forward(x)));
  } else {
    x = norm1_->forward(autograd::add(x, sa_block(x)));
    x = norm2_->forward(autograd::add(x, ff_block(x)));
  }
  return x;
}

TransformerDecoderLayer::TransformerDecoderLayer(const TransformerLayerConfig& config,
                                                 Generator& generator)
    : config_(config) {
  check_layer_config("TransformerDecoderLayer", config);
  const AttentionConfig attention = attention_config(config);
  const DropoutConfig drop{config.dropout};
  self_attn_ = register_module(
      "self_attn", std::make_shared<Attention>(self_attention_config(config), generator));
  multihead_attn_ =
      register_module("multihead_attn", std::make_shared<Attention>(attention, generator));
  linear1_ = register_module(
      "linear1", std::make_shared<Linear>(
                     LinearConfig{config.d_model, config.dim_feedforward, config.bias}, generator));
  dropout_ = register_module("dropout", std::make_shared<Dropout>(drop, generator));
  linear2_ = register_module(
      "linear2", std::make_shared<Linear>(
                     LinearConfig{config.dim_feedforward, config.d_model, config.bias}, generator));
  norm1_ = register_module("norm1", std::make_shared<LayerNorm>(norm_config(config), generator));
  norm2_ = register_module("norm2", std::make_shared<LayerNorm>(norm_config(config), generator));
  norm3_ = register_module("norm3", std::make_shared<LayerNorm>(norm_config(config), generator));
  dropout1_ = register_module("dropout1", std::make_shared<Dropout>(drop, generator));
  dropout2_ = register_module("dropout2", std::make_shared<Dropout>(drop, generator));
  dropout3_ = register_module("dropout3", std::make_shared<Dropout>(drop, generator));
}

Variable TransformerDecoderLayer::forward(const Variable& tgt, const Variable& memory,
                                          const AttentionMasks& tgt_masks,
                                          const AttentionMasks& memory_masks) {
  const char* op = "TransformerDecoderLayer";
  check_sequence(op, "tgt", tgt, config_.d_model, config_.batch_first);
  check_sequence(op, "memory", memory, config_.d_model, config_.batch_first);
  return blocks(
      tgt, [&](const Variable& x) { return self_attn_->forward(x, x, x, tgt_masks); },
      [&](const Variable& x) { return multihead_attn_->forward(x, memory, memory, memory_masks); });
}

Variable TransformerDecoderLayer::forward_cached(const Variable& tgt, const Variable& memory,
                                                 AttentionCache& self_cache,
                                                 AttentionCache& cross_cache,
                                                 const AttentionMasks& memory_masks) {
  const char* op = "TransformerDecoderLayer.forward_cached";
  QKV_CHECK(!training(), op, ": decoding drops nothing out; call eval() first");
  check_sequence(op, "tgt", tgt, config_.d_model, config_.batch_first);
  return blocks(
      tgt,
      [&](const Variable& x) {
        return self_attn_->forward(x, AttentionCall{.masks = {.is_causal = true}, .cache = &self_cache});
      },
      [&](const Variable& x) {
        return multihead_attn_->forward(x, memory,
                                        AttentionCall{.masks = memory_masks, .cache = &cross_cache});
      });
}

Variable TransformerDecoderLayer::blocks(
    const Variable& tgt, const std::function<Variable(const Variable&)>& self_attention,
    const std::function<Variable(const Variable&)>& cross_attention) {
  auto sa_block = [&](const Variable& x) { return dropout1_->forward(self_attention(x)); };
  auto mha_block = [&](const Variable& x) { return dropout2_->forward(cross_attention(x)); };
  auto ff_block = [&](const Variable& x) {
    return dropout3_->forward(feed_forward(config_.activation, *linear1_, *dropout_, *linear2_, x));
  };
  Variable x = tgt;
  if (config_.norm_first) {
    x = autograd::add(x, sa_block(norm1_->forward(x)));
    x = autograd::add(x, mha_block(norm2_->forward(x)));
    x = autograd::add(x, ff_block(norm3_->forward(x)));
  } else {
    x = norm1_->forward(autograd::add(x, sa_block(x)));
    x = norm2_->forward(autograd::add(x, mha_block(x)));
    x = norm3_->forward(autograd::add(x, ff_block(x)));
  }
  return x;
}

// ---- stacks ------------------------------------------------------------------
// torch deep-copies one layer num_layers times, so its layers start equal;
// here each layer draws its own initialisation.

TransformerEncoder::TransformerEncoder(const TransformerStackConfig& config, Generator& generator)
    : config_(config) {
  QKV_CHECK(config.num_layers >= 0, "TransformerEncoder: num_layers must be >= 0, got ",
            config.num_layers);
  for (int64_t i = 0; i < config.num_layers; ++i)
    layers_.push_back(
        register_module("layers." + std::to_string(i),
                        std::make_shared<TransformerEncoderLayer>(config.layer, generator)));
  if (config.norm)
    norm_ =
        register_module("norm", std::make_shared<LayerNorm>(norm_config(config.layer), generator));
}

Variable TransformerEncoder::forward(const Variable& src, const AttentionMasks& src_masks) {
  check_sequence("TransformerEncoder", "src", src, config_.layer.d_model,
                 config_.layer.batch_first);
  Variable x = src;
  for (const auto& layer : layers_) x = layer->forward(x, src_masks);
  return norm_ ? norm_->forward(x) : x;
}

TransformerDecoder::TransformerDecoder(const TransformerStackConfig& config, Generator& generator)
    : config_(config) {
  QKV_CHECK(config.num_layers >= 0, "TransformerDecoder: num_layers must be >= 0, got ",
            config.num_layers);
  for (int64_t i = 0; i < config.num_layers; ++i)
    layers_.push_back(
        register_module("layers." + std::to_string(i),
                        std::make_shared<TransformerDecoderLayer>(config.layer, generator)));
  if (config.norm)
    norm_ =
        register_module("norm", std::make_shared<LayerNorm>(norm_config(config.layer), generator));
}

Variable TransformerDecoder::forward(const Variable& tgt, const Variable& memory,
                                     const AttentionMasks& tgt_masks,
                                     const AttentionMasks& memory_masks) {
  check_sequence("TransformerDecoder", "tgt", tgt, config_.layer.d_model,
                 config_.layer.batch_first);
  Variable x = tgt;
  for (const auto& layer : layers_) x = layer->forward(x, memory, tgt_masks, memory_masks);
  return norm_ ? norm_->forward(x) : x;
}

Variable TransformerDecoder::forward_cached(const Variable& tgt, const Variable& memory,
                                            DecoderCache& cache,
                                            const AttentionMasks& memory_masks) {
  const char* op = "TransformerDecoder.forward_cached";
  check_sequence(op, "tgt", tgt, config_.layer.d_model, config_.layer.batch_first);
  QKV_CHECK(cache.num_layers() == static_cast<int64_t>(layers_.size()), op, ": the cache has ",
            cache.num_layers(), " layers, this decoder ", layers_.size());
  Variable x = tgt;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const int64_t l = static_cast<int64_t>(i);
    x = layers_[i]->forward_cached(x, memory, cache.self_attention(l), cache.cross_attention(l),
                                   memory_masks);
  }
  return norm_ ? norm_->forward(x) : x;
}

DecoderCache TransformerDecoder::make_cache(int64_t batch, int64_t capacity) const {
  const TransformerLayerConfig& c = config_.layer;
  return DecoderCache(static_cast<int64_t>(layers_.size()), batch, c.nhead, capacity,
                      c.d_model / c.nhead);
}

// ---- Transformer -------------------------------------------------------------

Transformer::Transformer(const TransformerConfig& config, Generator& generator) : config_(config) {
  const TransformerLayerConfig layer{.d_model = config.d_model,
                                     .nhead = config.nhead,
                                     .dim_feedforward = config.dim_feedforward,
                                     .dropout = config.dropout,
                                     .activation = config.activation,
                                     .layer_norm_eps = config.layer_norm_eps,
                                     .batch_first = config.batch_first,
                                     .norm_first = config.norm_first,
                                     .bias = config.bias,
                                     .self_attention = config.self_attention};
  encoder_ = register_module(
      "encoder", std::make_shared<TransformerEncoder>(
                     TransformerStackConfig{layer, config.num_encoder_layers, true}, generator));
  decoder_ = register_module(
      "decoder", std::make_shared<TransformerDecoder>(
                     TransformerStackConfig{layer, config.num_decoder_layers, true}, generator));
  // torch.nn.Transformer._reset_parameters.
  for (const auto& [name, p] : named_parameters())
    if (p.dim() > 1) {
      Tensor t = p.value();
      t.copy_(detail::uniform(t.shape(), detail::xavier_bound(t.shape()), generator));
    }
}

Variable Transformer::forward(const Variable& src, const Variable& tgt,
                              const TransformerMasks& masks) {
  const char* op = "Transformer";
  const bool bf = config_.batch_first;
  check_sequence(op, "src", src, config_.d_model, bf);
  check_sequence(op, "tgt", tgt, config_.d_model, bf);
  const int bdim = bf ? 0 : 1;
  QKV_CHECK(src.size(bdim) == tgt.size(bdim), op, ": src ", shape_string(src.shape()), " and tgt ",
            shape_string(tgt.shape()), " disagree on the batch size (dim ", bdim, ")");
  const Variable memory =
      encoder_->forward(src, {masks.src_mask, masks.src_key_padding_mask, masks.src_is_causal});
  return decoder_->forward(
      tgt, memory, {masks.tgt_mask, masks.tgt_key_padding_mask, masks.tgt_is_causal},
      {masks.memory_mask, masks.memory_key_padding_mask, masks.memory_is_causal});
}

}  // namespace qkv::nn
