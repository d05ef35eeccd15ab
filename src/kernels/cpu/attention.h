// The fused attention kernel (FlashAttention-style: tiled, online softmax,
// O(L) extra memory), dispatched at run time to the best Highway target.
// Internal: the front door in src/attention validates and calls it once per
// (batch, head, query tile) on the thread team.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

namespace qkv::kernels {

inline constexpr int64_t kNoCausal = std::numeric_limits<int64_t>::max();
// Queries per tile: a task of the thread team and the row block of the kernel.
inline constexpr int64_t kAttentionRowTile = 192;
// Keys per block of the online softmax.
inline constexpr int64_t kAttentionKeyBlock = 128;
// Row stride of the per-block buffers (k^T, scores): one vector more than the
// block, so that consecutive rows do not map to the same cache sets (a
// power-of-two stride halved the speed at D = 128).
inline constexpr int64_t kAttentionKeyStride = kAttentionKeyBlock + 16;

// Per-block hooks through which the attention layer inlines its score and
// mask modifiers (qkv/modifiers.h) into the kernels. Coordinates are absolute
// query / key indices of the slice's (batch, head).
class AttentionHooks {
 public:
  virtual ~AttentionHooks() = default;
  enum Visibility { kNone = 0, kAll = 1, kSome = 2 };
  virtual Visibility visibility(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0,
                                int64_t k1) const = 0;
  virtual bool has_score_mod() const = 0;
  virtual bool needs_raw_scores() const = 0;
  // s[(q - q0) * ld + (k - k0)]: the score modifier on every pair of the block.
  virtual void modify_scores(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1,
                             float* s, int64_t ld) const = 0;
  // -inf on the pairs the mask modifier hides.
  virtual void mask_scores(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1,
                           float* s, int64_t ld) const = 0;
  // grad *= d(modified score) / d(score), given the raw scores.
  virtual void score_backward(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1,
                              const float* raw, float* grad, int64_t ld) const = 0;
  // An extra additive term of dP = d loss / d(probability), per pair (Shaw's
  // relative value embeddings, whose output term the probabilities weight).
  virtual bool has_grad_probability_term() const { return false; }
  virtual void add_grad_probability_term(int64_t /*b*/, int64_t /*h*/, int64_t /*q0*/,
                                         int64_t /*q1*/, int64_t /*k0*/, int64_t /*k1*/,
                                         float* /*dp*/, int64_t /*ld*/) const {}
  // Pair-wise forms, for the oracle.
  virtual bool allowed(int64_t b, int64_t h, int64_t q, int64_t k) const = 0;
  virtual double score(double s, int64_t b, int64_t h, int64_t q, int64_t k) const = 0;
  virtual double derivative(double s, int64_t b, int64_t h, int64_t q, int64_t k) const = 0;
};

// One (batch, head) slice: q [lq, d], k [lk, d], v [lk, dv], o [lq, dv].
// Each row is contiguous; row strides are in elements. Masks are addressed as
// mask[i * row_stride + j * col_stride] (a stride of 0 broadcasts).
struct AttentionSlice {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  bool bf16 = false;  // q, k, v hold bf16 (else f32); the math is f32 either way
  // q, k, v hold f64: only the oracle (attention/dense.h, reference.cc) runs
  // such a slice, in double, writing its own f64 outputs (o and lse are null).
  bool f64 = false;
  double scale_f64 = 1.0;  // the scale unrounded, for f64
  int64_t q_stride = 0, k_stride = 0, v_stride = 0;
  float* o = nullptr;
  int64_t o_stride = 0;
  float* lse = nullptr;  // [lq] or null
  int64_t lq = 0, lk = 0, d = 0, dv = 0;
  float scale = 1.0f;
  const uint8_t* allowed = nullptr;  // boolean mask, nonzero = may attend
  int64_t allowed_row_stride = 0, allowed_col_stride = 0;
  const float* bias = nullptr;  // additive mask
  int64_t bias_row_stride = 0, bias_col_stride = 0;
  const uint8_t* key_padding = nullptr;  // nonzero = padding, never attended
  int64_t key_padding_stride = 0;
  int64_t causal_diagonal = kNoCausal;    // query i sees key j only if j <= i + causal_diagonal
  const AttentionHooks* hooks = nullptr;  // score / mask modifiers, or null
  int64_t batch = 0, head = 0;            // the slice's coordinates, for the hooks
  float dropout = 0.0f;  // probability of zeroing a weight (kept ones are scaled by 1 / (1 - p))
  uint64_t dropout_seed = 0;
  uint64_t dropout_stream = 0;  // b * Hq + h: which slice, so each gets its own mask
};

// Counter-based dropout: whether weight (i, j) of a slice is kept. A pure
// function of (seed, stream, i, j), so the forward, the backward and the
// oracle draw the same mask without storing it (splitmix64 at the pair's index).
inline bool DropoutKeep(const AttentionSlice& s, int64_t i, int64_t j) {
  const uint64_t index =
      (s.dropout_stream * static_cast<uint64_t>(s.lq) + static_cast<uint64_t>(i)) *
          static_cast<uint64_t>(s.lk) +
      static_cast<uint64_t>(j);
  uint64_t z = s.dropout_seed + (index + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * 0x1p-24f >= s.dropout;
}

// Floats of scratch one call of FlashAttentionForward needs.
size_t AttentionWorkspaceFloats(int64_t d, int64_t dv);

// Query rows [row_begin, row_end) of a slice, at most kAttentionRowTile of
// them. A row with no visible key gets output 0 and log-sum-exp -inf.
void FlashAttentionForward(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                           float* workspace);

// Rows [row_begin, row_end) over keys [key_begin, key_end) only, for the
// decode path that splits one long row of keys across threads: per row, writes
// (max, sum, unnormalised output[dv]) to partial + i * (dv + 2). Merge the
// parts with MergeAttentionPartials.
void FlashAttentionForwardPartial(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                                  int64_t key_begin, int64_t key_end, float* workspace,
                                  float* partial);
// Combines `parts` partial results of the same rows (part p at partials +
// p * part_stride) into the slice's output and log-sum-exp.
void MergeAttentionPartials(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                            const float* partials, int64_t parts, int64_t part_stride);

// The attention weights (probabilities, before dropout) of query rows
// [row_begin, row_end) and keys [key_begin, key_end), recomputed from the
// slice's log-sum-exp (slice.lse must hold the forward's):
// out[i * out_stride + (j - key_begin)].
void AttentionProbabilities(const AttentionSlice& slice, int64_t row_begin, int64_t row_end,
                            int64_t key_begin, int64_t key_end, float* out, int64_t out_stride,
                            float* workspace);

// The backward of one query head (FlashAttention-2's: recompute the
// probabilities from the saved log-sum-exp, never store them).
struct AttentionGradSlice {
  AttentionSlice forward;           // q, k, v, masks as in the forward; o and lse are read
  const float* grad_out = nullptr;  // dO [lq, dv]
  int64_t grad_out_stride = 0;
  float* grad_q = nullptr;  // dQ [lq, d], overwritten
  int64_t grad_q_stride = 0;
  float* grad_bias = nullptr;  // d(bias) [lq, lk], or null; entries of visible pairs written
  int64_t grad_bias_stride = 0;
};

// Floats of scratch for a group of `heads` query heads sharing one K/V head.
size_t AttentionBackwardWorkspaceFloats(int64_t d, int64_t dv, int64_t lq, int64_t heads);

// The query heads heads[0, count) share k and v: their dQ are written and the
// sum of their dK, dV contributions overwrites grad_k [lk, d] / grad_v [lk, dv].
void FlashAttentionBackward(const AttentionGradSlice* heads, int64_t count, float* grad_k,
                            int64_t grad_k_stride, float* grad_v, int64_t grad_v_stride,
                            float* workspace);

}  // namespace qkv::kernels
