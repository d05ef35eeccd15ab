// Text classification and sentence embeddings on the qkv command:
//
//   qkv train --task classify   fine-tune a BERT directory with a classification head
//                               (--model), or train the attention-pooling classifier
//                               from scratch (--arch attention-pooling), on a TSV file
//   qkv train --task mlm        masked-language-model pretraining of a BERT encoder
//                               (from scratch, or continuing --model) on sentences
//   qkv classify MODEL_DIR      labels and probabilities of texts
//   qkv embed MODEL_DIR         sentence embeddings (sentence-transformers' pooling)
//
// A training run lives in one directory (--out):
//   config.json               the run's settings ("task": "classify" / "mlm"; --resume
//                             reads it back)
//   checkpoint.safetensors    model, optimizer, schedule, step
//   log.csv                   step, train loss, dev loss, dev accuracy, lr, sentences/s, elapsed
//   model/                    at the end: a Hugging Face directory (config.json with
//                             id2label, model.safetensors, the tokenizer files) that
//                             `qkv classify` and transformers load
// Every file is replaced atomically; model/ appears whole.
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace qkv::cli {

struct ClassifyConfig {
  std::string task = "classify";  // classify | mlm
  std::string arch = "bert";      // classify: bert | attention-pooling
  // data and model
  std::string model;      // a BERT directory to start from (classify bert: required)
  std::string tokenizer;  // a directory or vocab.txt / tokenizer.json (default: --model's)
  std::string train_data, dev_data;
  std::string label_names;  // "negative,positive"; default LABEL_0, LABEL_1, ...
  int64_t max_length = 128;
  // a new model (mlm without --model; attention-pooling)
  int64_t layers = 4, hidden = 256, heads = 4, intermediate = 1024;
  double dropout = 0.1;
  double mask_prob = 0.15;
  // optimisation
  int64_t steps = 1000, batch = 32, grad_accum = 1;
  double lr = 5e-5;
  int64_t warmup = 100;
  std::string schedule = "linear";  // linear | cosine | constant
  double weight_decay = 0.01, beta1 = 0.9, beta2 = 0.999, clip = 1.0;
  bool bf16 = false;
  // evaluation and checkpoints
  int64_t eval_interval = 200, eval_batch = 64, checkpoint_interval = 500;
  double time_limit = 0;
  uint64_t seed = 0;

  // f(name, field, help) for every setting: the flags of `qkv train --task
  // classify / mlm` (dashes for underscores), the keys of --config files and
  // of the run's config.json.
  template <class F>
  void fields(F&& f) {
    f("task", task, "classify or mlm (masked-language-model pretraining); lm: the GPT trainer");
    f("arch", arch, "classify: bert (a head on --model) or attention-pooling (from scratch)");
    f("model", model, "Hugging Face BERT directory to fine-tune (mlm: to continue pretraining)");
    f("tokenizer", tokenizer,
      "WordPiece vocabulary: a model directory, vocab.txt or tokenizer.json (default: --model's)");
    f("train_data", train_data,
      "Training data: TSV with a header, label (0, 1, ...) then sentence; mlm: also plain text, "
      "one sentence a line");
    f("dev_data", dev_data, "Development data, as --train-data (evaluated every --eval-interval)");
    f("label_names", label_names, "Names of the labels 0, 1, ..., comma-separated");
    f("max_length", max_length, "Tokens per sentence, [CLS] and [SEP] included (longer: cut)");
    f("layers", layers, "New BERT encoder (mlm from scratch): layers");
    f("hidden", hidden, "New model: width (BERT hidden_size, attention-pooling d_model)");
    f("heads", heads, "New BERT encoder: attention heads");
    f("intermediate", intermediate, "New BERT encoder: feed-forward width");
    f("dropout", dropout, "New BERT encoder: hidden and attention dropout");
    f("mask_prob", mask_prob, "mlm: fraction of tokens masked (80% [MASK], 10% random, 10% kept)");
    f("steps", steps, "Optimizer steps");
    f("batch", batch, "Sentences per micro-batch (similar lengths, padded)");
    f("grad_accum", grad_accum, "Micro-batches per optimizer step");
    f("lr", lr, "Peak learning rate (AdamW)");
    f("warmup", warmup, "Linear warm-up steps");
    f("schedule", schedule, "linear (decay to 0), cosine or constant");
    f("weight_decay", weight_decay, "AdamW weight decay");
    f("beta1", beta1, "AdamW beta1");
    f("beta2", beta2, "AdamW beta2");
    f("clip", clip, "Clip the global gradient norm to this (0: off)");
    f("bf16", bf16, "bf16 autocast with f32 master weights");
    f("eval_interval", eval_interval, "Steps between evaluations on --dev-data");
    f("eval_batch", eval_batch, "Sentences per evaluation batch");
    f("checkpoint_interval", checkpoint_interval, "Steps between checkpoints");
    f("time_limit", time_limit, "Stop after this many seconds of training (0: no limit)");
    f("seed", seed, "Seed of initialisation, data order, masking and dropout");
  }

  nlohmann::json to_json() const;
  // Sets the fields `json` names; qkv::Error for an unknown key or a value of
  // the wrong type, naming the key.
  void update_from_json(const nlohmann::json& json, const std::string& source);
  void validate() const;
};

struct ClassifyRun {
  std::string out;          // the run directory
  bool resume = false;      // continue the run in `out`
  bool overwrite = false;   // replace a run already in `out`
  bool quiet = false;       // no progress on stderr
  std::FILE* log = stdout;  // the report (stderr under --json)
};

// Runs the training; returns the result for --json (result["interrupted"]
// after Ctrl-C, which saves a checkpoint first).
nlohmann::json run_classify_train(const ClassifyConfig& config, const ClassifyRun& run);

struct ClassifyOptions {
  std::string model;  // a model directory, or a run directory holding model/
  std::vector<std::string> texts;
  std::string input;  // a file, one text a line (blank lines skipped)
  int64_t batch = 32;
};
nlohmann::json run_classify(const ClassifyOptions& options, std::FILE* log);

// The --text values and the lines of --input (blank lines skipped), for
// `qkv classify` and `qkv embed`; an empty --text or no text at all is an error.
std::vector<std::string> gather_texts(const std::vector<std::string>& texts,
                                      const std::string& input);

struct EmbedOptions {
  std::string model;  // a sentence-transformers or BERT directory
  std::vector<std::string> texts;
  std::string input;  // a file, one text a line (blank lines skipped)
  std::string out;    // .safetensors ("embeddings" [N, H]), .npy or .tsv; empty: none
  int64_t batch = 32;
  bool bf16 = false;
  bool json = false;  // the embeddings go into the JSON result when there is no --out
};
nlohmann::json run_embed(const EmbedOptions& options, std::FILE* log);

// `qkv info` of a `--task classify / mlm` run directory: its checkpoint,
// settings and final model directory; nullopt when `path` is no such run.
std::optional<nlohmann::json> encoder_run_info(const std::string& path, std::FILE* log);

}  // namespace qkv::cli
