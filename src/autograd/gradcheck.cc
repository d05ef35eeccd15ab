// gradcheck: backward() against central differences, all in double.
#include "qkv/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "qkv/error.h"

namespace qkv::autograd {
namespace {

constexpr int kMaxReportedFailures = 20;

// The scalar the check differentiates: sum(output * weights) in double.
double project(const Tensor& output, const std::vector<double>& weights) {
  const Tensor out = output.contiguous();
  const double* o = out.data<double>();
  double total = 0;
  for (size_t i = 0; i < weights.size(); ++i) total += o[i] * weights[i];
  return total;
}

Variable checked_output(const std::function<Variable()>& f) {
  Variable out = f();
  QKV_CHECK(out.defined(), "gradcheck: the function returned an undefined variable");
  QKV_CHECK(out.dtype() == DType::f64, "gradcheck: the function's output is ",
            dtype_name(out.dtype()),
            "; it must be f64 (make the inputs f64 and call module.to(DType::f64))");
  return out;
}

void check_leaf(const Variable& leaf, size_t index) {
  QKV_CHECK(leaf.defined(), "gradcheck: leaf ", index, " is undefined");
  QKV_CHECK(leaf.is_leaf() && leaf.requires_grad(), "gradcheck: leaf ", index,
            " must be a leaf variable that requires a gradient");
  QKV_CHECK(leaf.dtype() == DType::f64, "gradcheck: leaf ", index, " has dtype ",
            dtype_name(leaf.dtype()), "; it must be f64");
  QKV_CHECK(leaf.value().is_contiguous(), "gradcheck: leaf ", index, " is not contiguous");
}

// The elements of a leaf of `numel` elements that get their own difference.
std::vector<int64_t> chosen_elements(int64_t numel, int64_t limit, Generator& gen) {
  std::vector<int64_t> all(static_cast<size_t>(numel));
  std::iota(all.begin(), all.end(), 0);
  if (limit <= 0 || limit >= numel) return all;
  for (int64_t i = 0; i < limit; ++i) {  // a partial Fisher-Yates shuffle
    const auto j = i + static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(numel - i));
    std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(j)]);
  }
  all.resize(static_cast<size_t>(limit));
  std::sort(all.begin(), all.end());
  return all;
}

class Checker {
 public:
  Checker(const std::function<Variable()>& f, const GradcheckOptions& options,
          std::vector<double> weights)
      : f_(f), options_(options), weights_(std::move(weights)) {}

  // d/dt f(x + t u) at t = 0 by central differences, x = the leaf's values
  // (perturbed in place and restored exactly: the saved copy is written back).
  double directional(double* x, const std::vector<std::pair<int64_t, double>>& u) {
    std::vector<double> saved;
    for (const auto& [i, ui] : u) saved.push_back(x[i]);
    auto at = [&](double t) {
      for (size_t k = 0; k < u.size(); ++k) x[u[k].first] = saved[k] + t * u[k].second;
      NoGradGuard no_grad;
      return project(checked_output(f_).value(), weights_);
    };
    const double plus = at(options_.eps), minus = at(-options_.eps);
    for (size_t k = 0; k < u.size(); ++k) x[u[k].first] = saved[k];
    return (plus - minus) / (2 * options_.eps);
  }

  void compare(double analytic, double numeric, const std::string& what, GradcheckResult& r) {
    ++r.checks;
    const double error = std::fabs(analytic - numeric);
    r.max_error =
        std::isnan(error) ? std::numeric_limits<double>::infinity() : std::max(r.max_error, error);
    if (error <= options_.atol + options_.rtol * std::fabs(numeric)) return;
    r.passed = false;
    if (++failures_ > kMaxReportedFailures) return;
    r.failures += qkv::detail::str(what, ": backward ", analytic, ", finite difference ", numeric,
                                   " (error ", error, ")\n");
  }

 private:
  const std::function<Variable()>& f_;
  const GradcheckOptions& options_;
  std::vector<double> weights_;
  int failures_ = 0;
};

}  // namespace

GradcheckResult gradcheck(const std::function<Variable()>& f, const std::vector<Variable>& leaves,
                          const GradcheckOptions& options) {
  QKV_CHECK(options.eps > 0 && std::isfinite(options.eps), "gradcheck: eps is ", options.eps,
            "; expected a finite value > 0");
  QKV_CHECK(!leaves.empty(), "gradcheck: no leaves to check");
  for (size_t n = 0; n < leaves.size(); ++n) check_leaf(leaves[n], n);

  // Analytic gradients, with the leaves' own gradients set aside.
  std::vector<Tensor> kept;
  for (const Variable& leaf : leaves) kept.push_back(leaf.grad());
  for (Variable leaf : leaves) leaf.zero_grad();
  Generator gen(options.seed);
  const Variable out = checked_output(f);
  QKV_CHECK(out.requires_grad(), "gradcheck: the output does not depend on any leaf");
  const Tensor weights = out.value().numel() == 1 ? Tensor::ones(out.shape(), DType::f64)
                                                  : randn(out.shape(), gen, DType::f64);
  out.backward(weights);
  std::vector<Tensor> analytic;
  for (size_t n = 0; n < leaves.size(); ++n) {
    const Tensor g = leaves[n].grad();
    analytic.push_back(g.defined() ? g.to(DType::f64).contiguous()
                                   : Tensor::zeros(leaves[n].shape(), DType::f64));
    Variable(leaves[n]).set_grad(kept[n]);
  }

  GradcheckResult result;
  Checker checker(f, options, weights.to_values());
  for (size_t n = 0; n < leaves.size(); ++n) {
    double* x = leaves[n].value().data<double>();
    const double* g = analytic[n].data<double>();
    const int64_t numel = leaves[n].value().numel();
    for (int64_t i : chosen_elements(numel, options.max_elements, gen))
      checker.compare(
          g[i], checker.directional(x, {{i, 1.0}}),
          qkv::detail::str("leaf ", n, " ", shape_string(leaves[n].shape()), " element ", i),
          result);
    for (int d = 0; d < options.directions; ++d) {
      std::vector<std::pair<int64_t, double>> u(static_cast<size_t>(numel));
      double norm = 0;
      for (int64_t i = 0; i < numel; ++i) {
        u[static_cast<size_t>(i)] = {i, gen.normal()};
        norm += u[static_cast<size_t>(i)].second * u[static_cast<size_t>(i)].second;
      }
      double dot = 0;
      for (auto& [i, ui] : u) dot += g[i] * (ui /= std::sqrt(norm));
      checker.compare(dot, checker.directional(x, u),
                      qkv::detail::str("leaf ", n, " ", shape_string(leaves[n].shape()),
                                       " random direction ", d),
                      result);
    }
  }
  return result;
}

}  // namespace qkv::autograd
