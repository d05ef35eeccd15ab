// Products of bf16 matrices on AVX512-BF16 (VDPBF16PS: two bf16 products per
// f32 lane, accumulated in f32), chosen at run time where the CPU has it.
// Internal; used by the fused attention for S = q k^T on bf16 inputs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qkv::kernels {

// Whether this CPU runs VDPBF16PS (and QKV_DISABLE_BF16_DOT is not set).
bool HasBf16Dot();

// C[m, n] = A[m, 2 * pairs] B[2 * pairs, n] in f32 (overwritten), where
// A's row i is bf16 at a + i * lda (2 * pairs values, read as 32-bit pairs) and
// B is packed as pairs: word (p, j) at b[p * ldb + j] holds (B[2p, j], B[2p+1, j]).
// n is a multiple of 16. Only call when HasBf16Dot().
void GemmBf16Pairs(const uint16_t* a, size_t lda, const uint32_t* b, size_t ldb, float* c,
                   size_t ldc, size_t m, size_t n, size_t pairs);

}  // namespace qkv::kernels
