// What the suites compare tensors and modules by.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "qkv/module.h"
#include "qkv/tensor.h"

namespace qkv::test_support {

// max |a - b| over the elements (any dtypes; the element counts must agree).
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_values(), y = b.to_values();
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

// A module's parameter names in registration order (its state_dict keys).
inline std::vector<std::string> parameter_names(const nn::Module& m) {
  std::vector<std::string> out;
  for (const auto& [name, v] : m.named_parameters()) out.push_back(name);
  return out;
}

}  // namespace qkv::test_support
