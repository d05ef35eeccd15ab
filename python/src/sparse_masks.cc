// The sparse attention masks of qkv/sparse_masks.h as qkv.MaskMod objects
// for qkv.attention(mask_mod=...), and mask_to_tensor for the dense picture.
#include "qkv/sparse_masks.h"

#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "bindings.h"

namespace qkv::python {
namespace {

// nanobind holds MaskMods as shared_ptr<MaskMod> (see modifiers.cc).
std::shared_ptr<MaskMod> held(MaskModPtr p) {
  return std::const_pointer_cast<MaskMod>(std::move(p));
}

}  // namespace

void bind_sparse_masks(nb::module_& m) {
  m.def(
      "dilated_window_mask",
      [](int64_t left, int64_t right, int64_t dilation) {
        return held(qkv::dilated_window_mask(left, right, dilation));
      },
      nb::arg("left"), nb::arg("right"), nb::arg("dilation") = 1,
      "Longformer's dilated sliding window: with d = kv - q, visible iff -left * dilation <= d <= "
      "right * dilation and d % dilation == 0 (left / right count keys; dilation 1 is "
      "sliding_window_mask).");
  m.def(
      "sparse_fixed_mask",
      [](int64_t block, int64_t summary, bool causal) {
        return held(qkv::sparse_fixed_mask(block, summary, causal));
      },
      nb::arg("block"), nb::arg("summary"), nb::arg("causal") = false,
      "Sparse Transformer 'fixed' pattern (Child et al. 2019): visible iff kv // block == q // "
      "block or kv % block >= block - summary; causal also requires kv <= q.");
  m.def(
      "sparse_strided_mask",
      [](int64_t stride, bool causal) { return held(qkv::sparse_strided_mask(stride, causal)); },
      nb::arg("stride"), nb::arg("causal") = false,
      "Sparse Transformer 'strided' pattern: visible iff |q - kv| < stride or (q - kv) % stride "
      "== 0; causal also requires kv <= q.");
  m.def(
      "block_sparse_mask",
      [](const Tensor& layout, int64_t block_q, int64_t block_k) {
        return held(qkv::block_sparse_mask(layout, block_q, block_k));
      },
      nb::arg("layout"), nb::arg("block_q"), nb::arg("block_k"),
      "Block-sparse: visible iff layout[h, q // block_q, kv // block_k]. layout: bool or integer "
      "0/1, [H, nq_blocks, nk_blocks] or [nq_blocks, nk_blocks] (an H of 1 broadcasts); the mask "
      "keeps a copy.");
  m.def(
      "bigbird_mask",
      [](int64_t block, int64_t window_blocks, int64_t global_blocks, int64_t random_blocks,
         uint64_t seed, bool causal) {
        return held(
            qkv::bigbird_mask(block, window_blocks, global_blocks, random_blocks, seed, causal));
      },
      nb::arg("block"), nb::arg("window_blocks") = 3, nb::arg("global_blocks") = 2,
      nb::arg("random_blocks") = 3, nb::arg("seed") = 0, nb::arg("causal") = false,
      "BigBird ITC (Zaheer et al. 2020) in blocks of `block` positions: query block i sees key "
      "blocks j with |i - j| <= window_blocks // 2, the first global_blocks blocks (which also "
      "see everything), and random_blocks random blocks per (head, i), drawn from (seed, head, i) "
      "among the non-window, non-global key blocks that exist (causal: <= i). The first "
      "attention() / mask_to_tensor() call binds the mask to its number of key blocks; use one "
      "mask per key length.");
  m.def(
      "longformer_mask",
      [](int64_t left, int64_t right, const Tensor& global_mask) {
        return held(qkv::longformer_mask(left, right, global_mask));
      },
      nb::arg("left"), nb::arg("right"), nb::arg("global_mask"),
      "Longformer: q - left <= kv <= q + right, or q global, or kv global. global_mask: bool [L] "
      "or [B, L], True = a global token (L must cover Lq and Lk); the mask keeps a copy.");
  m.def(
      "longformer_mask",
      [](int64_t left, int64_t right, const std::vector<int64_t>& global_indices) {
        return held(qkv::longformer_mask(left, right, global_indices));
      },
      nb::arg("left"), nb::arg("right"), nb::arg("global_indices"),
      "Longformer with the global positions as a list of indices (every batch).");
  m.def(
      "mask_to_tensor",
      [](const MaskMod& mask, int64_t batch, int64_t heads, int64_t lq, int64_t lk) {
        nb::gil_scoped_release release;
        return qkv::mask_to_tensor(mask, batch, heads, lq, lk);
      },
      nb::arg("mask"), nb::arg("batch"), nb::arg("heads"), nb::arg("lq"), nb::arg("lk"),
      "The mask as a bool tensor [batch, heads, lq, lk] (True = may attend).");
}

}  // namespace qkv::python
