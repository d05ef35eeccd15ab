// nn::GPT: nanoGPT's module tree and forward (Radford et al. 2019 as
// karpathy/nanoGPT's model.py writes it), the KV cache, attention maps and
// the config's JSON. Sampling and generate() are in generate.cc.
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "qkv/gpt.h"
#include "qkv/positions.h"

namespace qkv::nn {

using autograd::Variable;

namespace {

const char* positions_name(GPTPositions p) {
  return p == GPTPositions::rotary ? "rotary" : "learned";
}

// A module that only names its children: torch's ModuleDict / ModuleList, so
// the blocks are "transformer.h.0.*" as in nanoGPT.
class Container : public Module {
 public:
  explicit Container(const char* type) : type_(type) {}
  template <class M>
  std::shared_ptr<M> add(std::string name, std::shared_ptr<M> module) {
    return register_module(std::move(name), std::move(module));
  }
  const char* type_name() const override { return type_; }

 private:
  const char* type_;
};

// nanoGPT's _init_weights: N(0, std) for Linear and Embedding weights, zero biases.
void init_normal(const Variable& weight, double std, Generator& generator) {
  Tensor w = weight.value();  // shares the parameter's storage
  w.copy_(scale(randn(w.shape(), generator), std));
}

std::shared_ptr<Linear> make_linear(int64_t in, int64_t out, bool bias, double std,
                                    Generator& generator) {
  auto linear = std::make_shared<Linear>(LinearConfig{in, out, bias}, generator);
  init_normal(linear->weight(), std, generator);
  if (bias) {
    Tensor b = linear->bias().value();
    b.copy_(Tensor::zeros({out}));
  }
  return linear;
}

// One layer's slice of the cache: keys, values [B, H, capacity, Dh].
struct LayerCache {
  Tensor keys, values;
};

// Causal self-attention over the packed projection qkv [B, T, 3d] (q, k, v
// side by side, nanoGPT's c_attn) -> [B, T, H, Dh], recorded as one op. The
// heads are strided [B, T, H, Dh] views of qkv (no split copies), and the
// backward writes dq, dk, dv into one [B, T, 3d] gradient, where three
// narrow()s would each hand the tape a zero-filled [B, T, 3d] to add up.
Variable packed_self_attention(const Variable& qkv_in, int64_t heads,
                               const std::optional<RotaryOptions>& rotary, double dropout,
                               uint64_t dropout_seed) {
  const bool bf16 = autograd::autocast_enabled() && qkv_in.dtype() == DType::f32;
  const Variable qkv = bf16 ? autograd::to(qkv_in, DType::bf16) : qkv_in;
  const Shape shape = qkv.shape();  // [B, T, 3d]
  const int64_t b = shape[0], t = shape[1], d = shape[2] / 3, dh = d / heads;
  const Tensor packed = qkv.value().view({b, t, 3, heads, dh});
  Tensor q = packed.select(2, 0), k = packed.select(2, 1);
  const Tensor v = packed.select(2, 2);
  if (rotary) {
    q = rotary_embedding(q, *rotary), k = rotary_embedding(k, *rotary);
    if (bf16) q = q.to(DType::bf16), k = k.to(DType::bf16);
  }
  const bool recording = autograd::grad_enabled() && qkv.requires_grad();
  const AttentionOptions options{.layout = AttentionLayout::blhd,
                                 .causal = Causal::top_left,
                                 .dropout = dropout,
                                 .dropout_seed = dropout_seed,
                                 .return_lse = recording};
  AttentionResult r = attention(q, k, v, options);
  Tensor out = r.output;
  if (!recording) return Variable(std::move(out));
  return autograd::record(
      "self_attention", std::move(out), {qkv},
      [q, k, v, saved = std::move(r), options, rotary, shape](const Tensor& g) {
        AttentionGradients a = attention_backward(g, q, k, v, saved, options);
        if (rotary) {
          a.grad_q = rotary_embedding_backward(a.grad_q, *rotary);
          a.grad_k = rotary_embedding_backward(a.grad_k, *rotary);
        }
        Tensor grad = Tensor::empty(shape);
        const Tensor parts = grad.view(Shape{shape[0], shape[1], 3, q.size(2), q.size(3)});
        parts.select(2, 0).copy_(a.grad_q);
        parts.select(2, 1).copy_(a.grad_k);
        parts.select(2, 2).copy_(a.grad_v);
        return std::vector<Tensor>{grad};
      });
}

}  // namespace

// How one pass through the model runs.
struct GPT::Pass {
  int64_t start = 0;                    // the position of ids' first token
  KVCache* cache = nullptr;             // append k, v to it and attend over all of it
  Generator* dropout = nullptr;         // training: the masks' source
  std::vector<Tensor>* maps = nullptr;  // collect each layer's attention weights
};

// ---- the config ----------------------------------------------------------------

void GPTConfig::validate() const {
  const char* op = "GPTConfig";
  auto positive = [&](const char* name, int64_t value) {
    QKV_CHECK(value > 0, op, ": ", name, " must be positive, got ", value);
  };
  positive("vocab_size", vocab_size);
  positive("context", context);
  positive("n_layer", n_layer);
  positive("n_head", n_head);
  positive("d_model", d_model);
  // Token ids are int32 in generate(); the other limits keep every size product far from overflow.
  QKV_CHECK(vocab_size <= std::numeric_limits<int32_t>::max(), op, ": vocab_size ", vocab_size,
            " does not fit int32 token ids");
  constexpr int64_t kLimit = int64_t{1} << 24;
  QKV_CHECK(context <= kLimit && n_layer <= kLimit && d_model <= kLimit, op,
            ": context ", context, ", n_layer ", n_layer, " and d_model ", d_model,
            " must each be at most ", kLimit);
  QKV_CHECK(d_model % n_head == 0, op, ": d_model ", d_model, " must be a multiple of n_head ",
            n_head);
  QKV_CHECK(dropout >= 0.0 && dropout < 1.0, op, ": dropout must be in [0, 1), got ", dropout);
  if (positions == GPTPositions::rotary) {
    QKV_CHECK((d_model / n_head) % 2 == 0, op, ": rotary positions need an even head size, got ",
              d_model / n_head, " (d_model ", d_model, " / n_head ", n_head, ")");
    QKV_CHECK(std::isfinite(rotary_base) && rotary_base > 0, op,
              ": rotary_base must be positive, got ", rotary_base);
  }
}

std::string GPTConfig::to_json() const {
  nlohmann::ordered_json j;
  j["vocab_size"] = vocab_size;
  j["context"] = context;
  j["n_layer"] = n_layer;
  j["n_head"] = n_head;
  j["d_model"] = d_model;
  j["dropout"] = dropout;
  j["bias"] = bias;
  j["tied_embeddings"] = tied_embeddings;
  j["positions"] = positions_name(positions);
  j["rotary_base"] = rotary_base;
  return j.dump(2);
}

GPTConfig GPTConfig::from_json(const std::string& text) {
  const char* op = "GPTConfig.from_json";
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  QKV_CHECK(!j.is_discarded(), op, ": the text is not valid JSON");
  QKV_CHECK(j.is_object(), op, ": expected a JSON object, got ", j.type_name());
  const char* fields[] = {"vocab_size", "context",         "n_layer",   "n_head",     "d_model",
                          "dropout",    "bias", "tied_embeddings", "positions", "rotary_base"};
  for (const auto& [key, value] : j.items()) {
    bool known = false;
    for (const char* f : fields) known |= key == f;
    QKV_CHECK(known, op, ": unknown field '", key, "'");
  }
  auto field = [&](const char* name) -> const nlohmann::json& {
    QKV_CHECK(j.contains(name), op, ": field '", name, "' is missing");
    return j.at(name);
  };
  auto integer = [&](const char* name) {
    const nlohmann::json& v = field(name);
    QKV_CHECK(v.is_number_integer(), op, ": field '", name, "' must be an integer, got ",
              v.dump());
    return v.get<int64_t>();
  };
  auto number = [&](const char* name) {
    const nlohmann::json& v = field(name);
    QKV_CHECK(v.is_number(), op, ": field '", name, "' must be a number, got ", v.dump());
    return v.get<double>();
  };
  auto boolean = [&](const char* name) {
    const nlohmann::json& v = field(name);
    QKV_CHECK(v.is_boolean(), op, ": field '", name, "' must be true or false, got ", v.dump());
    return v.get<bool>();
  };
  GPTConfig c;
  c.vocab_size = integer("vocab_size");
  c.context = integer("context");
  c.n_layer = integer("n_layer");
  c.n_head = integer("n_head");
  c.d_model = integer("d_model");
  c.dropout = number("dropout");
  c.bias = boolean("bias");
  c.tied_embeddings = boolean("tied_embeddings");
  const nlohmann::json& p = field("positions");
  QKV_CHECK(p.is_string() && (p == "learned" || p == "rotary"), op,
            ": field 'positions' must be \"learned\" or \"rotary\", got ", p.dump());
  c.positions = p == "rotary" ? GPTPositions::rotary : GPTPositions::learned;
  c.rotary_base = number("rotary_base");
  c.validate();
  return c;
}

// ---- the cache ---------------------------------------------------------------

KVCache::KVCache(const GPTConfig& config, int64_t batch, int64_t capacity)
    : batch_(batch), capacity_(capacity) {
  config.validate();
  QKV_CHECK(batch > 0, "KVCache: batch must be positive, got ", batch);
  QKV_CHECK(capacity > 0 && capacity <= config.context, "KVCache: capacity ", capacity,
            " must be in [1, context ", config.context, "]");
  const Shape shape{batch, config.n_head, capacity, config.d_model / config.n_head};
  for (int64_t l = 0; l < config.n_layer; ++l) {
    keys_.push_back(Tensor::empty(shape));
    values_.push_back(Tensor::empty(shape));
  }
}

// ---- the blocks ----------------------------------------------------------------

class GPT::Block : public Module {
 public:
  Block(const GPTConfig& c, Generator& generator) : config_(c) {
    const int64_t d = c.d_model;
    const double std = 0.02, residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(c.n_layer));
    const LayerNormConfig norm{.dim = d, .bias = c.bias};
    ln_1_ = register_module("ln_1", std::make_shared<LayerNorm>(norm, generator));
    auto attn = register_module("attn", std::make_shared<Container>("CausalSelfAttention"));
    c_attn_ = attn->add("c_attn", make_linear(d, 3 * d, c.bias, std, generator));
    attn_proj_ = attn->add("c_proj", make_linear(d, d, c.bias, residual_std, generator));
    ln_2_ = register_module("ln_2", std::make_shared<LayerNorm>(norm, generator));
    auto mlp = register_module("mlp", std::make_shared<Container>("MLP"));
    c_fc_ = mlp->add("c_fc", make_linear(d, 4 * d, c.bias, std, generator));
    mlp_proj_ = mlp->add("c_proj", make_linear(4 * d, d, c.bias, residual_std, generator));
  }

  // x [B, T, d] at positions pass.start .. + T -> [B, T, d]:
  // x + attn(ln_1(x)), then + mlp(ln_2(x)), dropping out the residual
  // branches and attention weights when training.
  Variable forward(const Variable& x, const Pass& pass, const LayerCache* cache) const {
    const double p = pass.dropout ? config_.dropout : 0.0;
    Variable h = x;
    h = autograd::add(h, drop(attn_proj_->forward(attend(ln_1_->forward(h), pass, cache)), p, pass));
    Variable m = autograd::gelu(c_fc_->forward(ln_2_->forward(h)), GeluApproximation::tanh);
    return autograd::add(h, drop(mlp_proj_->forward(m), p, pass));
  }

  const char* type_name() const override { return "Block"; }

 private:
  static Variable drop(const Variable& x, double p, const Pass& pass) {
    return p > 0 ? autograd::dropout(x, p, *pass.dropout) : x;
  }

  std::optional<RotaryOptions> rotary(int64_t offset) const {
    if (config_.positions != GPTPositions::rotary) return std::nullopt;
    return RotaryOptions{.base = config_.rotary_base,
                         .offset = offset,
                         .style = RotaryStyle::rotate_half,
                         .layout = AttentionLayout::blhd};
  }

  // ln_1(x) [B, T, d] -> the heads' outputs as [B, T, d].
  Variable attend(const Variable& x, const Pass& pass, const LayerCache* cache) const {
    const int64_t b = x.size(0), t = x.size(1), d = config_.d_model, h = config_.n_head;
    const Variable qkv = c_attn_->forward(x);  // [B, T, 3d]
    if (!cache && !pass.maps) {
      const bool drop = pass.dropout && config_.dropout > 0;
      const Variable y =
          packed_self_attention(qkv, h, rotary(pass.start), drop ? config_.dropout : 0.0,
                                drop ? pass.dropout->next_u64() : 0);
      return autograd::reshape(y, {b, t, d});
    }
    // Inference (no gradient): the KV cache, or the attention maps.
    const Tensor packed = qkv.value().view({b, t, 3, h, d / h});
    Tensor q = packed.select(2, 0), k = packed.select(2, 1), v = packed.select(2, 2);
    if (const auto r = rotary(pass.start)) q = rotary_embedding(q, *r), k = rotary_embedding(k, *r);
    if (pass.maps) {
      AttentionOptions o{.layout = AttentionLayout::blhd, .causal = Causal::top_left};
      for (int64_t i = 0; i < h; ++i) o.weights_heads.push_back(i);
      AttentionResult r = attention(q, k, v, o);
      pass.maps->push_back(r.weights.select(0, 0));
      return Variable(r.output.view({b, t, d}));
    }
    // Keys and values [B, H, capacity, Dh]: the new positions go in at
    // pass.start, and the new queries see every cached key up to their own
    // position (bottom-right causal: query i is position start + i).
    const int64_t end = pass.start + t;
    cache->keys.narrow(2, pass.start, t).copy_(k.permute({0, 2, 1, 3}));
    cache->values.narrow(2, pass.start, t).copy_(v.permute({0, 2, 1, 3}));
    const AttentionOptions o{.layout = AttentionLayout::bhld,
                             .causal = t > 1 ? Causal::bottom_right : Causal::none};
    const Tensor out = attention(q.permute({0, 2, 1, 3}), cache->keys.narrow(2, 0, end),
                                 cache->values.narrow(2, 0, end), o)
                           .output;  // [B, H, T, Dh]
    return Variable(out.permute({0, 2, 1, 3}).reshape({b, t, d}));
  }

  GPTConfig config_;
  std::shared_ptr<LayerNorm> ln_1_, ln_2_;
  std::shared_ptr<Linear> c_attn_, attn_proj_, c_fc_, mlp_proj_;
};

// ---- the model -----------------------------------------------------------------

GPT::GPT(const GPTConfig& config, Generator& generator) : config_(config) {
  config_.validate();
  const GPTConfig& c = config_;
  auto transformer = register_module("transformer", std::make_shared<Container>("Transformer"));
  wte_ = transformer->add("wte", std::make_shared<Embedding>(
                                     EmbeddingConfig{c.vocab_size, c.d_model}, generator));
  init_normal(wte_->weight(), 0.02, generator);
  if (c.positions == GPTPositions::learned) {
    wpe_ = transformer->add(
        "wpe", std::make_shared<Embedding>(EmbeddingConfig{c.context, c.d_model}, generator));
    init_normal(wpe_->weight(), 0.02, generator);
  }
  auto h = transformer->add("h", std::make_shared<Container>("ModuleList"));
  for (int64_t i = 0; i < c.n_layer; ++i)
    blocks_.push_back(h->add(std::to_string(i), std::make_shared<Block>(c, generator)));
  ln_f_ = transformer->add("ln_f", std::make_shared<LayerNorm>(
                                       LayerNormConfig{.dim = c.d_model, .bias = c.bias}, generator));
  if (!c.tied_embeddings)
    lm_head_ = register_module("lm_head", make_linear(c.d_model, c.vocab_size, false, 0.02, generator));
  dropout_generator_ = Generator(generator.next_u64());
}

int64_t GPT::num_parameters() const {
  int64_t n = 0;
  for (const Variable& p : parameters()) n += p.value().numel();
  return n;
}

namespace {

void check_ids(const Tensor& ids, int64_t context, const char* op) {
  QKV_CHECK(ids.defined() && (ids.dtype() == DType::i32 || ids.dtype() == DType::i64), op,
            ": ids must be i32 or i64, got ", ids.defined() ? dtype_name(ids.dtype()) : "undefined");
  QKV_CHECK(ids.dim() == 2 && ids.size(0) > 0 && ids.size(1) > 0, op,
            ": ids must be [B, T] with B, T >= 1, got ", shape_string(ids.shape()));
  QKV_CHECK(ids.size(1) <= context, op, ": ", ids.size(1), " positions pass the context ",
            context);
}

}  // namespace

Variable GPT::hidden(const Tensor& ids, const Pass& pass) const {
  const int64_t t = ids.size(1);
  Variable x = wte_->forward(ids);  // [B, T, d]
  if (wpe_) {
    Tensor positions = Tensor::empty({t}, DType::i64);
    for (int64_t i = 0; i < t; ++i) positions.data<int64_t>()[i] = pass.start + i;
    x = autograd::add(x, wpe_->forward(positions));
  }
  if (pass.dropout && config_.dropout > 0) x = autograd::dropout(x, config_.dropout, *pass.dropout);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    LayerCache layer;
    if (pass.cache) layer = {pass.cache->keys_[l], pass.cache->values_[l]};
    x = blocks_[l]->forward(x, pass, pass.cache ? &layer : nullptr);
  }
  return ln_f_->forward(x);
}

Variable GPT::head(const Variable& h) const {
  return lm_head_ ? lm_head_->forward(h) : autograd::linear(h, wte_->weight());
}

Variable GPT::forward(const Tensor& ids) {
  check_ids(ids, config_.context, "GPT.forward");
  return head(hidden(ids, {.dropout = training() ? &dropout_generator_ : nullptr}));
}

Variable GPT::loss(const Tensor& ids, const Tensor& targets) {
  check_ids(ids, config_.context, "GPT.loss");
  QKV_CHECK(targets.defined() && targets.shape() == ids.shape(), "GPT.loss: targets ",
            targets.defined() ? shape_string(targets.shape()) : "undefined",
            " must have the shape of ids ", shape_string(ids.shape()));
  const Variable logits = forward(ids);
  const int64_t rows = ids.size(0) * ids.size(1);
  return autograd::cross_entropy(autograd::reshape(logits, {rows, config_.vocab_size}),
                                 targets.reshape({rows}), {.ignore_index = -1});
}

KVCache GPT::make_cache(int64_t batch, int64_t capacity) const {
  return KVCache(config_, batch, capacity == 0 ? config_.context : capacity);
}

Tensor GPT::forward_cached(const Tensor& ids, KVCache& cache) const {
  const char* op = "GPT.forward_cached";
  check_ids(ids, config_.context, op);
  const int64_t b = ids.size(0), t = ids.size(1), dh = config_.d_model / config_.n_head;
  const Shape layer_shape{cache.batch_, config_.n_head, cache.capacity_, dh};
  QKV_CHECK(static_cast<int64_t>(cache.keys_.size()) == config_.n_layer &&
                cache.keys_.front().shape() == layer_shape,
            op, ": the cache was made for another model (", cache.keys_.size(), " layers of ",
            cache.keys_.empty() ? "nothing" : shape_string(cache.keys_.front().shape()),
            "; this one has ", config_.n_layer, " of [B, ", config_.n_head, ", capacity, ", dh,
            "])");
  QKV_CHECK(b == cache.batch_, op, ": ids have batch ", b, ", the cache ", cache.batch_);
  QKV_CHECK(cache.length_ + t <= cache.capacity_, op, ": ", t, " new positions after ",
            cache.length_, " cached pass the cache's capacity ", cache.capacity_);
  autograd::NoGradGuard no_grad;
  const Tensor logits = head(hidden(ids, {.start = cache.length_, .cache = &cache})).value();
  cache.length_ += t;
  return logits;
}

Tensor GPT::next_logits(const Tensor& ids, KVCache* cache) const {
  autograd::NoGradGuard no_grad;
  Pass pass;
  if (cache) {
    QKV_CHECK(cache->length_ + ids.size(1) <= cache->capacity_,
              "GPT.generate: internal error: the cache is full");
    pass = {.start = cache->length_, .cache = cache};
  }
  const Variable h = hidden(ids, pass);
  if (cache) cache->length_ += ids.size(1);
  // Only the last position's logits: [1, d] -> [1, vocab] -> [vocab].
  return head(Variable(h.value().select(1, ids.size(1) - 1))).value().select(0, 0);
}

std::vector<Tensor> GPT::attention_maps(const Tensor& ids) const {
  check_ids(ids, config_.context, "GPT.attention_maps");
  QKV_CHECK(ids.size(0) == 1, "GPT.attention_maps: ids must be one sequence [1, T], got ",
            shape_string(ids.shape()));
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> maps;
  hidden(ids, {.maps = &maps});
  return maps;
}

}  // namespace qkv::nn
