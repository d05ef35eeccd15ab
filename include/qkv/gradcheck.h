// Finite-difference checks of gradients in f64 (torch.autograd.gradcheck).
//
// gradcheck compares what backward() computes for a graph of f64 ops with
// central differences of the forward, (f(x + eps) - f(x - eps)) / (2 eps),
// both in double. Every op has a double path (qkv/dtype.h: f64 is for
// checking), so the differences are accurate to about 1e-10 and a wrong
// backward cannot hide behind f32 rounding:
//
//   autograd::Variable x(randn({3, 5}, gen, DType::f64), true);
//   autograd::Variable w(randn({5}, gen, DType::f64), true);
//   auto result = autograd::gradcheck(
//       [&] { return autograd::layer_norm(x, w, autograd::Variable()); }, {x, w});
//   ASSERT_TRUE(result) << result.failures;
//
// A module is checked the same way after module.to(DType::f64), with its
// parameters() (and any input Variables) as the leaves.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "qkv/autograd.h"

namespace qkv::autograd {

struct GradcheckOptions {
  double eps = 1e-6;  // the central-difference step
  // A check passes when |analytic - numeric| <= atol + rtol * |numeric|
  // (torch's defaults).
  double atol = 1e-5;
  double rtol = 1e-3;
  // Per leaf, how many elements get their own difference: all of them when
  // <= 0 (small inputs), else this many, drawn with `seed` (large parameters).
  int64_t max_elements = 0;
  // Per leaf, how many random unit directions u also check the directional
  // derivative <grad, u> against (f(x + eps u) - f(x - eps u)) / (2 eps):
  // they see every element at once, as torch's fast mode does.
  int directions = 0;
  uint64_t seed = 0;
};

struct GradcheckResult {
  bool passed = true;
  int64_t checks = 0;    // differences compared
  double max_error = 0;  // the largest |analytic - numeric|
  std::string failures;  // one line per failed check (the first 20)
  explicit operator bool() const { return passed; }
};

// Differentiates `f` (which reads the leaves and returns an f64 Variable of
// any shape) by backward() and by central differences, perturbing each
// leaf's value in place and restoring it. A non-scalar output is reduced to
// sum(output * r) with fixed random r, so every output element counts. The
// leaves must be contiguous f64 Variables that require a gradient; their
// gradients are left as they were. `f` must be deterministic (dropout: make
// its generator inside `f` from a fixed seed).
GradcheckResult gradcheck(const std::function<Variable()>& f, const std::vector<Variable>& leaves,
                          const GradcheckOptions& options = {});

}  // namespace qkv::autograd
