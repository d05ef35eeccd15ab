// The ops of qkv/ops.h and qkv/matmul.h. Each releases the GIL while it runs;
// NumPy arrays and torch tensors convert to qkv Tensors without a copy.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <limits>
#include <optional>
#include <string>

#include "bindings.h"
#include "qkv/error.h"
#include "qkv/matmul.h"
#include "qkv/ops.h"

namespace qkv::python {
namespace {

using Release = nb::call_guard<nb::gil_scoped_release>;

GeluApproximation parse_gelu(const std::string& approximate) {
  if (approximate == "none") return GeluApproximation::none;
  if (approximate == "tanh") return GeluApproximation::tanh;
  throw Error(detail::str("gelu: approximate must be 'none' or 'tanh', got '", approximate, "'"));
}

// A reduction over every element; keepdim keeps each dim with size 1 (as torch does).
template <Tensor (*Whole)(const Tensor&), Tensor (*AlongDim)(const Tensor&, int64_t, bool)>
Tensor reduce(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  if (dim) return AlongDim(x, *dim, keepdim);
  Tensor out = Whole(x);
  if (keepdim) out = out.reshape(Shape(static_cast<size_t>(x.dim()), 1));
  return out;
}

}  // namespace

void bind_ops(nb::module_& m) {
  m.def("add", &qkv::add, nb::arg("a"), nb::arg("b"), Release(), "a + b, broadcasting.");
  m.def("mul", &qkv::mul, nb::arg("a"), nb::arg("b"), Release(), "a * b, broadcasting.");
  m.def("scale", &qkv::scale, nb::arg("x"), nb::arg("factor"), Release(), "x * factor.");
  m.def("exp", &qkv::exp, nb::arg("x"), Release());
  m.def("silu", &qkv::silu, nb::arg("x"), Release());
  m.def(
      "gelu",
      [](const Tensor& x, const std::string& approximate) {
        return qkv::gelu(x, parse_gelu(approximate));
      },
      nb::arg("x"), nb::arg("approximate") = "none", Release(),
      "GELU: the erf form ('none') or the tanh form ('tanh').");
  m.def("softmax", &qkv::softmax, nb::arg("x"), nb::arg("dim") = -1, Release(),
        "Max-subtracted softmax along dim. A row that is all -inf gives zeros.");
  m.def("log_softmax", &qkv::log_softmax, nb::arg("x"), nb::arg("dim") = -1, Release());
  m.def(
      "layer_norm",
      [](const Tensor& x, std::optional<Tensor> weight, std::optional<Tensor> bias, double eps) {
        return qkv::layer_norm(x, weight.value_or(Tensor()), bias.value_or(Tensor()), eps);
      },
      nb::arg("x"), nb::arg("weight") = nb::none(), nb::arg("bias") = nb::none(),
      nb::arg("eps") = 1e-5, Release(), "Layer normalisation over the last dimension.");
  m.def(
      "rms_norm",
      [](const Tensor& x, std::optional<Tensor> weight, double eps) {
        return qkv::rms_norm(x, weight.value_or(Tensor()), eps);
      },
      nb::arg("x"), nb::arg("weight") = nb::none(),
      nb::arg("eps") = static_cast<double>(std::numeric_limits<float>::epsilon()), Release(),
      "RMS normalisation over the last dimension (eps defaults to f32 machine epsilon).");
  m.def("sum", &reduce<&qkv::sum, &qkv::sum>, nb::arg("x"), nb::arg("dim") = nb::none(),
        nb::arg("keepdim") = false, Release());
  m.def("mean", &reduce<&qkv::mean, &qkv::mean>, nb::arg("x"), nb::arg("dim") = nb::none(),
        nb::arg("keepdim") = false, Release());
  m.def("max", &reduce<&qkv::max, &qkv::max>, nb::arg("x"), nb::arg("dim") = nb::none(),
        nb::arg("keepdim") = false, Release(), "The maximum values (no indices).");

  m.def(
      "matmul",
      [](const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b) {
        return qkv::matmul(a, b, MatmulOptions{transpose_a, transpose_b});
      },
      nb::arg("a"), nb::arg("b"), nb::arg("transpose_a") = false, nb::arg("transpose_b") = false,
      Release(),
      "a @ b over oneDNN: f32 x f32 or bf16 x bf16, result f32; batch dims broadcast.");
  m.def("matmul_primitive_count", &qkv::matmul_primitive_count,
        "How many oneDNN matmul primitives were created (cache misses).");
}

}  // namespace qkv::python
