// `qkv train`: a GPT language model on a text corpus (Tiny Shakespeare by
// default), with periodic validation, checkpoints that resume exactly, a
// loss curve, Ctrl-C handling and a sample of generated text at the end.
//
// A run lives in one directory (--out):
//   config.json               the full configuration (what --resume reads back)
//   char_tokenizer.json       or vocab.json + merges.txt
//   checkpoint.safetensors    model, optimizer, schedule, RNG states, step
//   loss.csv                  step, train loss, validation loss, lr, tokens/s, elapsed
// Every file is replaced atomically.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "qkv/gpt.h"

namespace qkv::cli {

struct TrainConfig {
  // data
  std::string data;                 // UTF-8 text file
  std::string tokenizer = "char";   // char | bpe
  int64_t bpe_vocab = 512;
  double val_fraction = 0.1;        // the last part of the corpus
  // model
  int64_t layers = 4, heads = 4, d_model = 128, context = 128;
  double dropout = 0.0;
  std::string positions = "learned";  // learned | rotary
  bool untied = false;
  // optimisation
  int64_t steps = 1000, batch = 32, grad_accum = 1;
  double lr = 2e-3, min_lr_ratio = 0.1;
  int64_t warmup = 100;
  std::string schedule = "cosine";  // cosine | linear | constant
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.99, clip = 1.0;
  bool bf16 = false;
  // evaluation, checkpoints, sampling
  int64_t eval_interval = 250;   // steps between validation passes
  int64_t eval_windows = 0;      // validation windows per pass; 0: the whole split
  int64_t checkpoint_interval = 500;
  double time_limit = 0;         // seconds of training; 0: none
  int64_t sample_tokens = 300;
  std::string sample_prompt = "\n";
  double temperature = 0.8;
  int64_t top_k = 0;
  uint64_t seed = 0;

  // f(name, field, help) for every setting: the flags (--name with dashes),
  // the keys of a --config JSON file and of the run's config.json.
  template <class F>
  void fields(F&& f) {
    f("data", data, "UTF-8 text file to train on (default: the bundled Tiny Shakespeare)");
    f("tokenizer", tokenizer, "char or bpe (byte-level BPE trained on the training split)");
    f("bpe_vocab", bpe_vocab, "BPE vocabulary size");
    f("val_fraction", val_fraction, "Fraction of the corpus, at its end, held out for validation");
    f("layers", layers, "Transformer blocks");
    f("heads", heads, "Attention heads per block");
    f("d_model", d_model, "Model width");
    f("context", context, "Context length in tokens");
    f("dropout", dropout, "Dropout probability");
    f("positions", positions, "learned or rotary");
    f("untied", untied, "Separate output head instead of the tied token embedding");
    f("steps", steps, "Optimizer steps");
    f("batch", batch, "Sequences per micro-batch");
    f("grad_accum", grad_accum, "Micro-batches per optimizer step");
    f("lr", lr, "Peak learning rate (AdamW)");
    f("min_lr_ratio", min_lr_ratio, "Final learning rate as a fraction of --lr (cosine)");
    f("warmup", warmup, "Linear warm-up steps");
    f("schedule", schedule, "cosine, linear or constant");
    f("weight_decay", weight_decay, "AdamW weight decay");
    f("beta1", beta1, "AdamW beta1");
    f("beta2", beta2, "AdamW beta2");
    f("clip", clip, "Clip the global gradient norm to this (0: off)");
    f("bf16", bf16, "bf16 autocast with f32 master weights");
    f("eval_interval", eval_interval, "Steps between validation passes");
    f("eval_windows", eval_windows, "Validation windows per pass (0: the whole split)");
    f("checkpoint_interval", checkpoint_interval, "Steps between checkpoints");
    f("time_limit", time_limit, "Stop after this many seconds of training (0: no limit)");
    f("sample_tokens", sample_tokens, "Tokens to generate after training (0: none)");
    f("sample_prompt", sample_prompt, "Prompt of the sample");
    f("temperature", temperature, "Sampling temperature of the sample");
    f("top_k", top_k, "Top-k of the sample (0: off)");
    f("seed", seed, "Seed of initialisation, data order and dropout");
  }

  nlohmann::json to_json() const;
  // Sets the fields `json` names; qkv::Error for an unknown key or a value of
  // the wrong type, naming the key.
  void update_from_json(const nlohmann::json& json, const std::string& source);
  void validate() const;
  nn::GPTConfig model_config(int64_t vocab_size) const;
};

struct TrainRun {
  std::string out;            // the run directory
  bool resume = false;        // continue the run in `out`
  bool overwrite = false;     // replace a run already in `out`
  bool quiet = false;         // no progress on stderr
  std::FILE* log = stdout;    // the report (stderr under --json)
};

// Runs the training; returns the result for --json. Exits the loop early on
// SIGINT / SIGTERM after saving a checkpoint (result["interrupted"] = true).
nlohmann::json run_train(const TrainConfig& config, const TrainRun& run);

// The whole of `ids` in consecutive windows of the model's context, batched:
// mean next-token cross-entropy (nats per token) over every predicted token.
// max_windows > 0 keeps that many windows, evenly spaced.
struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
};
// on_batch(done, total) after every batch (progress).
EvalResult evaluate(nn::GPT& model, const std::vector<int32_t>& ids, int64_t batch,
                    int64_t max_windows = 0,
                    const std::function<void(int64_t, int64_t)>& on_batch = {});

}  // namespace qkv::cli
