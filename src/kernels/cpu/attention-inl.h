// Per-target code of the fused attention forward (see attention.h). Compiled
// once per Highway target from attention.cc; never include it elsewhere.
//
// FlashAttention-2 (Dao 2023) on a CPU core: for a tile of Br queries, walk
// the keys in blocks of Bc; S = (scale q) k^T for the block, an online softmax
// (running max m, running sum l, rescale of the partial output by
// exp(m_old - m_new)), then O += P v. Both products are one register-blocked
// micro-kernel, C[i, :] += A[i, p] * B[p, :]: A's entries are broadcast, B's
// rows streamed as vectors, so k is packed transposed (kt: [d, Bc]) and v as
// rows padded to whole vectors (vb: [Bc, dvp]). The scratch is O(Br + Bc)
// rows, never Lq x Lk.

#if defined(QKV_KERNELS_CPU_ATTENTION_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CPU_ATTENTION_INL_H_
#undef QKV_KERNELS_CPU_ATTENTION_INL_H_
#else
#define QKV_KERNELS_CPU_ATTENTION_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/bf16_dot.h"
#include "kernels/cpu/vec-inl.h"
#include "qkv/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Vectors per micro-tile row: 4 x 4 accumulators fill half of AVX-512's 32
// registers; targets with 16 registers use 4 x 2.
inline constexpr int kTileVecs = HWY_TARGET <= HWY_AVX3 ? 4 : 2;
inline constexpr int kTileRows = 4;
// Query tiles of at most this many rows (decode) skip packing k and v.
inline constexpr int64_t kDirectRows = 4;

// C[0:R, 0:V*Lanes] (+)= A[0:R, 0:k] B[0:k, 0:V*Lanes], A[r, p] at
// a[r * a_row + p * a_col] (so A may be read transposed), B and C row-major.
// The chain starts from zero and C is added at the end, so that Gemm can
// sum chunks of k pairwise.
template <int R, int V>
HWY_INLINE void MicroTile(DF d, const float* HWY_RESTRICT a, size_t a_row, size_t a_col,
                          const float* HWY_RESTRICT b, size_t ldb, float* HWY_RESTRICT c,
                          size_t ldc, size_t k, bool accumulate) {
  const size_t lanes = hn::Lanes(d);
  VF acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = hn::Zero(d);
  for (size_t p = 0; p < k; ++p) {
    VF bv[V];
    for (int v = 0; v < V; ++v) bv[v] = hn::LoadU(d, b + p * ldb + v * lanes);
    for (int r = 0; r < R; ++r) {
      const VF av = hn::Set(d, a[r * a_row + p * a_col]);
      for (int v = 0; v < V; ++v) acc[r][v] = hn::MulAdd(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      float* out = c + r * ldc + v * lanes;
      hn::StoreU(accumulate ? hn::Add(acc[r][v], hn::LoadU(d, out)) : acc[r][v], d, out);
    }
}

// C[m, n] (+)= A[m, k] B[k, n] with n a multiple of Lanes. Column panels
// outside, rows inside, so each panel of B stays in L1 across all rows.
template <int V>
HWY_INLINE void GemmPanel(DF d, const float* a, size_t a_row, size_t a_col, const float* b,
                          size_t ldb, float* c, size_t ldc, size_t m, size_t k, bool accumulate) {
  size_t i = 0;
  for (; i + kTileRows <= m; i += kTileRows)
    MicroTile<kTileRows, V>(d, a + i * a_row, a_row, a_col, b, ldb, c + i * ldc, ldc, k,
                            accumulate);
  for (; i < m; ++i)
    MicroTile<1, V>(d, a + i * a_row, a_row, a_col, b, ldb, c + i * ldc, ldc, k, accumulate);
}

// A is [m, k] with element (r, p) at a[r * a_row + p * a_col]: (lda, 1) for A,
// (1, lda) for the transpose of a row-major [k, m] matrix.
HWY_INLINE void Gemm(const float* a, size_t a_row, size_t a_col, const float* b, size_t ldb,
                     float* c, size_t ldc, size_t m, size_t n, size_t k, bool accumulate) {
  // A long FMA chain's rounding error grows with its length: k is cut into
  // chains of at most kChain whose sums are added (cheaply: one extra load and
  // add per output and chain). The recomputed scores of the backward need it
  // to stay within twice PyTorch's error.
  constexpr size_t kChain = 32;
  const DF d;
  const size_t lanes = hn::Lanes(d);
  for (size_t p0 = 0; p0 < k || p0 == 0; p0 += kChain) {
    const size_t chunk = std::min(kChain, k - p0);
    const float* ap = a + p0 * a_col;
    const float* bp = b + p0 * ldb;
    const bool add = accumulate || p0 > 0;
    size_t j = 0;
    for (; j + kTileVecs * lanes <= n; j += kTileVecs * lanes)
      GemmPanel<kTileVecs>(d, ap, a_row, a_col, bp + j, ldb, c + j, ldc, m, chunk, add);
    for (; j < n; j += lanes)
      GemmPanel<1>(d, ap, a_row, a_col, bp + j, ldb, c + j, ldc, m, chunk, add);
    if (k == 0) break;
  }
}

// Element i of a row of f32 or bf16 values, as f32.
HWY_INLINE float LoadElement(const void* row, size_t i, bool bf16) {
  return bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(row)[i])
              : static_cast<const float*>(row)[i];
}

HWY_INLINE size_t RoundUp(size_t n, size_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// A row stride for n (a multiple of 16) floats that is not a multiple of 64:
// rows a power-of-two apart land in the same cache sets.
HWY_INLINE size_t PaddedStride(size_t n) {
  return n % 64 == 0 ? n + 16 : n;
}

// Regions carved from the caller's workspace, each 64-byte aligned.
class Scratch {
 public:
  explicit Scratch(float* workspace) : cursor_(workspace) {}
  float* take(size_t floats) {
    float* p =
        reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(cursor_) + 63) & ~uintptr_t{63});
    cursor_ = p + floats;
    return p;
  }

 private:
  float* cursor_;
};

// dst[r, c] = scale * src[r, c] for r < rows, c < cols (src rows `stride`
// elements apart, f32 or bf16); zeros in columns [cols, ld) and rows
// [rows, rows_padded), so padded vectors contribute nothing.
HWY_INLINE void PackRows(const void* src, int64_t stride, bool bf16, size_t rows, size_t cols,
                         float scale, float* dst, size_t ld, size_t rows_padded) {
  const DF d;
  const hn::Rebind<uint16_t, DF> d16;  // bf16 bits, one per f32 lane
  const hn::Rebind<uint32_t, DF> d32;
  const size_t lanes = hn::Lanes(d), elem = bf16 ? 2 : 4;
  const VF vscale = hn::Set(d, scale);
  for (size_t r = 0; r < rows; ++r) {
    const char* row = static_cast<const char*>(src) + static_cast<int64_t>(r) * stride * elem;
    float* out = dst + r * ld;
    size_t c = 0;
    // bf16 is the top half of an f32: widen the bits and shift them up.
    if (bf16) {
      const uint16_t* bits = reinterpret_cast<const uint16_t*>(row);
      for (; c + lanes <= cols; c += lanes) {
        const auto wide = hn::ShiftLeft<16>(hn::PromoteTo(d32, hn::LoadU(d16, bits + c)));
        hn::StoreU(hn::Mul(hn::BitCast(d, wide), vscale), d, out + c);
      }
    } else {
      const float* values = reinterpret_cast<const float*>(row);
      for (; c + lanes <= cols; c += lanes)
        hn::StoreU(hn::Mul(hn::LoadU(d, values + c), vscale), d, out + c);
    }
    for (; c < cols; ++c) out[c] = LoadElement(row, c, bf16) * scale;
    std::fill(out + cols, out + ld, 0.0f);
  }
  std::fill(dst + rows * ld, dst + rows_padded * ld, 0.0f);
}

// dst[c, r] = src[r, c]: the transpose, with zeros in columns [rows, ld).
HWY_INLINE void PackColumns(const void* src, int64_t stride, bool bf16, size_t rows, size_t cols,
                            float* dst, size_t ld) {
  const size_t elem = bf16 ? 2 : 4;
  for (size_t r = 0; r < rows; ++r) {
    const char* row = static_cast<const char*>(src) + static_cast<int64_t>(r) * stride * elem;
    for (size_t c = 0; c < cols; ++c) dst[c * ld + r] = LoadElement(row, c, bf16);
  }
  for (size_t c = 0; c < cols; ++c) std::fill(dst + c * ld + rows, dst + (c + 1) * ld, 0.0f);
}

// Row `r` of a slice's q / k / v (element offset applied, f32 or bf16).
HWY_INLINE const void* RowOf(const void* base, int64_t row, int64_t stride, bool bf16) {
  return static_cast<const char*>(base) + row * stride * (bf16 ? 2 : 4);
}

// Writes -inf into s[i, j] (block coordinates) wherever key j0 + j is hidden from
// query r0 + i; returns false when every entry of the block is hidden.
HWY_INLINE bool ApplyMasks(const AttentionSlice& sl, int64_t r0, int64_t rows, int64_t j0,
                           int64_t bc, float* s, size_t lds) {
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  bool any_visible = false;
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * lds;
    const int64_t q = r0 + i;
    // Keys past the causal diagonal: one fill from the first hidden key.
    int64_t visible_end = bc;
    if (sl.causal_diagonal != kNoCausal)
      visible_end = std::clamp<int64_t>(q + sl.causal_diagonal + 1 - j0, 0, bc);
    std::fill(row + visible_end, row + bc, kMinusInf);
    if (sl.key_padding != nullptr)
      for (int64_t j = 0; j < visible_end; ++j)
        if (sl.key_padding[(j0 + j) * sl.key_padding_stride]) row[j] = kMinusInf;
    if (sl.allowed != nullptr) {
      const uint8_t* allowed = sl.allowed + q * sl.allowed_row_stride;
      for (int64_t j = 0; j < visible_end; ++j)
        if (!allowed[(j0 + j) * sl.allowed_col_stride]) row[j] = kMinusInf;
    }
    if (sl.bias != nullptr) {
      const float* bias = sl.bias + q * sl.bias_row_stride;
      for (int64_t j = 0; j < visible_end; ++j) row[j] += bias[(j0 + j) * sl.bias_col_stride];
    }
    for (int64_t j = 0; j < visible_end && !any_visible; ++j) any_visible = row[j] != kMinusInf;
  }
  return any_visible;
}

// Whether S = q k^T of this slice runs on VDPBF16PS: bf16 inputs (their
// products are exact in f32, so S is as accurate as on the f32 path), an even
// head dim, and a CPU with AVX512-BF16.
HWY_INLINE bool UseBf16Dot(const AttentionSlice& sl) {
  return sl.bf16 && sl.d % 2 == 0 && HasBf16Dot();
}

// The k block [j0, j0 + bc) as ScoreBlock reads it: k^T in f32 ([d, ld]), or
// for the bf16 dot k^T in bf16 pairs ([d / 2, ld] 32-bit words, the
// bytes of each k row's pairs). Columns [bc, ld) are zero.
HWY_INLINE void PackKeyBlock(const AttentionSlice& sl, int64_t j0, int64_t bc, float* kt,
                             size_t ld) {
  const size_t dim = static_cast<size_t>(sl.d);
  if (!UseBf16Dot(sl)) {
    PackColumns(RowOf(sl.k, j0, sl.k_stride, sl.bf16), sl.k_stride, sl.bf16,
                static_cast<size_t>(bc), dim, kt, ld);
    return;
  }
  uint32_t* pairs = reinterpret_cast<uint32_t*>(kt);
  for (int64_t j = 0; j < bc; ++j) {
    const char* row = static_cast<const char*>(RowOf(sl.k, j0 + j, sl.k_stride, true));
    for (size_t p = 0; p < dim / 2; ++p) std::memcpy(&pairs[p * ld + j], row + 4 * p, 4);
  }
  for (size_t p = 0; p < dim / 2; ++p) std::fill(pairs + p * ld + bc, pairs + (p + 1) * ld, 0u);
}

// Row `row` of a slice's k or v (`width` values) as `padded` floats of whole
// vectors: in place where an f32 row already is that, else converted into buf.
HWY_INLINE const float* RowAsVectors(const void* base, int64_t row, int64_t stride, bool bf16,
                                     size_t width, size_t padded, float* buf) {
  const void* src = RowOf(base, row, stride, bf16);
  if (!bf16 && padded == width) return static_cast<const float*>(src);
  PackRows(src, stride, bf16, 1, width, 1.0f, buf, padded, 1);
  return buf;
}

// Scores of a few query rows straight from k's rows (no k^T packing): for
// decode, where packing would cost more than the dot products. qs rows are
// ldq apart and zero-padded to ldq = RoundUp(d, 16); kbuf holds ldq floats.
HWY_INLINE void DirectScores(const AttentionSlice& sl, const float* qs, size_t ldq, int64_t rows,
                             int64_t j0, int64_t bc, float* s, float* kbuf) {
  const DF d;
  const size_t lanes = hn::Lanes(d), dim = static_cast<size_t>(sl.d);
  const size_t bcp = static_cast<size_t>(kAttentionKeyStride);
  for (int64_t j = 0; j < bc; ++j) {
    const float* kr = RowAsVectors(sl.k, j0 + j, sl.k_stride, sl.bf16, dim, ldq, kbuf);
    for (int64_t r = 0; r < rows; ++r) {
      VF acc = hn::Zero(d);
      for (size_t c = 0; c < ldq; c += lanes)
        acc = hn::MulAdd(hn::Load(d, qs + r * ldq + c), hn::LoadU(d, kr + c), acc);
      s[r * bcp + j] = hn::GetLane(hn::SumOfLanes(d, acc));
    }
  }
}

// Whether the mask modifier hides every pair of the block: checked before a
// block's keys or queries are packed, so hidden blocks cost O(1), not O(D).
HWY_INLINE bool BlockHidden(const AttentionSlice& sl, int64_t r0, int64_t rows, int64_t j0,
                            int64_t bc) {
  return sl.hooks != nullptr &&
         sl.hooks->visibility(sl.batch, sl.head, r0, r0 + rows, j0, j0 + bc) == AttentionHooks::kNone;
}

// S = (scale q) k^T for query rows [r0, r0 + rows) against keys [j0, j0 + bc)
// (qs: the scaled q tile, kt: the packed k^T block, n = bc rounded to whole
// vectors), modified and masked. False when every entry is hidden: the block
// is skipped (before any arithmetic when the mask modifier says so). With
// `raw`, the scores before the score modifier are kept there.
HWY_INLINE bool ScoreBlock(const AttentionSlice& sl, const float* qs, size_t ldq, const float* kt,
                           int64_t r0, int64_t rows, int64_t j0, int64_t bc, size_t n, float* s,
                           float* raw = nullptr, float* kbuf = nullptr) {
  const size_t dim = static_cast<size_t>(sl.d), bcp = static_cast<size_t>(kAttentionKeyStride);
  const AttentionHooks* hooks = sl.hooks;
  AttentionHooks::Visibility visibility = AttentionHooks::kAll;
  if (hooks != nullptr) {
    visibility = hooks->visibility(sl.batch, sl.head, r0, r0 + rows, j0, j0 + bc);
    if (visibility == AttentionHooks::kNone) return false;
  }
  if (kt == nullptr) {
    DirectScores(sl, qs, ldq, rows, j0, bc, s, kbuf);
  } else if (UseBf16Dot(sl)) {
    // q straight from its bf16 rows; the scale applied to S afterwards.
    const size_t n16 = RoundUp(n, 16);
    GemmBf16Pairs(static_cast<const uint16_t*>(RowOf(sl.q, r0, sl.q_stride, true)),
                  static_cast<size_t>(sl.q_stride), reinterpret_cast<const uint32_t*>(kt), bcp, s,
                  bcp, static_cast<size_t>(rows), n16, dim / 2);
    const DF d;
    const VF scale = hn::Set(d, sl.scale);
    for (int64_t i = 0; i < rows; ++i)
      for (size_t j = 0; j < n; j += hn::Lanes(d))
        hn::Store(hn::Mul(hn::Load(d, s + i * bcp + j), scale), d, s + i * bcp + j);
  } else {
    Gemm(qs, ldq, 1, kt, bcp, s, bcp, static_cast<size_t>(rows), n, dim, /*accumulate=*/false);
  }
  if (hooks != nullptr && hooks->has_score_mod()) {
    if (raw != nullptr) std::copy(s, s + rows * bcp, raw);
    hooks->modify_scores(sl.batch, sl.head, r0, r0 + rows, j0, j0 + bc, s, bcp);
  }
  const bool masked = sl.allowed != nullptr || sl.bias != nullptr || sl.key_padding != nullptr ||
                      (sl.causal_diagonal != kNoCausal && j0 + bc - 1 > r0 + sl.causal_diagonal);
  if (masked && !ApplyMasks(sl, r0, rows, j0, bc, s, bcp)) return false;
  if (visibility == AttentionHooks::kSome)
    hooks->mask_scores(sl.batch, sl.head, r0, r0 + rows, j0, j0 + bc, s, bcp);
  return true;
}

// The last key any of query rows [.., row_end) may see, plus one.
HWY_INLINE int64_t KeyEnd(const AttentionSlice& sl, int64_t row_end) {
  if (sl.causal_diagonal == kNoCausal) return sl.lk;
  return std::clamp<int64_t>(row_end - 1 + sl.causal_diagonal + 1, 0, sl.lk);
}

// P = exp(S - lse) for one row of n entries (the first bc real); a row whose
// lse is -inf (nothing visible) is all zeros.
HWY_INLINE void ProbabilitiesFromLse(DF d, float* row, float lse, int64_t bc, size_t n) {
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  if (lse == kMinusInf) {
    std::fill(row, row + n, 0.0f);
    return;
  }
  for (size_t j = static_cast<size_t>(bc); j < n; ++j) row[j] = kMinusInf;
  const VF shift = hn::Set(d, lse);
  for (size_t j = 0; j < n; j += hn::Lanes(d))
    hn::Store(ExpF(d, hn::Sub(hn::Load(d, row + j), shift)), d, row + j);
}

// Zeroes the dropped weights of a row and scales the kept ones by 1 / (1 - p).
HWY_INLINE void ApplyDropout(const AttentionSlice& sl, int64_t i, int64_t j0, int64_t bc,
                             const float* p, float* out) {
  const float keep_scale = 1.0f / (1.0f - sl.dropout);
  for (int64_t j = 0; j < bc; ++j) out[j] = DropoutKeep(sl, i, j0 + j) ? p[j] * keep_scale : 0.0f;
}

// The online-softmax state of a query tile: running max m, running sum l and
// the unnormalised output acc (rows ld apart), over the keys seen so far.
struct TileState {
  float* m;
  float* l;
  float* acc;
  size_t ld;
};

// Runs query rows [row_begin, row_end) over keys [key_begin, key_end) (the
// causal diagonal may end them earlier), leaving the state in `st`.
HWY_INLINE void ForwardTile(const AttentionSlice& sl, int64_t row_begin, int64_t row_end,
                            int64_t key_begin, int64_t key_end, Scratch& scratch, TileState& st) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  const int64_t rows = row_end - row_begin;
  const size_t dim = static_cast<size_t>(sl.d);
  const size_t dvp = RoundUp(static_cast<size_t>(sl.dv), 16);
  const size_t ldv = PaddedStride(dvp);                         // v block and accumulator rows
  const size_t bcp = static_cast<size_t>(kAttentionKeyStride);  // a multiple of every Lanes

  // A few rows (decode) read k and v in place; more rows pack them per block.
  const bool direct = rows <= kDirectRows;
  const size_t dp = RoundUp(dim, 16);
  // Scratch: q tile, k^T block, v block, scores / probabilities, then the state.
  float* qt = scratch.take(kAttentionRowTile * dp);
  float* kt = scratch.take(dp * bcp);
  float* vb = scratch.take(bcp * ldv);
  float* s = scratch.take(kAttentionRowTile * bcp);
  st = TileState{scratch.take(kAttentionRowTile), scratch.take(kAttentionRowTile),
                 scratch.take(kAttentionRowTile * ldv), ldv};
  float* acc = st.acc;
  float* m = st.m;
  float* l = st.l;

  // The scale is folded into q once, not applied to every score.
  PackRows(RowOf(sl.q, row_begin, sl.q_stride, sl.bf16), sl.q_stride, sl.bf16,
           static_cast<size_t>(rows), dim, sl.scale, qt, dp, static_cast<size_t>(rows));
  std::fill(acc, acc + rows * ldv, 0.0f);
  std::fill(m, m + rows, kMinusInf);
  std::fill(l, l + rows, 0.0f);

  // Keys past the last row's causal diagonal are hidden from the whole tile.
  key_end = std::min(key_end, KeyEnd(sl, row_end));
  for (int64_t j0 = key_begin; j0 < key_end; j0 += kAttentionKeyBlock) {
    const int64_t bc = std::min<int64_t>(kAttentionKeyBlock, key_end - j0);
    const size_t n = RoundUp(static_cast<size_t>(bc), lanes);
    if (BlockHidden(sl, row_begin, rows, j0, bc)) continue;
    if (!direct) {  // pack k^T and v for the block; columns / rows past bc are zero
      PackKeyBlock(sl, j0, bc, kt, bcp);
      PackRows(RowOf(sl.v, j0, sl.v_stride, sl.bf16), sl.v_stride, sl.bf16, static_cast<size_t>(bc),
               static_cast<size_t>(sl.dv), 1.0f, vb, ldv, n);
    }
    if (!ScoreBlock(sl, qt, dp, direct ? nullptr : kt, row_begin, rows, j0, bc, n, s, nullptr, kt))
      continue;  // whole block hidden

    // Online softmax, row by row; the padding columns [bc, n) become exp(-inf) = 0.
    for (int64_t i = 0; i < rows; ++i) {
      float* row = s + i * bcp;
      for (size_t j = static_cast<size_t>(bc); j < n; ++j) row[j] = kMinusInf;
      VF vmax = hn::Set(d, kMinusInf);
      for (size_t j = 0; j < n; j += lanes) vmax = hn::Max(vmax, hn::Load(d, row + j));
      const float m_new = std::max(m[i], hn::GetLane(hn::MaxOfLanes(d, vmax)));
      if (m_new == kMinusInf) {  // nothing visible to this row yet
        std::fill(row, row + n, 0.0f);
        continue;
      }
      const VF shift = hn::Set(d, m_new);
      VF vsum = hn::Zero(d);
      for (size_t j = 0; j < n; j += lanes) {
        const VF p = ExpF(d, hn::Sub(hn::Load(d, row + j), shift));
        hn::Store(p, d, row + j);
        vsum = hn::Add(vsum, p);
      }
      const float alpha = m[i] == kMinusInf ? 0.0f : std::exp(m[i] - m_new);
      l[i] = l[i] * alpha + hn::GetLane(hn::SumOfLanes(d, vsum));
      m[i] = m_new;
      if (alpha != 1.0f) {
        float* o = acc + i * ldv;
        const VF va = hn::Set(d, alpha);
        for (size_t c = 0; c < dvp; c += lanes)
          hn::Store(hn::Mul(hn::Load(d, o + c), va), d, o + c);
      }
      // l sums the weights before dropout; only what reaches v is dropped.
      if (sl.dropout > 0.0f) ApplyDropout(sl, row_begin + i, j0, bc, row, row);
    }
    if (direct && !sl.bf16 && dvp == static_cast<size_t>(sl.dv)) {
      // f32 rows of whole vectors: the product reads v where it lies.
      Gemm(s, bcp, 1, static_cast<const float*>(RowOf(sl.v, j0, sl.v_stride, false)),
           static_cast<size_t>(sl.v_stride), acc, ldv, static_cast<size_t>(rows), dvp,
           static_cast<size_t>(bc), /*accumulate=*/true);
      continue;
    }
    if (direct)  // v was not packed with k above
      PackRows(RowOf(sl.v, j0, sl.v_stride, sl.bf16), sl.v_stride, sl.bf16, static_cast<size_t>(bc),
               static_cast<size_t>(sl.dv), 1.0f, vb, ldv, n);
    Gemm(s, bcp, 1, vb, ldv, acc, ldv, static_cast<size_t>(rows), dvp, n, /*accumulate=*/true);
  }
}

HWY_NOINLINE void FlashAttentionForwardImpl(const AttentionSlice& sl, int64_t row_begin,
                                            int64_t row_end, float* workspace) {
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  Scratch scratch(workspace);
  TileState st;
  ForwardTile(sl, row_begin, row_end, 0, sl.lk, scratch, st);
  const int64_t rows = row_end - row_begin;
  for (int64_t i = 0; i < rows; ++i) {
    float* out = sl.o + (row_begin + i) * sl.o_stride;
    const float inv = st.l[i] > 0.0f ? 1.0f / st.l[i] : 0.0f;  // fully masked row: output 0
    for (int64_t c = 0; c < sl.dv; ++c) out[c] = st.acc[i * st.ld + c] * inv;
    if (sl.lse != nullptr)
      sl.lse[row_begin + i] = st.l[i] > 0.0f ? st.m[i] + std::log(st.l[i]) : kMinusInf;
  }
}

HWY_NOINLINE void FlashAttentionForwardPartialImpl(const AttentionSlice& sl, int64_t row_begin,
                                                   int64_t row_end, int64_t key_begin,
                                                   int64_t key_end, float* workspace,
                                                   float* partial) {
  Scratch scratch(workspace);
  TileState st;
  ForwardTile(sl, row_begin, row_end, key_begin, key_end, scratch, st);
  const int64_t rows = row_end - row_begin;
  const size_t dv = static_cast<size_t>(sl.dv);
  for (int64_t i = 0; i < rows; ++i) {
    float* out = partial + i * (dv + 2);
    out[0] = st.m[i];
    out[1] = st.l[i];
    std::copy(st.acc + i * st.ld, st.acc + i * st.ld + dv, out + 2);
  }
}

HWY_NOINLINE void AttentionProbabilitiesImpl(const AttentionSlice& sl, int64_t row_begin,
                                             int64_t row_end, int64_t key_begin, int64_t key_end,
                                             float* out, int64_t out_stride, float* workspace) {
  const DF d;
  const int64_t rows = row_end - row_begin;
  const size_t dim = static_cast<size_t>(sl.d), bcp = static_cast<size_t>(kAttentionKeyStride);
  Scratch scratch(workspace);
  float* qt = scratch.take(kAttentionRowTile * dim);
  float* kt = scratch.take(dim * bcp);
  float* s = scratch.take(kAttentionRowTile * bcp);
  PackRows(RowOf(sl.q, row_begin, sl.q_stride, sl.bf16), sl.q_stride, sl.bf16,
           static_cast<size_t>(rows), dim, sl.scale, qt, dim, static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i)
    std::fill(out + i * out_stride, out + i * out_stride + (key_end - key_begin), 0.0f);
  const int64_t visible_end = std::min(key_end, KeyEnd(sl, row_end));
  for (int64_t j0 = key_begin; j0 < visible_end; j0 += kAttentionKeyBlock) {
    const int64_t bc = std::min<int64_t>(kAttentionKeyBlock, visible_end - j0);
    const size_t n = RoundUp(static_cast<size_t>(bc), hn::Lanes(d));
    if (BlockHidden(sl, row_begin, rows, j0, bc)) continue;
    PackKeyBlock(sl, j0, bc, kt, bcp);
    if (!ScoreBlock(sl, qt, dim, kt, row_begin, rows, j0, bc, n, s)) continue;
    for (int64_t i = 0; i < rows; ++i) {
      float* row = s + i * bcp;
      ProbabilitiesFromLse(d, row, sl.lse[row_begin + i], bc, n);
      std::copy(row, row + bc, out + i * out_stride + (j0 - key_begin));
    }
  }
}

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
