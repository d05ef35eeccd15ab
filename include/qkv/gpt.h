// A decoder-only Transformer language model (SPEC §4; Radford et al. 2018/2019),
// with a KV cache and sampling:
//
//   Generator gen(0);
//   nn::GPT model({.vocab_size = 65, .context = 256, .n_layer = 6, .n_head = 6, .d_model = 384},
//                 gen);
//   autograd::Variable loss = model.loss(ids, targets);        // ids, targets [B, T] int32
//   std::vector<int32_t> text = model.generate(prompt, {.max_new_tokens = 500, .top_k = 40});
//
// Parameter names are nanoGPT's (which are GPT-2's with nn.Linear weights [out, in]):
//   transformer.wte.weight               [vocab, d]
//   transformer.wpe.weight               [context, d]   (positions = learned)
//   transformer.h.N.ln_1.{weight,bias}
//   transformer.h.N.attn.c_attn.{weight,bias}   [3d, d]: q, k, v stacked
//   transformer.h.N.attn.c_proj.{weight,bias}   [d, d]
//   transformer.h.N.ln_2.{weight,bias}
//   transformer.h.N.mlp.c_fc.{weight,bias}      [4d, d]
//   transformer.h.N.mlp.c_proj.{weight,bias}    [d, 4d]
//   transformer.ln_f.{weight,bias}
//   lm_head.weight                       [vocab, d]     (only when not tied)
// Each block is pre-norm: x + attn(ln_1(x)), then x + mlp(ln_2(x)), with
// causal self-attention and GELU (tanh form, as GPT-2). Initialisation as
// nanoGPT: N(0, 0.02) weights, zero biases, the residual projections
// (c_proj) N(0, 0.02 / sqrt(2 n_layer)).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "qkv/autograd.h"
#include "qkv/layers.h"
#include "qkv/module.h"
#include "qkv/names.h"
#include "qkv/tensor.h"

namespace qkv::nn {

enum class GPTPositions {
  learned,  // an added position table (GPT-2)
  rotary,   // rotate-half RoPE on q and k in every layer (GPT-NeoX), no table
};
inline constexpr EnumNames<GPTPositions, 2> kGPTPositionNames{
    {{GPTPositions::learned, "learned"}, {GPTPositions::rotary, "rotary"}}};

struct GPTConfig {
  int64_t vocab_size = 0;
  int64_t context = 256;  // the longest sequence the model sees (block_size)
  int64_t n_layer = 6;
  int64_t n_head = 6;
  int64_t d_model = 384;
  double dropout = 0.0;  // embeddings, attention weights, residual branches
  bool bias = true;      // in the Linears and LayerNorms
  bool tied_embeddings = true;  // lm_head shares transformer.wte.weight
  GPTPositions positions = GPTPositions::learned;
  double rotary_base = 10000.0;

  // The config as JSON text (kept in checkpoints) and back; from_json checks
  // every field and names the one that is missing or wrong.
  std::string to_json() const;
  static GPTConfig from_json(const std::string& text);
  void validate() const;  // qkv::Error naming the bad field and value
};

struct GenerationOptions {
  int64_t max_new_tokens = 256;
  double temperature = 1.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // keep the k most likely tokens; 0: all
  double top_p = 1.0;        // keep the smallest set with probability >= top_p (nucleus)
  // Generation stops after any of these token sequences is produced (the
  // stop sequence is kept in the output).
  std::vector<std::vector<int32_t>> stop;
  uint64_t seed = 0;
  bool use_cache = true;  // false: recompute the whole window for every token
  // Called with each new token as it is produced (stop sequences included);
  // returning false stops after that token.
  std::function<bool(int32_t)> on_token;
};

class GPT : public Module {
 public:
  GPT(const GPTConfig& config, Generator& generator);

  // ids [B, T] (int32 / int64, T <= context) -> logits [B, T, vocab].
  autograd::Variable forward(const Tensor& ids);
  // Mean cross-entropy of the next-token targets [B, T] (ignore_index -1).
  autograd::Variable loss(const Tensor& ids, const Tensor& targets);

  // Incremental forward without gradient: appends ids [B, T] at positions
  // cache.length() .. +T and returns their logits [B, T, vocab] (f32). Equals
  // forward() on the whole prefix within f32 tolerance. qkv::Error when the
  // cache would pass its capacity or the context.
  Tensor forward_cached(const Tensor& ids, KVCache& cache) const;
  // One AttentionCache per layer, [batch, n_head, capacity, head_dim] each.
  KVCache make_cache(int64_t batch, int64_t capacity = 0) const;  // 0: context

  // Autoregressive sampling after `prompt` (non-empty, ids in [0, vocab)).
  // Returns the new tokens only. Once the sequence is longer than the
  // context, the model sees the last `context` tokens (the cache is rebuilt
  // from the last context / 2 tokens when full, so past the context the
  // cached and uncached paths may differ). Never drops out and records no
  // gradient, in train() mode too.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt,
                                const GenerationOptions& options) const;

  // Attention weights of every layer for ids [1, T], without dropout:
  // one f32 [H, T, T] tensor per layer.
  std::vector<Tensor> attention_maps(const Tensor& ids) const;

  const GPTConfig& config() const { return config_; }
  // The generator of forward()'s dropout masks, for a Trainer to save and
  // restore with checkpoints (Trainer::track_generator), so a resumed run
  // drops the same units as one that never stopped.
  Generator& dropout_generator() { return dropout_generator_; }
  int64_t num_parameters() const;  // every parameter (the tied head once, wpe included)
  const char* type_name() const override { return "GPT"; }

 private:
  class Block;
  struct Pass;
  // ids [B, T] -> the final LayerNorm's output [B, T, d] for positions
  // pass.start .. + T.
  autograd::Variable hidden(const Tensor& ids, const Pass& pass) const;
  // h [..., d] -> logits [..., vocab] by lm_head or the tied wte.weight.
  autograd::Variable head(const autograd::Variable& h) const;
  // The logits [vocab] after the last token of `ids` [1, T] (no gradient).
  Tensor next_logits(const Tensor& ids, KVCache* cache) const;

  GPTConfig config_;
  std::shared_ptr<Embedding> wte_, wpe_;
  std::vector<std::shared_ptr<Block>> blocks_;
  std::shared_ptr<LayerNorm> ln_f_;
  std::shared_ptr<Linear> lm_head_;
  Generator dropout_generator_;  // every dropout mask of forward(), in order
};

// The probabilities sample_next_token draws from, for logits [vocab] (any
// float dtype; -inf allowed, NaN and +inf not): softmax(logits / temperature)
// after Hugging Face's TopKLogitsWarper (tokens below the k-th largest logit
// are removed; ties with it stay) and TopPLogitsWarper (tokens sorted by
// probability, ascending; those whose cumulative probability is <= 1 - top_p
// are removed, the most likely always stays), renormalised. f32 [vocab].
// temperature 0: one-hot at the first largest logit.
Tensor sampling_distribution(const Tensor& logits, const GenerationOptions& options);

// The next token from logits [vocab] by the options' temperature, top_k and
// top_p: one draw of `generator` from sampling_distribution (none when
// greedy, temperature 0). qkv::Error for bad options (negative top_k, top_p
// outside (0, 1], negative temperature).
int32_t sample_next_token(const Tensor& logits, const GenerationOptions& options,
                          Generator& generator);

}  // namespace qkv::nn
