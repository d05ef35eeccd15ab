// Uses an installed qkv through its public headers only; exits non-zero on a wrong value.
#include <cmath>
#include <cstdio>

#include "qkv/qkv.h"

int main() {
  const qkv::Tensor a = qkv::Tensor::from_values({1, 2, 3, 4}, {2, 2});
  const qkv::Tensor b = qkv::Tensor::from_values({5, 6, 7, 8}, {2, 2});
  const qkv::Tensor c = qkv::matmul(a, b);  // [[19, 22], [43, 50]]
  const qkv::Tensor p = qkv::softmax(qkv::Tensor::from_values({0, 0}, {2}));
  const bool ok = c.at({1, 1}) == 50 && c.at({0, 1}) == 22 && std::abs(p.at({0}) - 0.5) < 1e-7;
  std::printf("qkv %s from an installed package: %s\n", QKV_VERSION_STRING, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
