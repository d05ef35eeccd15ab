// The basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout,
// FeedForward, and the attention-pooling classifier.
#include "qkv/layers.h"

#include <cmath>

#include "nn/init.h"
#include "qkv/positions.h"

namespace qkv::nn {

using autograd::Variable;

// ---- Linear ------------------------------------------------------------------

Linear::Linear(const LinearConfig& config) : config_(config) {
  QKV_CHECK(config.in_features > 0 && config.out_features > 0,
            "Linear: in_features and out_features must be positive, got ", config.in_features,
            " and ", config.out_features);
  weight_ = register_parameter("weight", Tensor::empty({config.out_features, config.in_features}));
  if (config.bias) bias_ = register_parameter("bias", Tensor::empty({config.out_features}));
}

Linear::Linear(const LinearConfig& config, Generator& generator) : Linear(config) {
  // kaiming_uniform_(a = sqrt 5) gives bound sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in);
  // torch draws the bias from the same interval.
  const double bound = 1.0 / std::sqrt(static_cast<double>(config.in_features));
  for (const Variable* p : {&weight_, &bias_}) {
    if (!p->defined()) continue;
    Tensor value = p->value();  // shares the parameter's storage
    value.copy_(detail::uniform(value.shape(), bound, generator));
  }
}

Variable Linear::forward(const Variable& x) const {
  detail::check_features("Linear", "input", x.value(), "in_features", config_.in_features);
  return autograd::linear(x, weight_, bias_);
}

// ---- Embedding ---------------------------------------------------------------

namespace {

EmbeddingConfig checked(EmbeddingConfig c) {
  QKV_CHECK(c.num_embeddings > 0 && c.embedding_dim > 0,
            "Embedding: num_embeddings and embedding_dim must be positive, got ", c.num_embeddings,
            " and ", c.embedding_dim);
  if (c.padding_idx) {
    const int64_t p = *c.padding_idx;
    QKV_CHECK(p >= -c.num_embeddings && p < c.num_embeddings, "Embedding: padding_idx ", p,
              " is out of range for num_embeddings ", c.num_embeddings);
    if (p < 0) c.padding_idx = p + c.num_embeddings;
  }
  return c;
}

}  // namespace

Embedding::Embedding(const EmbeddingConfig& config, Generator& generator)
    : config_(checked(config)) {
  Tensor w = randn({config_.num_embeddings, config_.embedding_dim}, generator);
  if (config_.padding_idx)
    w.select(0, *config_.padding_idx).copy_(Tensor::zeros({config_.embedding_dim}));
  weight_ = register_parameter("weight", std::move(w));
}

Embedding::Embedding(const EmbeddingConfig& config) : config_(checked(config)) {
  weight_ = register_parameter("weight",
                               Tensor::empty({config_.num_embeddings, config_.embedding_dim}));
}

Embedding::Embedding(const EmbeddingConfig& config, Tensor weight, bool requires_grad)
    : config_(checked(config)) {
  weight_ = register_parameter("weight", std::move(weight), requires_grad);
}

std::shared_ptr<Embedding> Embedding::from_pretrained(const Tensor& weight, bool freeze,
                                                      std::optional<int64_t> padding_idx) {
  QKV_CHECK(weight.defined() && weight.dim() == 2,
            "Embedding.from_pretrained: weight must be 2-D [num_embeddings, embedding_dim], got ",
            weight.defined() ? shape_string(weight.shape()) : "undefined");
  // torch keeps the given padding row as it is (no zeroing).
  return std::shared_ptr<Embedding>(new Embedding({weight.size(0), weight.size(1), padding_idx},
                                                  weight.to(DType::f32).contiguous().clone(),
                                                  !freeze));
}

Variable Embedding::forward(const Tensor& ids) const {
  QKV_CHECK(ids.defined() && (ids.dtype() == DType::i64 || ids.dtype() == DType::i32),
            "Embedding: ids must be i32 or i64, got ",
            ids.defined() ? dtype_name(ids.dtype()) : "undefined");
  return autograd::embedding(weight_, ids, config_.padding_idx.value_or(-1));
}

// ---- norms and dropout -------------------------------------------------------

LayerNorm::LayerNorm(const LayerNormConfig& config, Generator&) : config_(config) {
  QKV_CHECK(config.dim > 0, "LayerNorm: dim must be positive, got ", config.dim);
  if (config.elementwise_affine) {
    weight_ = register_parameter("weight", Tensor::ones({config.dim}));
    if (config.bias) bias_ = register_parameter("bias", Tensor::zeros({config.dim}));
  }
}

Variable LayerNorm::forward(const Variable& x) const {
  detail::check_features("LayerNorm", "input", x.value(), "dim", config_.dim);
  return autograd::layer_norm(x, weight_, bias_, config_.eps);
}

RMSNorm::RMSNorm(const RMSNormConfig& config, Generator&) : config_(config) {
  QKV_CHECK(config.dim > 0, "RMSNorm: dim must be positive, got ", config.dim);
  weight_ = register_parameter("weight", Tensor::ones({config.dim}));
}

Variable RMSNorm::forward(const Variable& x) const {
  detail::check_features("RMSNorm", "input", x.value(), "dim", config_.dim);
  return autograd::rms_norm(x, weight_, config_.eps);
}

Dropout::Dropout(const DropoutConfig& config, Generator& generator)
    : config_(config), generator_(generator.next_u64()) {
  QKV_CHECK(config.p >= 0 && config.p < 1, "Dropout: p must be in [0, 1), got ", config.p);
}

Variable Dropout::forward(const Variable& x) {
  return autograd::dropout(x, config_.p, generator_, training());
}

// ---- FeedForward -------------------------------------------------------------

FeedForward::FeedForward(const FeedForwardConfig& config, Generator& generator) : config_(config) {
  const LinearConfig up{config.d_model, config.d_ff, config.bias},
      down{config.d_ff, config.d_model, config.bias};
  // Registration order as torch's encoder layer (linear1, dropout, linear2)
  // and as Llama's FeedForward (w1, w2, w3).
  if (config.activation == Activation::swiglu) {
    in_ = register_module("w1", std::make_shared<Linear>(up, generator));
    out_ = register_module("w2", std::make_shared<Linear>(down, generator));
    gate_ = register_module("w3", std::make_shared<Linear>(up, generator));
    dropout_ = register_module("dropout",
                               std::make_shared<Dropout>(DropoutConfig{config.dropout}, generator));
  } else {
    in_ = register_module("linear1", std::make_shared<Linear>(up, generator));
    dropout_ = register_module("dropout",
                               std::make_shared<Dropout>(DropoutConfig{config.dropout}, generator));
    out_ = register_module("linear2", std::make_shared<Linear>(down, generator));
  }
}

Variable FeedForward::forward(const Variable& x) {
  detail::check_features("FeedForward", "input", x.value(), "d_model", config_.d_model);
  const Variable h = in_->forward(x);
  Variable a;
  switch (config_.activation) {
    case Activation::relu: a = autograd::relu(h); break;
    case Activation::gelu: a = autograd::gelu(h); break;
    case Activation::swiglu: a = autograd::mul(autograd::silu(h), gate_->forward(x)); break;
  }
  return out_->forward(dropout_->forward(a));
}

// ---- AttentionPoolingClassifier ---------------------------------------------

AttentionPoolingClassifier::AttentionPoolingClassifier(
    const AttentionPoolingClassifierConfig& config, Generator& generator)
    : config_(config) {
  const char* op = "AttentionPoolingClassifier";
  QKV_CHECK(
      config.vocab_size > 0 && config.d_model > 0 && config.max_len > 0 && config.num_classes > 0,
      op, ": vocab_size, d_model, max_len and num_classes must be positive, got ",
      config.vocab_size, ", ", config.d_model, ", ", config.max_len, ", ", config.num_classes);
  embedding_ = register_module(
      "embedding",
      std::make_shared<Embedding>(
          EmbeddingConfig{config.vocab_size, config.d_model, config.padding_idx}, generator));
  if (config.positional == PositionalEncoding::learned)
    position_embedding_ = register_module(
        "position_embedding",
        std::make_shared<Embedding>(EmbeddingConfig{config.max_len, config.d_model}, generator));
  else
    sinusoidal_ = sinusoidal_positions(config.max_len, config.d_model);
  // N(0, 1 / d): scores x . w / sqrt(d) start near unit scale.
  query_ = register_parameter("query", scale(randn({config.d_model}, generator),
                                             1.0 / std::sqrt(static_cast<double>(config.d_model))));
  classifier_ = register_module(
      "classifier",
      std::make_shared<Linear>(LinearConfig{config.d_model, config.num_classes}, generator));
}

Variable AttentionPoolingClassifier::forward(const Tensor& ids, const Tensor& padding_mask) {
  const char* op = "AttentionPoolingClassifier";
  QKV_CHECK(ids.defined() && ids.dim() == 2, op, ": ids must be 2-D [B, L], got ",
            ids.defined() ? shape_string(ids.shape()) : "undefined");
  const int64_t b = ids.size(0), l = ids.size(1), d = config_.d_model;
  QKV_CHECK(l >= 1 && l <= config_.max_len, op, ": ids has shape ", shape_string(ids.shape()),
            "; expected 1 to max_len ", config_.max_len, " positions");
  Tensor mask = padding_mask;
  if (mask.defined()) {
    QKV_CHECK(mask.dtype() == DType::boolean && mask.shape() == ids.shape(), op,
              ": padding_mask must be bool of the ids' shape ", shape_string(ids.shape()), ", got ",
              dtype_name(mask.dtype()), " ", shape_string(mask.shape()));
  } else if (config_.padding_idx) {
    const Tensor i64 = ids.to(DType::i64).contiguous();
    mask = Tensor::empty(ids.shape(), DType::boolean);
    const int64_t pad = *embedding_->config().padding_idx;
    for (int64_t i = 0; i < i64.numel(); ++i) mask.data<bool>()[i] = i64.data<int64_t>()[i] == pad;
  }
  Variable x = embedding_->forward(ids);  // [B, L, d]
  x = autograd::add(x, position_embedding_
                           ? position_embedding_->forward(Tensor::arange(l, DType::i64))
                           : Variable(sinusoidal_.narrow(0, 0, l)));
  // Pooling is attention with one learned query, one head and the default
  // scale 1 / sqrt(d): the fused kernel's key padding mask is the softmax
  // over the non-padding positions. The query is broadcast over the batch
  // by an add (its gradient sums back over B).
  const Variable q =
      autograd::add(Variable(Tensor::zeros({b, 1, 1, d})), autograd::reshape(query_, {1, 1, 1, d}));
  const Variable kv = autograd::reshape(x, {b, l, 1, d});
  AttentionOptions o;
  o.layout = AttentionLayout::blhd;
  o.key_padding_mask = mask;
  const Variable pooled = autograd::reshape(autograd::attention(q, kv, kv, o), {b, d});
  return classifier_->forward(pooled);
}

}  // namespace qkv::nn
