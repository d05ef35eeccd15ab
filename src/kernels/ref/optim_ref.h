// Scalar twins of the optimizer kernels in kernels/cpu/optim.h: the plain
// loops optim.cc ran before the kernels, one element at a time with std::fma
// where the kernels use hn::MulAdd. Same contracts and signatures; the SIMD
// kernels on AVX2 and AVX-512 match them bit for bit.
#pragma once

#include <cstddef>

#include "kernels/cpu/optim.h"

namespace qkv::kernels::ref {

void SgdUpdate(float* param, const float* grad, float* buf, size_t n, const SgdStep& s);
void AdamUpdate(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                float* max_exp_avg_sq, size_t n, const AdamStep& s);

}  // namespace qkv::kernels::ref
