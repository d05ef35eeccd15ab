// VDPBF16PS micro-kernel. Debian's Highway 1.0.3 has no target with
// AVX512-BF16, so this one kernel uses the intrinsic directly, compiled for
// that ISA by function attribute and entered only after a CPU check.
#include "kernels/cpu/bf16_dot.h"

#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QKV_HAVE_BF16_DOT 1
#endif

namespace qkv::kernels {

#ifdef QKV_HAVE_BF16_DOT
namespace {

#define QKV_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// C[0:R, 0:16V] = A[0:R, :] B[:, 0:16V]: R x V accumulators of 16 lanes; each
// step broadcasts one pair of A and multiplies it into V vectors of B pairs.
template <int R, int V>
QKV_BF16_TARGET inline void Tile(const uint16_t* a, size_t lda, const uint32_t* b, size_t ldb,
                                 float* c, size_t ldc, size_t pairs) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (size_t p = 0; p < pairs; ++p) {
    __m512i bv[V];
    for (int v = 0; v < V; ++v)
      bv[v] = _mm512_loadu_si512(reinterpret_cast<const void*>(b + p * ldb + 16 * v));
    for (int r = 0; r < R; ++r) {
      uint32_t word;
      __builtin_memcpy(&word, a + r * lda + 2 * p, sizeof word);
      const __m512i av = _mm512_set1_epi32(static_cast<int>(word));
      for (int v = 0; v < V; ++v)
        acc[r][v] = _mm512_dpbf16_ps(acc[r][v], reinterpret_cast<__m512bh>(av),
                                     reinterpret_cast<__m512bh>(bv[v]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
}

template <int V>
QKV_BF16_TARGET void Panel(const uint16_t* a, size_t lda, const uint32_t* b, size_t ldb, float* c,
                           size_t ldc, size_t m, size_t pairs) {
  size_t i = 0;
  for (; i + 4 <= m; i += 4) Tile<4, V>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, pairs);
  for (; i < m; ++i) Tile<1, V>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, pairs);
}

QKV_BF16_TARGET void Gemm(const uint16_t* a, size_t lda, const uint32_t* b, size_t ldb, float* c,
                          size_t ldc, size_t m, size_t n, size_t pairs) {
  size_t j = 0;
  for (; j + 64 <= n; j += 64) Panel<4>(a, lda, b + j, ldb, c + j, ldc, m, pairs);
  for (; j < n; j += 16) Panel<1>(a, lda, b + j, ldb, c + j, ldc, m, pairs);
}

}  // namespace

bool HasBf16Dot() {
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                          std::getenv("QKV_DISABLE_BF16_DOT") == nullptr;
  return has;
}

void GemmBf16Pairs(const uint16_t* a, size_t lda, const uint32_t* b, size_t ldb, float* c,
                   size_t ldc, size_t m, size_t n, size_t pairs) {
  Gemm(a, lda, b, ldb, c, ldc, m, n, pairs);
}

#else

bool HasBf16Dot() { return false; }
void GemmBf16Pairs(const uint16_t*, size_t, const uint32_t*, size_t, float*, size_t, size_t, size_t,
                   size_t) {}

#endif

}  // namespace qkv::kernels
