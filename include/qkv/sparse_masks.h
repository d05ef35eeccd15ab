// The mask-defined efficient attention variants (SPEC §3) as mask modifiers
// for the fused kernel: dilated windows (Longformer), the Sparse Transformer's
// fixed and strided patterns (Child et al. 2019), block-sparse layouts,
// BigBird (Zaheer et al. 2020) and Longformer's global + local attention.
//
// Each is exact dense attention under its mask: visibility() answers for a
// whole block in O(1) or O(layout blocks the block covers), never per pair,
// so the kernel skips every block the pattern hides, and that skipping is
// where the speed comes from. Combine with causal_mask / mask_and like any
// other MaskMod.
#pragma once

#include <cstdint>
#include <vector>

#include "qkv/modifiers.h"
#include "qkv/tensor.h"

namespace qkv {

// Longformer's dilated sliding window: with d = kv - q, visible iff
// -left * dilation <= d <= right * dilation and d % dilation == 0. left and
// right count visible keys on each side; dilation 1 is sliding_window_mask.
MaskModPtr dilated_window_mask(int64_t left, int64_t right, int64_t dilation);

// Sparse Transformer "fixed" (Child et al. 2019, the union of both heads):
// visible iff floor(kv / block) == floor(q / block) or kv mod block >=
// block - summary (the last `summary` keys of every block summarise it).
// causal additionally requires kv <= q. 0 <= summary <= block.
MaskModPtr sparse_fixed_mask(int64_t block, int64_t summary, bool causal);

// Sparse Transformer "strided": visible iff |q - kv| < stride or
// (q - kv) mod stride == 0 (non-negative modulus). causal: also kv <= q.
MaskModPtr sparse_strided_mask(int64_t stride, bool causal);

// Block-sparse: visible iff layout[h, q / block_q, kv / block_k]. layout is
// bool or integer 0/1, [H, nq_blocks, nk_blocks] or [nq_blocks, nk_blocks]
// (every head); an H of 1 broadcasts. The mask keeps a copy. attention()
// checks that the layout covers Lq, Lk and the heads.
MaskModPtr block_sparse_mask(const Tensor& layout, int64_t block_q, int64_t block_k);

// BigBird ITC in units of `block` positions: query block i = q / block sees
// key block j = kv / block when |i - j| <= window_blocks / 2 (window_blocks
// odd), when i or j < global_blocks (global blocks see and are seen by all),
// or when j is one of the random blocks of (head, i). causal additionally
// requires kv <= q.
//
// The random blocks of (head h, query block i) are min(random_blocks, m)
// distinct blocks drawn uniformly from the m candidate key blocks: those
// below n that are neither global nor in i's window, where n = the number
// of key blocks ceil(Lk / block), and with causal n = min(i + 1, that). The
// draw uses Floyd's algorithm on a splitmix64 stream seeded by (seed, h, i)
// (sparse_masks.cc), so it depends on nothing else: not on the number of
// heads, on Lq, or on Lk beyond n. Because of n, the first check() (every
// attention() / mask_to_tensor() call makes one) binds the mask to its key
// block count; a later call with another count throws. Make one mask per
// key length.
MaskModPtr bigbird_mask(int64_t block, int64_t window_blocks, int64_t global_blocks,
                        int64_t random_blocks, uint64_t seed, bool causal = false);

// Longformer: q - left <= kv <= q + right, or q is global, or kv is global.
// global: bool [L] (every batch) or [B, L], true = a global token; L must
// cover Lq and Lk. The mask keeps a copy.
MaskModPtr longformer_mask(int64_t left, int64_t right, const Tensor& global);
// The same with global positions given by index (every batch, any order,
// duplicates allowed; indices past the sequence are ignored).
MaskModPtr longformer_mask(int64_t left, int64_t right, const std::vector<int64_t>& global_indices);

// The mask as bool [B, H, Lq, Lk] (true = may attend), from allowed() pair by
// pair: the dense equivalent, for tests and pictures. Calls mask.check first.
Tensor mask_to_tensor(const MaskMod& mask, int64_t batch, int64_t heads, int64_t lq, int64_t lk);

}  // namespace qkv
