// PyTorch's default initialisations (torch.nn.init), drawn from a qkv
// Generator, and the shape checks the layers share.
#pragma once

#include <cmath>
#include <string>

#include "qkv/autograd.h"
#include "qkv/error.h"
#include "qkv/ops.h"
#include "qkv/tensor.h"

namespace qkv::nn::detail {

// U(-bound, bound).
inline Tensor uniform(const Shape& shape, double bound, Generator& generator) {
  return add(scale(rand(shape, generator), 2 * bound), Tensor::full({}, -bound));
}

// xavier_uniform_ (Glorot & Bengio 2010): bound sqrt(6 / (fan_in + fan_out)),
// fans of a [out, in, ...] weight as torch counts them.
inline double xavier_bound(const Shape& shape) {
  double receptive = 1;
  for (size_t i = 2; i < shape.size(); ++i) receptive *= static_cast<double>(shape[i]);
  const double fan_in = static_cast<double>(shape[1]) * receptive;
  const double fan_out = static_cast<double>(shape[0]) * receptive;
  return std::sqrt(6.0 / (fan_in + fan_out));
}

// "TransformerEncoderLayer: src has shape [2, 5, 48]; expected d_model 64 in the last dim".
inline void check_features(const char* module, const char* argument, const Tensor& x,
                           const char* feature, int64_t expected, int64_t min_dim = 1) {
  QKV_CHECK(x.defined(), module, ": ", argument, " is undefined");
  QKV_CHECK(x.dim() >= min_dim && x.size(-1) == expected, module, ": ", argument, " has shape ",
            shape_string(x.shape()), "; expected ", feature, " ", expected, " in the last dim",
            min_dim > 1 ? " of a " + std::to_string(min_dim) + "-D tensor" : std::string());
}

}  // namespace qkv::nn::detail
