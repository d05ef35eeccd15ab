// Transformer layers as nn::Modules on autograd (SPEC §4), with PyTorch's
// parameter names, default initialisation and forward semantics, so a
// state_dict moves between qkv and torch by name:
//
//   Generator gen(0);
//   nn::Transformer model({.d_model = 64, .nhead = 4, .batch_first = true}, gen);
//   model.load_state_dict(torch_state);   // "encoder.layers.0.self_attn.in_proj_weight", ...
//   autograd::Variable y = model.forward(src, tgt, {.tgt_is_causal = true});
//
// Each module takes its config and a Generator for its initialisation;
// modules with dropout own a generator seeded from it, and drop only in
// training mode (Module::train / eval).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qkv/attention_variant.h"
#include "qkv/autograd.h"
#include "qkv/module.h"
#include "qkv/names.h"
#include "qkv/tensor.h"

namespace qkv::nn {

// x W^T + b (torch.nn.Linear). weight [out, in], bias [out]; both
// U(-1/sqrt(in), 1/sqrt(in)) (torch's kaiming_uniform(a = sqrt 5)).
struct LinearConfig {
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool bias = true;
};

class Linear : public Module {
 public:
  Linear(const LinearConfig& config, Generator& generator);
  // Allocated, not initialised: for a model that initialises its own way
  // (transformers' _init_weights) or loads a checkpoint.
  explicit Linear(const LinearConfig& config);
  // x: [..., in] -> [..., out]
  autograd::Variable forward(const autograd::Variable& x) const;
  const LinearConfig& config() const { return config_; }
  const autograd::Variable& weight() const { return weight_; }
  const autograd::Variable& bias() const { return bias_; }  // undefined without bias
  const char* type_name() const override { return "Linear"; }

 private:
  LinearConfig config_;
  autograd::Variable weight_, bias_;
};

// A lookup table (torch.nn.Embedding): "weight" [num, dim] ~ N(0, 1), the
// padding row zero and without gradient.
struct EmbeddingConfig {
  int64_t num_embeddings = 0;
  int64_t embedding_dim = 0;
  std::optional<int64_t> padding_idx;  // negative counts from the end, as torch
};

class Embedding : public Module {
 public:
  Embedding(const EmbeddingConfig& config, Generator& generator);
  // Allocated, not initialised (as Linear's).
  explicit Embedding(const EmbeddingConfig& config);
  // Wraps trained vectors (GloVe, word2vec, a checkpoint) [num, dim]; frozen
  // ones get no gradient (torch.nn.Embedding.from_pretrained).
  static std::shared_ptr<Embedding> from_pretrained(const Tensor& weight, bool freeze = true,
                                                    std::optional<int64_t> padding_idx = {});
  // ids (i32 / i64, any shape) -> [..., dim]
  autograd::Variable forward(const Tensor& ids) const;
  const EmbeddingConfig& config() const { return config_; }
  const autograd::Variable& weight() const { return weight_; }
  const char* type_name() const override { return "Embedding"; }

 private:
  Embedding(const EmbeddingConfig& config, Tensor weight, bool requires_grad);
  EmbeddingConfig config_;
  autograd::Variable weight_;
};

// torch.nn.LayerNorm over the last dim: "weight" ones, "bias" zeros.
struct LayerNormConfig {
  int64_t dim = 0;
  double eps = 1e-5;
  bool elementwise_affine = true;
  bool bias = true;
};

class LayerNorm : public Module {
 public:
  LayerNorm(const LayerNormConfig& config, Generator& generator);
  autograd::Variable forward(const autograd::Variable& x) const;
  const LayerNormConfig& config() const { return config_; }
  const char* type_name() const override { return "LayerNorm"; }

 private:
  LayerNormConfig config_;
  autograd::Variable weight_, bias_;
};

// torch.nn.RMSNorm over the last dim: "weight" ones. eps defaults to f32's
// machine epsilon (torch's eps = None for f32 inputs).
struct RMSNormConfig {
  int64_t dim = 0;
  double eps = 1.1920928955078125e-07;
};

class RMSNorm : public Module {
 public:
  RMSNorm(const RMSNormConfig& config, Generator& generator);
  autograd::Variable forward(const autograd::Variable& x) const;
  const RMSNormConfig& config() const { return config_; }
  const char* type_name() const override { return "RMSNorm"; }

 private:
  RMSNormConfig config_;
  autograd::Variable weight_;
};

struct DropoutConfig {
  double p = 0.5;
};

// Zeroes with probability p and scales the rest by 1 / (1 - p), in training
// mode only; the masks come from the module's own generator.
class Dropout : public Module {
 public:
  Dropout(const DropoutConfig& config, Generator& generator);
  autograd::Variable forward(const autograd::Variable& x);
  const DropoutConfig& config() const { return config_; }
  const char* type_name() const override { return "Dropout"; }

 private:
  DropoutConfig config_;
  Generator generator_;
};

enum class Activation { relu, gelu, swiglu };  // gelu: the exact (erf) form, as torch's "gelu"
inline constexpr EnumNames<Activation, 3> kActivationNames{{
    {Activation::relu, "relu"}, {Activation::gelu, "gelu"}, {Activation::swiglu, "swiglu"}}};
inline const char* activation_name(Activation a) { return name_of(kActivationNames, a).data(); }

// The position-wise feed-forward block. relu / gelu as torch's encoder layer:
// linear2(dropout(act(linear1(x)))) ("linear1.*", "linear2.*"). swiglu as
// Llama (Shazeer 2020): w2(dropout(silu(w1 x) * w3 x)) ("w1.*", "w2.*", "w3.*").
struct FeedForwardConfig {
  int64_t d_model = 0;
  int64_t d_ff = 0;
  Activation activation = Activation::relu;
  bool bias = true;
  double dropout = 0.0;
};

class FeedForward : public Module {
 public:
  FeedForward(const FeedForwardConfig& config, Generator& generator);
  // x: [..., d_model] -> [..., d_model]
  autograd::Variable forward(const autograd::Variable& x);
  const FeedForwardConfig& config() const { return config_; }
  const char* type_name() const override { return "FeedForward"; }

 private:
  FeedForwardConfig config_;
  std::shared_ptr<Linear> in_, gate_, out_;  // linear1 / w1, w3 (swiglu), linear2 / w2
  std::shared_ptr<Dropout> dropout_;
};

// The masks of one attention call, in torch.nn.MultiheadAttention's
// conventions: a bool attn_mask is true where attention is NOT allowed, a
// float one is added to the scores; shape [Lq, Lk] or [B * H, Lq, Lk].
// key_padding_mask [B, Lk]: bool true = padding, or float (added). is_causal:
// query i sees keys j <= i (with an attn_mask as well, both apply).
struct AttentionMasks {
  Tensor attn_mask;
  Tensor key_padding_mask;
  bool is_causal = false;
};

// The names under which a model family's checkpoints keep an attention
// layer's projections. The input projection is packed (one [3E, E] weight and
// [3E] bias, q, k, v stacked: torch's in_proj_weight, nanoGPT's c_attn) or
// separate (one [E, E] weight and [E] bias each: BERT's self.query); the
// output projection is a Linear child named `output`.
struct AttentionNames {
  std::string packed_weight, packed_bias;  // empty: separate projections
  std::string query_weight, query_bias, key_weight, key_bias, value_weight, value_bias;
  std::string output;

  // torch.nn.MultiheadAttention: in_proj_weight, in_proj_bias, out_proj (with
  // kdim / vdim != E: q_proj_weight, k_proj_weight, v_proj_weight beside the
  // packed in_proj_bias, as torch does).
  static AttentionNames torch();
  // nanoGPT / GPT-2: c_attn.{weight,bias} packed, c_proj.
  static AttentionNames nanogpt();
  // transformers' BERT family (BertAttention): self.{query,key,value}.{weight,bias},
  // output.dense.
  static AttentionNames bert();
};

// How an attention layer fills its parameters when it is made.
enum class AttentionInit {
  torch,  // torch's _reset_parameters: Xavier-uniform projections, zero biases
  none,   // allocated only, nothing drawn: the model initialises or loads them,
          // and gives dropout seeds per call (AttentionCall::dropout_seed)
};

// The keys and values one attention layer has seen, for incremental
// decoding: [B, H, capacity, Dh] f32 each, of which the first length()
// positions are filled. A decoder holds one per self-attention layer (KVCache).
class AttentionCache {
 public:
  AttentionCache() = default;
  AttentionCache(int64_t batch, int64_t heads, int64_t capacity, int64_t head_dim);
  int64_t length() const { return length_; }
  int64_t capacity() const { return keys_.defined() ? keys_.size(2) : 0; }
  int64_t batch() const { return keys_.defined() ? keys_.size(0) : 0; }
  int64_t heads() const { return keys_.defined() ? keys_.size(1) : 0; }
  int64_t head_dim() const { return keys_.defined() ? keys_.size(3) : 0; }
  void clear() { length_ = 0; }
  // Appends k, v [B, T, H, Dh] at length() and returns every key and value
  // so far, [B, H, length() + T, Dh] views; length() grows by T. qkv::Error
  // (naming `op`) when the shapes differ from the cache's or T passes the capacity.
  std::pair<Tensor, Tensor> append(const Tensor& k, const Tensor& v, const char* op);
  // Every key and value so far, [B, H, length(), Dh] views.
  std::pair<Tensor, Tensor> contents() const;

 private:
  Tensor keys_, values_;
  int64_t length_ = 0;
};

// One AttentionCache per layer of a decoder, filled in step.
class KVCache {
 public:
  KVCache() = default;
  KVCache(int64_t layers, int64_t batch, int64_t heads, int64_t capacity, int64_t head_dim);
  int64_t length() const { return layers_.empty() ? 0 : layers_.front().length(); }
  int64_t capacity() const { return layers_.empty() ? 0 : layers_.front().capacity(); }
  int64_t batch() const { return layers_.empty() ? 0 : layers_.front().batch(); }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  AttentionCache& layer(int64_t i) { return layers_.at(static_cast<size_t>(i)); }
  const AttentionCache& layer(int64_t i) const { return layers_.at(static_cast<size_t>(i)); }
  void clear();

 private:
  std::vector<AttentionCache> layers_;
};

// The decoding state of a TransformerDecoder: per layer, the self-attention's
// keys and values so far (a KVCache) and the cross-attention's keys and
// values of the memory (projected on the first step, reused after).
class DecoderCache {
 public:
  DecoderCache() = default;
  DecoderCache(int64_t layers, int64_t batch, int64_t heads, int64_t capacity, int64_t head_dim)
      : self_(layers, batch, heads, capacity, head_dim), cross_(static_cast<size_t>(layers)) {}
  int64_t length() const { return self_.length(); }  // target positions decoded
  int64_t capacity() const { return self_.capacity(); }
  int64_t batch() const { return self_.batch(); }
  int64_t num_layers() const { return self_.num_layers(); }
  AttentionCache& self_attention(int64_t layer) { return self_.layer(layer); }
  AttentionCache& cross_attention(int64_t layer) { return cross_.at(static_cast<size_t>(layer)); }
  // Both emptied: the next step starts a new target over a new memory.
  void clear();

 private:
  KVCache self_;
  std::vector<AttentionCache> cross_;
};

// One attention call beyond torch's masks: a decoder's cache, the model's
// dropout stream, the weights to show.
struct AttentionCall {
  AttentionMasks masks;
  // Decoding (no gradient). Self-attention: append this call's keys and
  // values and attend over every cached one (the queries are positions
  // length() .. + T: rotary offset, bottom-right causal). Cross-attention:
  // the memory's keys and values, projected into an empty cache on the first
  // call and reused after.
  AttentionCache* cache = nullptr;
  // Training: the dropout mask's seed from the model's stream (GPT), instead
  // of the layer's own (AttentionInit::torch layers have one).
  std::optional<uint64_t> dropout_seed;
  // Every head's weights [B, H, Lq, Lk] (before dropout, no gradient).
  Tensor* weights = nullptr;
};

// Multi-head attention as a Module with torch.nn.MultiheadAttention's
// parameters (or a family's: config.names): "in_proj_weight" [3E, E] (or
// "q_proj_weight", "k_proj_weight", "v_proj_weight" when kdim / vdim differ
// from E), "in_proj_bias",
// "out_proj.weight", "out_proj.bias"; Xavier-uniform projections, zero biases.
// Any attention variant (qkv/attention_variant.h, the base: config.positions,
// config.kernel, ...) adds its learned tensors under the variants' names
// ("relative_attention_bias.weight", "relative_key", "relative_value",
// "linformer_e", "linformer_f"), drawn after torch's parameters.
struct AttentionConfig : AttentionVariant {
  int64_t embed_dim = 0;
  int64_t num_heads = 1;
  double dropout = 0.0;  // on the attention weights, in training mode
  bool bias = true;
  int64_t kdim = 0;  // 0: embed_dim
  int64_t vdim = 0;  // 0: embed_dim
  bool batch_first = false;
  AttentionNames names = AttentionNames::torch();
  AttentionInit init = AttentionInit::torch;
};

class Attention : public Module {
 public:
  Attention(const AttentionConfig& config, Generator& generator);
  // query [B, Lq, E] (batch_first) or [Lq, B, E]; key, value with kdim / vdim
  // features and Lk positions -> like query. The projections are viewed as
  // [B, L, H, Dh] for the fused attention (no copies).
  autograd::Variable forward(const autograd::Variable& query, const autograd::Variable& key,
                             const autograd::Variable& value, const AttentionMasks& masks = {});
  // The output and the attention weights (before dropout, without gradient):
  // [B, Lq, Lk] averaged over heads, or [B, H, Lq, Lk] (torch's need_weights).
  struct WithWeights {
    autograd::Variable output;
    Tensor weights;
  };
  WithWeights forward_with_weights(const autograd::Variable& query, const autograd::Variable& key,
                                   const autograd::Variable& value,
                                   const AttentionMasks& masks = {},
                                   bool average_attn_weights = true);
  // Self-attention of x [B, L, E] (batch_first) or [L, B, E] -> like x: one
  // input projection when it is packed, recorded as one op with one packed
  // gradient where the variant allows (softmax without learned positions).
  autograd::Variable forward(const autograd::Variable& x, const AttentionCall& call);
  // Cross-attention of query [B, Lq, E] over memory [B, Ls, kdim] (or
  // sequence first) -> like query. With call.cache the memory is read on the
  // first call only (an empty cache; a default-constructed one takes the
  // memory's sizes) and may be undefined after.
  autograd::Variable forward(const autograd::Variable& query, const autograd::Variable& memory,
                             const AttentionCall& call);
  const AttentionConfig& config() const { return config_; }
  const char* type_name() const override { return "MultiheadAttention"; }
  // Performer: draws new random features (the paper redraws them during training).
  void redraw_features(uint64_t seed);
  // The projections (for a model's own initialisation): the packed [3E, E]
  // weight and [3E] bias (undefined when separate or without bias), the
  // separate q, k, v weights and biases (i = 0, 1, 2), the output Linear.
  const autograd::Variable& packed_weight() const { return in_proj_weight_; }
  const autograd::Variable& packed_bias() const { return in_proj_bias_; }
  const autograd::Variable& separate_weight(int i) const { return separate_weight_.at(i); }
  const autograd::Variable& separate_bias(int i) const { return separate_bias_.at(i); }
  Linear& output_projection() const { return *out_proj_; }

 private:
  // torch's masks as the fused kernel's options, checked against the sizes.
  AttentionOptions mask_options(const AttentionMasks& masks, int64_t batch, int64_t lq,
                                int64_t lk) const;
  // The dropout of one training call: the call's seed or the layer's stream.
  void set_dropout(AttentionOptions& o, const std::optional<uint64_t>& seed);
  // Whether self-attention runs as one packed op (no learned positions, softmax).
  bool packed_op() const;
  // The rotation of the heads' q and k (offset 0), or nullopt without rotary positions.
  std::optional<RotaryOptions> head_rotary() const;
  // The softmax kernel's modifiers of the variant: its mask_mod and fixed score_mod (ALiBi).
  void add_modifiers(AttentionOptions& o) const;
  // The bias of projection i (0: q, 1: k, 2: v): a slice of the packed one,
  // the separate one, or undefined.
  autograd::Variable input_bias(int which) const;
  WithWeights run(const autograd::Variable& query, const autograd::Variable& key,
                  const autograd::Variable& value, const AttentionMasks& masks, bool weights,
                  bool average, const std::optional<uint64_t>& dropout_seed = std::nullopt);
  // x [B, L, in] -> projection `which` (0: q, 1: k, 2: v) as [B, L, H, Dh].
  autograd::Variable project(int which, const autograd::Variable& x) const;
  // A cached call's checks: no gradient, a variant the cache serves, no weights.
  void check_cacheable(const char* op, const AttentionCall& call) const;
  // q [B, L, H, Dh] over a cache's keys, values [B, H, Lk, Dh] -> [B, L, H, Dh]
  // (query i is key position Lk - L + i for is_causal).
  Tensor attend_cached(const Tensor& q, const Tensor& keys, const Tensor& values,
                       const AttentionMasks& masks) const;
  // The heads' attention of the variant: q, k, v [B, L, H, Dh] -> [B, Lq, H, Dh];
  // with `weights`, also the weights of every head [B, H, Lq, Lk] (no gradient).
  autograd::Variable attend(const autograd::Variable& q, const autograd::Variable& k,
                            const autograd::Variable& v, AttentionOptions options,
                            Tensor* weights);
  AttentionConfig config_;
  autograd::Variable in_proj_weight_, in_proj_bias_;     // packed
  std::array<autograd::Variable, 3> separate_weight_, separate_bias_;  // q, k, v
  std::shared_ptr<Linear> out_proj_;
  std::optional<Generator> dropout_generator_;  // AttentionInit::torch only
  std::map<std::string, autograd::Variable> variant_;  // the variant's learned tensors
  Tensor performer_projection_;                        // [m, Dh], performer only
};

// torch.nn.TransformerEncoderLayer / TransformerDecoderLayer (Vaswani et al.
// 2017; norm_first: the pre-norm of Xiong et al. 2020), with torch's names:
// self_attn, [multihead_attn,] linear1, dropout, linear2, norm1, norm2,
// [norm3,] dropout1, dropout2[, dropout3].
struct TransformerLayerConfig {
  int64_t d_model = 512;
  int64_t nhead = 8;
  int64_t dim_feedforward = 2048;
  double dropout = 0.1;
  Activation activation = Activation::relu;  // relu or gelu
  double layer_norm_eps = 1e-5;
  bool batch_first = false;
  bool norm_first = false;
  bool bias = true;
  // The self-attention's variant (qkv/attention_variant.h): ALiBi, T5, Shaw or
  // rotary positions, a linear kernel, a mask_mod. Cross-attention stays plain.
  AttentionVariant self_attention;
};

class TransformerEncoderLayer : public Module {
 public:
  TransformerEncoderLayer(const TransformerLayerConfig& config, Generator& generator);
  // src [B, L, d_model] (batch_first) or [L, B, d_model]
  autograd::Variable forward(const autograd::Variable& src, const AttentionMasks& src_masks = {});
  const TransformerLayerConfig& config() const { return config_; }
  const char* type_name() const override { return "TransformerEncoderLayer"; }

 private:
  TransformerLayerConfig config_;
  std::shared_ptr<Attention> self_attn_;
  std::shared_ptr<Linear> linear1_, linear2_;
  std::shared_ptr<LayerNorm> norm1_, norm2_;
  std::shared_ptr<Dropout> dropout_, dropout1_, dropout2_;
};

class TransformerDecoderLayer : public Module {
 public:
  TransformerDecoderLayer(const TransformerLayerConfig& config, Generator& generator);
  // tgt [B, Lt, d_model], memory [B, Ls, d_model] (or sequence first).
  autograd::Variable forward(const autograd::Variable& tgt, const autograd::Variable& memory,
                             const AttentionMasks& tgt_masks = {},
                             const AttentionMasks& memory_masks = {});
  // Incremental decoding in eval mode, without gradient: tgt holds the new
  // positions [B, T, d_model], causal over everything `self_cache` holds;
  // the memory is read while `cross_cache` is empty. Equals forward() with
  // tgt_masks.is_causal on the whole prefix, within f32 tolerance.
  autograd::Variable forward_cached(const autograd::Variable& tgt, const autograd::Variable& memory,
                                    AttentionCache& self_cache, AttentionCache& cross_cache,
                                    const AttentionMasks& memory_masks = {});
  const TransformerLayerConfig& config() const { return config_; }
  const char* type_name() const override { return "TransformerDecoderLayer"; }

 private:
  // The three residual blocks around the given attentions (norm_first or post-norm).
  autograd::Variable blocks(const autograd::Variable& tgt,
                            const std::function<autograd::Variable(const autograd::Variable&)>&
                                self_attention,
                            const std::function<autograd::Variable(const autograd::Variable&)>&
                                cross_attention);
  TransformerLayerConfig config_;
  std::shared_ptr<Attention> self_attn_, multihead_attn_;
  std::shared_ptr<Linear> linear1_, linear2_;
  std::shared_ptr<LayerNorm> norm1_, norm2_, norm3_;
  std::shared_ptr<Dropout> dropout_, dropout1_, dropout2_, dropout3_;
};

// A stack of layers ("layers.N.") and an optional final LayerNorm ("norm.").
struct TransformerStackConfig {
  TransformerLayerConfig layer;
  int64_t num_layers = 6;
  bool norm = false;  // a final LayerNorm (layer.layer_norm_eps, layer.bias)
};

class TransformerEncoder : public Module {
 public:
  TransformerEncoder(const TransformerStackConfig& config, Generator& generator);
  autograd::Variable forward(const autograd::Variable& src, const AttentionMasks& src_masks = {});
  const TransformerStackConfig& config() const { return config_; }
  const char* type_name() const override { return "TransformerEncoder"; }

 private:
  TransformerStackConfig config_;
  std::vector<std::shared_ptr<TransformerEncoderLayer>> layers_;
  std::shared_ptr<LayerNorm> norm_;
};

class TransformerDecoder : public Module {
 public:
  TransformerDecoder(const TransformerStackConfig& config, Generator& generator);
  autograd::Variable forward(const autograd::Variable& tgt, const autograd::Variable& memory,
                             const AttentionMasks& tgt_masks = {},
                             const AttentionMasks& memory_masks = {});
  // Incremental decoding (TransformerDecoderLayer::forward_cached per layer,
  // then the final norm): appends tgt's positions to `cache`.
  autograd::Variable forward_cached(const autograd::Variable& tgt, const autograd::Variable& memory,
                                    DecoderCache& cache, const AttentionMasks& memory_masks = {});
  // A cache for `batch` sequences of up to `capacity` target positions.
  DecoderCache make_cache(int64_t batch, int64_t capacity) const;
  const TransformerStackConfig& config() const { return config_; }
  const char* type_name() const override { return "TransformerDecoder"; }

 private:
  TransformerStackConfig config_;
  std::vector<std::shared_ptr<TransformerDecoderLayer>> layers_;
  std::shared_ptr<LayerNorm> norm_;
};

// torch.nn.Transformer: "encoder.*" and "decoder.*" with final norms; every
// parameter of dim > 1 Xavier-uniform (its _reset_parameters).
struct TransformerConfig {
  int64_t d_model = 512;
  int64_t nhead = 8;
  int64_t num_encoder_layers = 6;
  int64_t num_decoder_layers = 6;
  int64_t dim_feedforward = 2048;
  double dropout = 0.1;
  Activation activation = Activation::relu;
  double layer_norm_eps = 1e-5;
  bool batch_first = false;
  bool norm_first = false;
  bool bias = true;
  // Every encoder and decoder layer's self-attention variant (TransformerLayerConfig).
  AttentionVariant self_attention;
};

// torch.nn.Transformer.forward's masks (memory_mask: [Lt, Ls]).
struct TransformerMasks {
  Tensor src_mask, tgt_mask, memory_mask;
  Tensor src_key_padding_mask, tgt_key_padding_mask, memory_key_padding_mask;
  bool src_is_causal = false;
  bool tgt_is_causal = false;
  bool memory_is_causal = false;
};

class Transformer : public Module {
 public:
  Transformer(const TransformerConfig& config, Generator& generator);
  // src [B, Ls, d_model], tgt [B, Lt, d_model] (or sequence first) -> like tgt.
  autograd::Variable forward(const autograd::Variable& src, const autograd::Variable& tgt,
                             const TransformerMasks& masks = {});
  const TransformerConfig& config() const { return config_; }
  TransformerEncoder& encoder() { return *encoder_; }
  TransformerDecoder& decoder() { return *decoder_; }
  const char* type_name() const override { return "Transformer"; }

 private:
  TransformerConfig config_;
  std::shared_ptr<TransformerEncoder> encoder_;
  std::shared_ptr<TransformerDecoder> decoder_;
};

// The attention-pooling classifier (SPEC §4): token embeddings plus a
// positional encoding, pooled over positions by one learned query w
// (scores = x w / sqrt(d), softmax over the non-padding positions,
// pooled = sum softmax * x), then a Linear to logits (the softmax is in the
// loss). Parameters: "embedding.weight", "position_embedding.weight"
// (learned only), "query" [d_model], "classifier.weight", "classifier.bias".
enum class PositionalEncoding { sinusoidal, learned };

struct AttentionPoolingClassifierConfig {
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t max_len = 0;
  int64_t num_classes = 0;
  PositionalEncoding positional = PositionalEncoding::sinusoidal;
  std::optional<int64_t> padding_idx;  // its positions are not pooled
};

class AttentionPoolingClassifier : public Module {
 public:
  AttentionPoolingClassifier(const AttentionPoolingClassifierConfig& config, Generator& generator);
  // ids [B, L] -> logits [B, num_classes]. padding_mask [B, L] (true =
  // padding) defaults to ids == padding_idx; a row must keep one position.
  autograd::Variable forward(const Tensor& ids, const Tensor& padding_mask = Tensor());
  const AttentionPoolingClassifierConfig& config() const { return config_; }
  const char* type_name() const override { return "AttentionPoolingClassifier"; }

 private:
  AttentionPoolingClassifierConfig config_;
  std::shared_ptr<Embedding> embedding_, position_embedding_;
  autograd::Variable query_;
  std::shared_ptr<Linear> classifier_;
  Tensor sinusoidal_;  // [max_len, d_model]
};

}  // namespace qkv::nn
