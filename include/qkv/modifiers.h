// Score and mask modifiers for the fused attention, FlexAttention-style
// (Dong et al. 2024): a mask predicate and a score function over
// (batch, head, q_idx, kv_idx), composable, evaluated inside the fused
// forward and backward one block at a time. Each built-in knows which blocks
// it hides entirely, so those blocks are never computed (the block mask).
//
// Order inside attention(): s = scale * q.k; s = score_mod(s); s += mask
// (the float bias of AttentionOptions); hidden pairs (mask_mod, the boolean
// masks, causal, padding) become -inf.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "qkv/tensor.h"

namespace qkv {

// A rectangle of (query, key) pairs of one (batch, head): [q_begin, q_end) x [kv_begin, kv_end).
struct AttentionBlock {
  int64_t batch = 0, head = 0;
  int64_t q_begin = 0, q_end = 0;
  int64_t kv_begin = 0, kv_end = 0;
};

enum class BlockVisibility { none, all, some };

class MaskMod {
 public:
  virtual ~MaskMod() = default;
  // Whether query q may attend to key kv.
  virtual bool allowed(int64_t batch, int64_t head, int64_t q, int64_t kv) const = 0;
  // How much of a block is visible. Exact (never "none" or "all" wrongly);
  // the default evaluates every pair.
  virtual BlockVisibility visibility(const AttentionBlock& block) const;
  // Writes -inf into scores[(q - q_begin) * ld + (kv - kv_begin)] for every hidden
  // pair of the block; the default evaluates every pair.
  virtual void apply(const AttentionBlock& block, float* scores, int64_t ld) const;
  // Throws qkv::Error when the modifier cannot serve scores of this shape (a
  // document-id tensor too short, say). attention() calls it once per call.
  virtual void check(int64_t batch, int64_t heads, int64_t lq, int64_t lk) const;
};
using MaskModPtr = std::shared_ptr<const MaskMod>;

// kv <= q + offset (offset = Lk - Lq aligns it bottom-right).
MaskModPtr causal_mask(int64_t offset = 0);
// q - left <= kv <= q + right (Longformer / Mistral local attention).
MaskModPtr sliding_window_mask(int64_t left, int64_t right);
// The first `prefix` keys are visible to every query; after them, causal (prefix-LM, T5 / UniLM).
MaskModPtr prefix_lm_mask(int64_t prefix);
// Packed sequences: q and kv attend only within the same document.
// document_ids: [B, L] (i32 or i64), shared by queries and keys.
MaskModPtr document_mask(const Tensor& document_ids);
// Any predicate (evaluated per pair: general, not fast).
MaskModPtr custom_mask(std::function<bool(int64_t batch, int64_t head, int64_t q, int64_t kv)> fn);
MaskModPtr mask_and(MaskModPtr a, MaskModPtr b);
MaskModPtr mask_or(MaskModPtr a, MaskModPtr b);

// The gradients of a score modifier's learned tensors over one
// attention_backward(), gathered block by block.
class ScoreModGradients {
 public:
  virtual ~ScoreModGradients() = default;
  // grad[(q - q_begin) * ld + (kv - kv_begin)] = d loss / d(modified score) of
  // one block; raw holds the modifier's input scores (null unless the modifier
  // needs_raw_scores()). The blocks of one (batch, head) come in order from one
  // thread; blocks of different (batch, head) pairs may come concurrently.
  virtual void accumulate(const AttentionBlock& block, const float* raw, const float* grad,
                          int64_t ld) = 0;
  // The same in double, from the f64 path (the oracle, one row per block).
  // The default rounds to f32 and calls accumulate(); the built-ins override
  // it, so that gradcheck sees their gradients in double.
  virtual void accumulate_f64(const AttentionBlock& block, const double* raw, const double* grad,
                              int64_t ld);
  // Once every block is in: one gradient per ScoreMod::parameters() entry, in order.
  virtual std::vector<Tensor> finish() = 0;
};

class ScoreMod {
 public:
  virtual ~ScoreMod() = default;
  // The pair-wise forms, in double: the oracle and the f64 path call them
  // (f32 scores convert exactly); the fused kernels call the block forms.
  virtual double score(double s, int64_t batch, int64_t head, int64_t q, int64_t kv) const = 0;
  // d score / d s at the unmodified score s (1 for additive biases).
  virtual double derivative(double s, int64_t batch, int64_t head, int64_t q, int64_t kv) const;
  // Whether derivative() depends on s (then the backward keeps the raw scores).
  virtual bool needs_raw_scores() const { return true; }
  // Block forms over f32 scores; the defaults loop over score() / derivative()
  // and round.
  virtual void apply(const AttentionBlock& block, float* scores, int64_t ld) const;
  // grad[i, j] *= derivative(raw[i, j], ...) (raw may be null when !needs_raw_scores()).
  virtual void backward(const AttentionBlock& block, const float* raw, float* grad,
                        int64_t ld) const;
  // Throws qkv::Error when the modifier cannot serve scores of this shape (a
  // bias table with fewer heads, say). attention() calls it once per call.
  virtual void check(int64_t batch, int64_t heads, int64_t lq, int64_t lk) const;

  // Learned tensors the modifier reads (T5's bucket table, say); empty for a
  // fixed one. attention_backward() returns their gradients in
  // AttentionGradients::grad_score_mod, in this order, each f64 when its
  // tensor is, else f32.
  virtual std::vector<Tensor> parameters() const { return {}; }
  // Fresh accumulators for one backward over [batch, heads, lq, lk] scores;
  // null when parameters() is empty.
  virtual std::unique_ptr<ScoreModGradients> start_gradients(int64_t batch, int64_t heads,
                                                             int64_t lq, int64_t lk) const;
};
using ScoreModPtr = std::shared_ptr<const ScoreMod>;

// s + fn(batch, head, q, kv): any additive positional bias.
ScoreModPtr bias_score(std::function<float(int64_t batch, int64_t head, int64_t q, int64_t kv)> fn);
// cap * tanh(s / cap): logit soft-capping (Gemma 2).
ScoreModPtr softcap_score(float cap);
// b applied after a.
ScoreModPtr score_chain(ScoreModPtr a, ScoreModPtr b);

}  // namespace qkv
