// Matrix products over oneDNN.
#pragma once

#include "qkv/tensor.h"

namespace qkv {

struct MatmulOptions {
  bool transpose_a = false;  // use a^T (its last two dims swapped)
  bool transpose_b = false;
};

// a: [..., M, K] (or [..., K, M] with transpose_a), b: [..., K, N] (or [..., N, K]).
// Batch dimensions broadcast as in torch.matmul; 1-D operands are not promoted
// (use unsqueeze). Both f32, or both bf16 (AMX / AVX512-BF16 where present);
// the result is f32 and contiguous: [broadcast(batch), M, N]. With an f64
// operand both are taken as f64 and the result is f64: plain double loops,
// for checking (gradcheck), not speed. Arbitrary strides
// are taken as they are where oneDNN can read them, else copied once.
// Primitives are cached by shape, strides and dtype.
Tensor matmul(const Tensor& a, const Tensor& b, const MatmulOptions& options = {});

// The same product written into `out`, which must be f32, contiguous, of the
// result's shape and not share storage with a or b. For loops that reuse one
// buffer: a fresh result costs page faults (about 5 ms per 64 MiB here).
void matmul_into(const Tensor& a, const Tensor& b, const Tensor& out,
                 const MatmulOptions& options = {});

// Number of distinct matmul primitives created so far (cache misses).
int64_t matmul_primitive_count();

}  // namespace qkv
