// Per-target code of the fused attention backward (see attention.h), compiled
// from attention.cc after attention-inl.h, whose packing, micro-kernel and
// masking it shares.
//
// FlashAttention-2's backward (Dao 2023, Algorithm 2) with the loops as a CPU
// task wants them: one task per (batch, K/V head); key blocks outside, so dK
// and dV of a block accumulate in scratch and are stored once; the query heads
// of the group and their query tiles inside. Per (query tile, key block):
//   S  = (scale q) k^T, masked;  P = exp(S - lse)      (recomputed, not stored)
//   dV += P^T dO;  dP = dO v^T;  dS = P * (dP - delta), delta_i = dO_i . O_i
//   dQ += scale dS k;  dK += scale dS^T q
// dQ of every head of the group accumulates over the key blocks in an
// [Lq, d] scratch per head: O(L) memory, no Lq x Lk buffer.

#if defined(QKV_KERNELS_CPU_ATTENTION_BACKWARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_CPU_ATTENTION_BACKWARD_INL_H_
#undef QKV_KERNELS_CPU_ATTENTION_BACKWARD_INL_H_
#else
#define QKV_KERNELS_CPU_ATTENTION_BACKWARD_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/cpu/attention-inl.h"
#include "kernels/cpu/attention.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

HWY_NOINLINE void FlashAttentionBackwardImpl(const AttentionGradSlice* heads, int64_t count,
                                             float* grad_k, int64_t grad_k_stride, float* grad_v,
                                             int64_t grad_v_stride, float* workspace) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  const AttentionSlice& first = heads[0].forward;
  const bool bf16 = first.bf16;
  const size_t dim = static_cast<size_t>(first.d), dv = static_cast<size_t>(first.dv);
  const size_t dp = RoundUp(dim, 16), dvp = RoundUp(dv, 16);
  const size_t bcp = static_cast<size_t>(kAttentionKeyStride);
  const size_t br = static_cast<size_t>(kAttentionRowTile);
  const int64_t lq = first.lq, lk = first.lk;
  const float scale = first.scale;

  Scratch scratch(workspace);
  float* kt = scratch.take(dim * bcp);  // k^T of the block, for S
  float* kr = scratch.take(bcp * dp);   // k rows of the block, for dQ
  float* vt = scratch.take(dv * bcp);   // v^T of the block, for dP
  float* qs = scratch.take(br * dim);   // scale * q of the tile, for S
  float* qr = scratch.take(br * dp);    // q rows of the tile, for dK
  float* dor = scratch.take(br * dvp);  // dO rows of the tile
  float* s = scratch.take(br * bcp);    // S, then P, then dS
  float* dpm = scratch.take(br * bcp);  // dP
  float* pd = scratch.take(br * bcp);   // P after dropout (P itself without dropout)
  float* raw = scratch.take(br * bcp);  // S before the score modifier, when its derivative needs it
  float* dk = scratch.take(bcp * dp);   // dK of the block (unscaled)
  float* dvb = scratch.take(bcp * dvp);  // dV of the block
  float* delta = scratch.take(static_cast<size_t>(count * lq));
  float* dq = scratch.take(static_cast<size_t>(count * lq) * dp);  // dQ per head (unscaled)

  for (int64_t h = 0; h < count; ++h) {
    const AttentionGradSlice& g = heads[h];
    for (int64_t i = 0; i < lq; ++i) {
      const float* grad_row = g.grad_out + i * g.grad_out_stride;
      const float* out_row = g.forward.o + i * g.forward.o_stride;
      // In double: delta enters every dS of the row, so its rounding would too.
      double dot = 0;
      for (size_t c = 0; c < dv; ++c) dot += static_cast<double>(grad_row[c]) * out_row[c];
      delta[h * lq + i] = static_cast<float>(dot);
    }
  }
  std::fill(dq, dq + static_cast<size_t>(count * lq) * dp, 0.0f);

  for (int64_t j0 = 0; j0 < lk; j0 += kAttentionKeyBlock) {
    const int64_t bc = std::min<int64_t>(kAttentionKeyBlock, lk - j0);
    const size_t n = RoundUp(static_cast<size_t>(bc), lanes);
    PackKeyBlock(first, j0, bc, kt, bcp);
    PackRows(RowOf(first.k, j0, first.k_stride, bf16), first.k_stride, bf16,
             static_cast<size_t>(bc), dim, 1.0f, kr, dp, n);
    PackColumns(RowOf(first.v, j0, first.v_stride, bf16), first.v_stride, bf16,
                static_cast<size_t>(bc), dv, vt, bcp);
    std::fill(dk, dk + n * dp, 0.0f);
    std::fill(dvb, dvb + n * dvp, 0.0f);

    for (int64_t h = 0; h < count; ++h) {
      const AttentionGradSlice& g = heads[h];
      const AttentionSlice& sl = g.forward;
      // Queries before j0 - diagonal cannot see this block.
      int64_t i_begin = 0;
      if (sl.causal_diagonal != kNoCausal)
        i_begin = std::clamp<int64_t>(j0 - sl.causal_diagonal, 0, lq) / kAttentionRowTile *
                  kAttentionRowTile;
      for (int64_t i0 = i_begin; i0 < lq; i0 += kAttentionRowTile) {
        const int64_t rows = std::min<int64_t>(kAttentionRowTile, lq - i0);
        if (BlockHidden(sl, i0, rows, j0, bc)) continue;
        const size_t m = static_cast<size_t>(rows);
        PackRows(RowOf(sl.q, i0, sl.q_stride, bf16), sl.q_stride, bf16, m, dim, scale, qs, dim, m);
        const bool keep_raw = sl.hooks != nullptr && sl.hooks->needs_raw_scores();
        if (!ScoreBlock(sl, qs, dim, kt, i0, rows, j0, bc, n, s, keep_raw ? raw : nullptr))
          continue;
        // P = exp(S - lse): the forward's probabilities, exactly normalised (a
        // fully masked row has lse -inf, P = 0 and so no gradient).
        const bool dropout = sl.dropout > 0.0f;
        for (int64_t i = 0; i < rows; ++i) {
          float* row = s + i * bcp;
          ProbabilitiesFromLse(d, row, sl.lse[i0 + i], bc, n);
          if (dropout) {
            ApplyDropout(sl, i0 + i, j0, bc, row, pd + i * bcp);
            std::fill(pd + i * bcp + bc, pd + i * bcp + n, 0.0f);
          }
        }
        const float* pv = dropout ? pd : s;  // the weights that multiplied v
        PackRows(RowOf(sl.q, i0, sl.q_stride, bf16), sl.q_stride, bf16, m, dim, 1.0f, qr, dp, m);
        for (size_t i = 0; i < m; ++i) {
          const float* grad_row = g.grad_out + (i0 + static_cast<int64_t>(i)) * g.grad_out_stride;
          std::copy(grad_row, grad_row + dv, dor + i * dvp);
          std::fill(dor + i * dvp + dv, dor + (i + 1) * dvp, 0.0f);
        }
        Gemm(pv, 1, bcp, dor, dvp, dvb, dvp, n, dvp, m, /*accumulate=*/true);  // dV += Pd^T dO
        Gemm(dor, dvp, 1, vt, bcp, dpm, bcp, m, n, dv, /*accumulate=*/false);  // dPd = dO v^T
        if (sl.hooks != nullptr && sl.hooks->has_grad_probability_term())
          sl.hooks->add_grad_probability_term(sl.batch, sl.head, i0, i0 + rows, j0, j0 + bc, dpm,
                                              bcp);
        // dS = P (dP - delta) with dP = dPd M / (1 - p), i.e. Pd dPd - P delta
        // (M the dropout mask; without dropout Pd = P). In place of P.
        for (int64_t i = 0; i < rows; ++i) {
          float* p = s + i * bcp;
          const float* pdrow = pv + i * bcp;
          const float* dprow = dpm + i * bcp;
          const VF dl = hn::Set(d, delta[h * lq + i0 + i]);
          for (size_t j = 0; j < n; j += lanes)
            hn::Store(hn::MulSub(hn::Load(d, pdrow + j), hn::Load(d, dprow + j),
                                 hn::Mul(hn::Load(d, p + j), dl)),
                      d, p + j);
          if (g.grad_bias != nullptr)
            std::copy(p, p + bc, g.grad_bias + (i0 + i) * g.grad_bias_stride + j0);
        }
        // Through the score modifier: dS w.r.t. the scaled score q.k.
        if (sl.hooks != nullptr && sl.hooks->has_score_mod())
          sl.hooks->score_backward(sl.batch, sl.head, i0, i0 + rows, j0, j0 + bc,
                                   keep_raw ? raw : nullptr, s, bcp);
        Gemm(s, bcp, 1, kr, dp, dq + (h * lq + i0) * dp, dp, m, dp, n, true);  // dQ += dS k
        Gemm(s, 1, bcp, qr, dp, dk, dp, n, dp, m, /*accumulate=*/true);        // dK += dS^T q
      }
    }
    for (int64_t j = 0; j < bc; ++j) {
      float* out_k = grad_k + (j0 + j) * grad_k_stride;
      for (size_t c = 0; c < dim; ++c) out_k[c] = dk[j * dp + c] * scale;
      std::copy(dvb + j * dvp, dvb + j * dvp + dv, grad_v + (j0 + j) * grad_v_stride);
    }
  }
  for (int64_t h = 0; h < count; ++h)
    for (int64_t i = 0; i < lq; ++i) {
      float* out = heads[h].grad_q + i * heads[h].grad_q_stride;
      for (size_t c = 0; c < dim; ++c) out[c] = dq[(h * lq + i) * dp + c] * scale;
    }
}

}  // namespace qkv::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
