// Heads on a BERT encoder (SPEC §4), as transformers' BertForSequenceClassification
// and BertForMaskedLM, with transformers' parameter names so the directories
// they save load in transformers and back:
//
//   BertForSequenceClassification      "bert.*" (a BertModel with its pooler),
//                                      "classifier.weight" [K, H], "classifier.bias" [K]
//   BertForMaskedLM                    "bert.*" (no pooler),
//                                      "cls.predictions.transform.dense.{weight,bias}",
//                                      "cls.predictions.transform.LayerNorm.{weight,bias}",
//                                      "cls.predictions.bias" [V]; the decoder's weight
//                                      is the word embeddings (tied, not saved twice)
//
//   Generator gen(0);
//   auto model = BertForSequenceClassification::from_encoder("all-MiniLM-L6-v2",
//                                                            {"negative", "positive"}, gen);
//   Variable logits = model->forward(ids, mask);            // [B, K]
//   model->save_pretrained("sst2-minilm");                  // config.json with id2label
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qkv/autograd.h"
#include "qkv/bert.h"
#include "qkv/layers.h"
#include "qkv/module.h"
#include "qkv/tensor.h"

namespace qkv::nn {

// dropout(pooler_output) -> Linear -> logits; the dropout is config.json's
// classifier_dropout when set, else hidden_dropout_prob (as transformers).
class BertForSequenceClassification : public Module {
 public:
  // A new head on `bert` (which must have a pooler): the classifier's weight
  // N(0, initializer_range), bias 0, as transformers initialises it. `labels`
  // names the classes (id2label), at least two. classifier_dropout unset:
  // the encoder's hidden_dropout_prob.
  BertForSequenceClassification(std::shared_ptr<BertModel> bert, std::vector<std::string> labels,
                                Generator& generator,
                                std::optional<double> classifier_dropout = std::nullopt);
  // The encoder of any BERT directory (BertModel, BertForMaskedLM, a
  // sentence-transformers model, ...) with a new head; a directory without
  // pooler weights gets a pooler initialised as transformers would.
  static std::shared_ptr<BertForSequenceClassification> from_encoder(
      const std::string& dir, std::vector<std::string> labels, Generator& generator);
  // A BertForSequenceClassification directory (transformers' or
  // save_pretrained's): config.json's architectures must name it; the labels
  // come from id2label (num_labels LABEL_i names when it is absent). Errors
  // name the file and what is wrong. In eval mode.
  static std::shared_ptr<BertForSequenceClassification> from_pretrained(const std::string& dir);
  // config.json (architectures ["BertForSequenceClassification"], id2label,
  // label2id) and model.safetensors in `dir`, each written atomically.
  void save_pretrained(const std::string& dir) const;

  // input_ids, attention_mask, token_type_ids [B, L] as BertModel::forward
  // -> logits [B, K] (f32).
  autograd::Variable forward(const Tensor& input_ids, const Tensor& attention_mask = Tensor(),
                             const Tensor& token_type_ids = Tensor());

  BertModel& bert() const { return *bert_; }
  const std::vector<std::string>& labels() const { return labels_; }
  int64_t num_labels() const { return static_cast<int64_t>(labels_.size()); }
  const char* type_name() const override { return "BertForSequenceClassification"; }

 private:
  std::shared_ptr<BertModel> bert_;
  std::vector<std::string> labels_;
  double classifier_dropout_;
  std::shared_ptr<Dropout> dropout_;
  std::shared_ptr<Linear> classifier_;
};

// The masked-language-model head of BERT pretraining (Devlin et al. 2019,
// §3.1): transform = LayerNorm(gelu(dense(h))), logits = transform W_e^T + b
// with W_e the word embeddings.
class BertForMaskedLM : public Module {
 public:
  // A new model initialised as transformers does (config.add_pooling_layer is
  // ignored: BertForMaskedLM has no pooler).
  BertForMaskedLM(const BertConfig& config, Generator& generator);
  // A BertForMaskedLM / BertForPreTraining directory (the next-sentence head
  // of the latter is left out).
  static std::shared_ptr<BertForMaskedLM> from_pretrained(const std::string& dir);
  // config.json (architectures ["BertForMaskedLM"]) and model.safetensors.
  void save_pretrained(const std::string& dir) const;

  // Logits of the vocabulary at `positions` only (i32 / i64 [N], flat
  // indices b * L + l into input_ids [B, L]) -> [N, vocab]: a masked-LM loss
  // needs the masked positions, and the vocabulary product is most of the
  // head's work.
  autograd::Variable forward(const Tensor& input_ids, const Tensor& attention_mask,
                             const Tensor& positions);

  BertModel& bert() const { return *bert_; }
  const char* type_name() const override { return "BertForMaskedLM"; }

 private:
  BertForMaskedLM(std::shared_ptr<BertModel> bert, Generator& generator, bool initialise);
  std::shared_ptr<BertModel> bert_;
  std::shared_ptr<Linear> transform_;
  std::shared_ptr<LayerNorm> transform_norm_;
  autograd::Variable bias_;
};

}  // namespace qkv::nn
