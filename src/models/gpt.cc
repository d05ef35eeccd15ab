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

#include "nn/init.h"
#include "qkv/gpt.h"
#include "qkv/positions.h"

namespace qkv::nn {

using autograd::Variable;

namespace {

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

// A Linear's weight [out, in] and bias as nanoGPT initialises them, with
// torch's draws: nn.Linear's own kaiming-uniform weight and bias first
// (overwritten, as in torch), then _init_weights' N(0, std) weight, zero bias.
void init_linear(const Variable& weight, const Variable& bias, double std, Generator& generator) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(weight.size(1)));
  detail::uniform(weight.shape(), bound, generator);
  if (bias.defined()) detail::uniform(bias.shape(), bound, generator);
  init_normal(weight, std, generator);
  if (bias.defined()) {
    Tensor b = bias.value();
    b.copy_(Tensor::zeros(b.shape()));
  }
}

std::shared_ptr<Linear> make_linear(int64_t in, int64_t out, bool bias, double std,
                                    Generator& generator) {
  auto linear = std::make_shared<Linear>(LinearConfig{in, out, bias});
  init_linear(linear->weight(), linear->bias(), std, generator);
  return linear;
}

}  // namespace

// How one pass through the model runs.
struct GPT::Pass {
  int64_t start = 0;                    // the position of ids' first token
  KVCache* cache = nullptr;             // each layer appends k, v to its own and attends over all
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
  // Refused before anything is allocated: no model past 2^34 parameters (64 GiB in f32).
  const double d = static_cast<double>(d_model);
  const double tables = static_cast<double>(vocab_size) * (tied_embeddings ? 1 : 2) +
                        static_cast<double>(context);
  const double parameters = d * tables + static_cast<double>(n_layer) * 12 * d * d;
  QKV_CHECK(parameters <= std::ldexp(1.0, 34), op, ": about ", parameters, " parameters (",
            parameters * 4 / std::ldexp(1.0, 30),
            " GiB in f32) are more than qkv allocates for one model (2^34)");
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
  j["positions"] = name_of(kGPTPositionNames, positions);
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
  QKV_CHECK(p.is_string(), op, ": field 'positions' must be a string, got ", p.dump());
  c.positions = from_name(kGPTPositionNames, p.get<std::string>(),
                          std::string(op) + ": field 'positions'");
  c.rotary_base = number("rotary_base");
  c.validate();
  return c;
}

// ---- the blocks ----------------------------------------------------------------

class GPT::Block : public Module {
 public:
  Block(const GPTConfig& c, Generator& generator) : config_(c) {
    const int64_t d = c.d_model;
    const double std = 0.02, residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(c.n_layer));
    const LayerNormConfig norm{.dim = d, .bias = c.bias};
    ln_1_ = register_module("ln_1", std::make_shared<LayerNorm>(norm, generator));
    // CausalSelfAttention: c_attn [3d, d] packed, c_proj; the model gives the
    // dropout seeds (its one stream, saved with checkpoints).
    AttentionConfig a{.embed_dim = d,
                      .num_heads = c.n_head,
                      .dropout = c.dropout,
                      .bias = c.bias,
                      .batch_first = true,
                      .names = AttentionNames::nanogpt(),
                      .init = AttentionInit::none};
    if (c.positions == GPTPositions::rotary) {
      a.positions = AttentionPositions::rotary;
      a.rotary = {.base = c.rotary_base, .style = RotaryStyle::rotate_half};
    }
    attn_ = register_module("attn", std::make_shared<Attention>(a, generator));
    init_linear(attn_->packed_weight(), attn_->packed_bias(), std, generator);
    Linear& c_proj = attn_->output_projection();
    init_linear(c_proj.weight(), c_proj.bias(), residual_std, generator);
    ln_2_ = register_module("ln_2", std::make_shared<LayerNorm>(norm, generator));
    auto mlp = register_module("mlp", std::make_shared<Container>("MLP"));
    c_fc_ = mlp->add("c_fc", make_linear(d, 4 * d, c.bias, std, generator));
    mlp_proj_ = mlp->add("c_proj", make_linear(4 * d, d, c.bias, residual_std, generator));
  }

  // x [B, T, d] -> [B, T, d]: x + attn(ln_1(x)), then + mlp(ln_2(x)),
  // dropping out the residual branches and attention weights when training.
  // `cache`: this layer's keys and values (decoding); pass.maps: collect the
  // attention weights [H, T, T].
  Variable forward(const Variable& x, const Pass& pass, AttentionCache* cache) const {
    const double p = pass.dropout ? config_.dropout : 0.0;
    AttentionCall call{.masks = {.is_causal = true}, .cache = cache};
    if (pass.dropout && config_.dropout > 0) call.dropout_seed = pass.dropout->next_u64();
    Tensor weights;
    if (pass.maps) call.weights = &weights;
    Variable h = autograd::add(x, drop(attn_->forward(ln_1_->forward(x), call), p, pass));
    if (pass.maps) pass.maps->push_back(weights.select(0, 0));
    Variable m = autograd::gelu(c_fc_->forward(ln_2_->forward(h)), GeluApproximation::tanh);
    return autograd::add(h, drop(mlp_proj_->forward(m), p, pass));
  }

  const char* type_name() const override { return "Block"; }

 private:
  static Variable drop(const Variable& x, double p, const Pass& pass) {
    return p > 0 ? autograd::dropout(x, p, *pass.dropout) : x;
  }

  GPTConfig config_;
  std::shared_ptr<LayerNorm> ln_1_, ln_2_;
  std::shared_ptr<Attention> attn_;
  std::shared_ptr<Linear> c_fc_, mlp_proj_;
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
  for (size_t l = 0; l < blocks_.size(); ++l)
    x = blocks_[l]->forward(x, pass, pass.cache ? &pass.cache->layer(int64_t(l)) : nullptr);
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
  if (capacity == 0) capacity = config_.context;
  QKV_CHECK(batch > 0, "KVCache: batch must be positive, got ", batch);
  QKV_CHECK(capacity > 0 && capacity <= config_.context, "KVCache: capacity ", capacity,
            " must be in [1, context ", config_.context, "]");
  return KVCache(config_.n_layer, batch, config_.n_head, capacity,
                 config_.d_model / config_.n_head);
}

Tensor GPT::forward_cached(const Tensor& ids, KVCache& cache) const {
  const char* op = "GPT.forward_cached";
  check_ids(ids, config_.context, op);
  const int64_t b = ids.size(0), t = ids.size(1), dh = config_.d_model / config_.n_head;
  const bool fits = cache.num_layers() == config_.n_layer &&
                    cache.layer(0).heads() == config_.n_head && cache.layer(0).head_dim() == dh;
  QKV_CHECK(fits, op, ": the cache was made for another model (", cache.num_layers(),
            " layers of ",
            cache.num_layers() == 0
                ? std::string("nothing")
                : qkv::detail::str("[B, ", cache.layer(0).heads(), ", capacity, ",
                                   cache.layer(0).head_dim(), "]"),
            "; this one has ", config_.n_layer, " of [B, ", config_.n_head, ", capacity, ", dh,
            "])");
  QKV_CHECK(b == cache.batch(), op, ": ids have batch ", b, ", the cache ", cache.batch());
  QKV_CHECK(cache.length() + t <= cache.capacity(), op, ": ", t, " new positions after ",
            cache.length(), " cached pass the cache's capacity ", cache.capacity());
  autograd::NoGradGuard no_grad;
  return head(hidden(ids, {.start = cache.length(), .cache = &cache})).value();
}

Tensor GPT::next_logits(const Tensor& ids, KVCache* cache) const {
  autograd::NoGradGuard no_grad;
  Pass pass;
  if (cache) {
    QKV_CHECK(cache->length() + ids.size(1) <= cache->capacity(),
              "GPT.generate: internal error: the cache is full");
    pass = {.start = cache->length(), .cache = cache};
  }
  const Variable h = hidden(ids, pass);
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
