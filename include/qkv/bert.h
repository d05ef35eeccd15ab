// BERT-family encoders (SPEC §4, §8; Devlin et al. 2019) loaded from Hugging
// Face model directories, and sentence embeddings on top of them:
//
//   auto bert = nn::BertModel::from_pretrained("all-MiniLM-L6-v2");   // config.json + safetensors
//   nn::BertOutput out = bert->forward(ids, attention_mask);          // ids, mask [B, L]
//   out.last_hidden_state;   // [B, L, H]
//   out.pooler_output;       // [B, H]
//
//   SentenceEncoder encoder = SentenceEncoder::load("all-MiniLM-L6-v2");
//   Tensor e = encoder.embed(ids, attention_mask);                    // [B, H], unit rows
//
// Parameter names are transformers' BertModel state_dict keys:
//   embeddings.{word,position,token_type}_embeddings.weight
//   embeddings.LayerNorm.{weight,bias}
//   encoder.layer.N.attention.self.{query,key,value}.{weight,bias}
//   encoder.layer.N.attention.output.dense.{weight,bias}
//   encoder.layer.N.attention.output.LayerNorm.{weight,bias}
//   encoder.layer.N.intermediate.dense.{weight,bias}
//   encoder.layer.N.output.dense.{weight,bias}
//   encoder.layer.N.output.LayerNorm.{weight,bias}
//   pooler.dense.{weight,bias}
// Each layer is post-norm: x = LN(x + dropout(attn(x))), x = LN(x + dropout(ffn(x))).
// The model lives on qkv autograd (a Module: train / eval, named parameters,
// strict load), so it can be fine-tuned; inference runs under NoGradGuard.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qkv/autograd.h"
#include "qkv/layers.h"
#include "qkv/module.h"
#include "qkv/names.h"
#include "qkv/tensor.h"
#include "qkv/wordpiece.h"

namespace qkv::nn {

// transformers' BertConfig: the fields of config.json a BERT encoder reads,
// with its defaults (bert-base) for the ones a file leaves out.
struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  // "gelu" (exact, erf), "gelu_new" / "gelu_pytorch_tanh" / "gelu_fast" (the
  // tanh form), "relu", "silu" / "swish".
  std::string hidden_act = "gelu";
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  double initializer_range = 0.02;          // N(0, this) weights at initialisation
  std::optional<int64_t> pad_token_id = 0;  // the word embedding row without gradient
  bool add_pooling_layer = true;            // not in config.json: whether "pooler.*" exists

  // config.json's text -> config. Unknown keys are ignored, as transformers
  // does; a field of the wrong type, model_type other than "bert", an
  // architecture that is not a BERT encoder, position_embedding_type other
  // than "absolute", is_decoder or add_cross_attention -> qkv::Error naming
  // the field and value. `source` names the file in messages.
  static BertConfig from_json(const std::string& text, const std::string& source = "config.json");
  // config.json as transformers writes it (model_type "bert", architectures
  // ["BertModel"]).
  std::string to_json() const;
  void validate() const;  // qkv::Error naming the bad field and value
};

struct BertOutput {
  autograd::Variable last_hidden_state;  // [B, L, H]
  autograd::Variable pooler_output;  // [B, H]: tanh(dense(first token)); undefined without a pooler
  std::vector<Tensor> attentions;    // per layer f32 [B, heads, L, L], when asked for
};

struct BertForwardOptions {
  bool output_attentions = false;  // each layer's attention weights (before dropout, no gradient)
  bool pooler = true;              // false: skip the pooler (pooler_output undefined)
};

class BertModel : public Module {
 public:
  // Initialised as transformers does: N(0, initializer_range) weights and
  // embeddings (the pad_token_id row zero), zero biases, LayerNorms 1 / 0.
  BertModel(const BertConfig& config, Generator& generator);

  // A Hugging Face model directory: config.json and model.safetensors, or the
  // shards model.safetensors.index.json lists; f16 / bf16 weights converted to
  // f32. Checkpoints of BertFor* heads load too: their "bert." weights are the
  // model's and the head's are left out. A checkpoint without "pooler.*" gives
  // a model without a pooler. Strict otherwise: qkv::Error listing the missing,
  // unexpected and mismatched names. A missing or corrupt file, or only
  // pytorch_model.bin: one qkv::Error naming the file.
  static std::shared_ptr<BertModel> from_pretrained(const std::string& dir);
  // config.json and model.safetensors in `dir` (created), loadable by
  // transformers' BertModel.from_pretrained and by from_pretrained above.
  void save_pretrained(const std::string& dir) const;

  // input_ids [B, L] (i32 / i64, L <= max_position_embeddings);
  // attention_mask [B, L] (any dtype, nonzero = token, 0 = padding; default:
  // all tokens); token_type_ids [B, L] (default: all 0). Padding keys are
  // never attended (the fused kernel's key-padding mask); padding positions
  // still get hidden states, as in transformers. (A row whose mask is all 0
  // has nothing to attend: its attention outputs are 0, where transformers
  // spreads the weights evenly over the padding.)
  BertOutput forward(const Tensor& input_ids, const Tensor& attention_mask = Tensor(),
                     const Tensor& token_type_ids = Tensor(),
                     const BertForwardOptions& options = {});

  const BertConfig& config() const { return config_; }
  // "embeddings.word_embeddings.weight" [vocab, H] (a masked-LM head ties to it).
  const autograd::Variable& word_embeddings() const;
  const char* type_name() const override { return "BertModel"; }

 private:
  class Layer;
  // The modules with their parameters allocated; `initialise`: filled as
  // transformers initialises them (from_pretrained loads instead).
  BertModel(const BertConfig& config, Generator& generator, bool initialise);
  BertConfig config_;
  std::shared_ptr<Embedding> word_embeddings_, position_embeddings_, token_type_embeddings_;
  std::shared_ptr<LayerNorm> embeddings_norm_;
  std::shared_ptr<Dropout> embeddings_dropout_;
  std::vector<std::shared_ptr<Layer>> layers_;
  std::shared_ptr<Linear> pooler_;
};

// Every tensor of a Hugging Face model directory as stored (model.safetensors
// or the shards of model.safetensors.index.json; zero-copy views, stored
// dtypes): a BertFor* head's weights ("classifier.*", "cls.*") included.
std::map<std::string, Tensor> load_pretrained_weights(const std::string& dir);
// The weights of a BERT checkpoint directory under BertModel's names (see
// from_pretrained: "bert." stripped, heads and non-persistent buffers left
// out), for modules that hold a BertModel and a head of their own.
std::map<std::string, Tensor> load_bert_weights(const std::string& dir);
// <dir>/config.json as a BertConfig (add_pooling_layer false when the
// directory's weights have no pooler).
BertConfig load_bert_config(const std::string& dir);

}  // namespace qkv::nn

namespace qkv {

// How token vectors become one sentence vector (sentence-transformers'
// Pooling): over the positions the attention mask keeps.
enum class SentencePooling {
  mean,           // sum / count
  cls,            // the first token kept
  max,            // element-wise maximum
  mean_sqrt_len,  // sum / sqrt(count) ("mean_sqrt_len_tokens")
};
// sentence-transformers' PoolingMode names.
inline constexpr EnumNames<SentencePooling, 4> kSentencePoolingNames{{
    {SentencePooling::mean, "mean"},
    {SentencePooling::cls, "cls"},
    {SentencePooling::max, "max"},
    {SentencePooling::mean_sqrt_len, "mean_sqrt_len_tokens"},
}};
inline const char* sentence_pooling_name(SentencePooling p) {
  return name_of(kSentencePoolingNames, p).data();
}

// hidden [B, L, H], attention_mask [B, L] (nonzero = token; undefined: all)
// -> f32 [B, H]. A row without tokens pools to 0 (mean) as sentence-transformers'
// clamp of the count does.
Tensor pool_tokens(const Tensor& hidden, const Tensor& attention_mask, SentencePooling pooling);
// Each row divided by its L2 norm (torch.nn.functional.normalize: max(norm, 1e-12)).
Tensor l2_normalize_rows(const Tensor& x);

struct SentenceEncoderOptions {
  // f32, or bf16: the encoder's matrix products and attention on bf16 (f32
  // accumulation), everything else f32.
  DType dtype = DType::f32;
  std::optional<bool> normalize;  // overrides the directory's Normalize module
};

// A sentence-transformers model: a BERT encoder, pooling and optional L2
// normalisation, read from the directory's modules.json, 1_Pooling/config.json
// and sentence_bert_config.json (all-MiniLM-L6-v2: mean pooling, normalised,
// max_seq_length 256), and its WordPiece tokenizer (tokenizer.json or
// vocab.txt). A plain BERT directory (no modules.json) gets mean pooling
// without normalisation, as sentence-transformers builds it.
//
//   SentenceEncoder encoder = SentenceEncoder::load("all-MiniLM-L6-v2");
//   Tensor e = encoder.embed(std::vector<std::string>{"a gorgeous movie", "dull"});  // [2, 384]
class SentenceEncoder {
 public:
  static SentenceEncoder load(const std::string& dir, const SentenceEncoderOptions& options = {});

  // Texts -> f32 [N, H], as sentence-transformers' encode: each text
  // tokenised ([CLS] ... [SEP], truncated to max_seq_length), run in batches
  // of `batch_size` texts of similar length (padded to the longest of the
  // batch), rows in the texts' order. qkv::Error when the directory has no
  // tokenizer.
  Tensor embed(const std::vector<std::string>& texts, int64_t batch_size = 32) const;
  // input_ids [B, L], attention_mask [B, L] (nonzero = token; default all),
  // token_type_ids [B, L] (default 0) -> f32 [B, H]. No gradient.
  Tensor embed(const Tensor& input_ids, const Tensor& attention_mask = Tensor(),
               const Tensor& token_type_ids = Tensor()) const;

  nn::BertModel& model() const { return *model_; }
  // The directory's tokenizer (truncation to max_seq_length, no padding);
  // null when the directory has neither tokenizer.json nor vocab.txt.
  const text::WordPiece* tokenizer() const { return tokenizer_.get(); }
  SentencePooling pooling() const { return pooling_; }
  bool normalize() const { return normalize_; }
  int64_t max_seq_length() const { return max_seq_length_; }  // tokens per text, specials included
  DType dtype() const { return dtype_; }
  int64_t dimension() const { return model_->config().hidden_size; }

 private:
  std::shared_ptr<nn::BertModel> model_;
  std::shared_ptr<const text::WordPiece> tokenizer_;
  std::string dir_;  // for error messages
  SentencePooling pooling_ = SentencePooling::mean;
  bool normalize_ = false;
  int64_t max_seq_length_ = 512;
  DType dtype_ = DType::f32;
};

}  // namespace qkv
