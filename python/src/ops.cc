// The ops of qkv/ops.h and qkv/matmul.h. Each releases the GIL while it runs;
// NumPy arrays and torch tensors convert to qkv Tensors without a copy.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "qkv/error.h"
#include "qkv/matmul.h"
#include "qkv/ops.h"

namespace qkv::python {
namespace {

using Release = nb::call_guard<nb::gil_scoped_release>;

GeluApproximation parse_gelu(const std::string& approximate) {
  return from_name(kGeluApproximationNames, approximate, "gelu: approximate");
}

// A reduction over every element; keepdim keeps each dim with size 1 (as torch does).
template <Tensor (*Whole)(const Tensor&), Tensor (*AlongDim)(const Tensor&, int64_t, bool)>
Tensor reduce(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  if (dim) return AlongDim(x, *dim, keepdim);
  Tensor out = Whole(x);
  if (keepdim) out = out.reshape(Shape(static_cast<size_t>(x.dim()), 1));
  return out;
}

std::optional<Tensor> optional(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// A norm's gradients as (dx, dweight, dbias), None for the parameters it had not.
std::tuple<Tensor, std::optional<Tensor>, std::optional<Tensor>> norm_tuple(
    const NormGradients& g) {
  return {g.input, optional(g.weight), optional(g.bias)};
}

}  // namespace

void bind_ops(nb::module_& m) {
  m.def("add", &qkv::add, nb::arg("a"), nb::arg("b"), Release(), "a + b, broadcasting.");
  m.def("mul", &qkv::mul, nb::arg("a"), nb::arg("b"), Release(), "a * b, broadcasting.");
  m.def("sub", &qkv::sub, nb::arg("a"), nb::arg("b"), Release(), "a - b, broadcasting.");
  m.def("div", &qkv::div, nb::arg("a"), nb::arg("b"), Release(), "a / b, broadcasting.");
  m.def("scale", &qkv::scale, nb::arg("x"), nb::arg("factor"), Release(), "x * factor.");
  m.def("exp", &qkv::exp, nb::arg("x"), Release());
  m.def("relu", &qkv::relu, nb::arg("x"), Release(), "max(x, 0); NaN stays NaN.");
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

  // ---- backward (f32 results) ----
  m.def("relu_backward", &qkv::relu_backward, nb::arg("grad"), nb::arg("x"), Release(),
        "grad where x > 0, else 0.");
  m.def("silu_backward", &qkv::silu_backward, nb::arg("grad"), nb::arg("x"), Release());
  m.def(
      "gelu_backward",
      [](const Tensor& grad, const Tensor& x, const std::string& approximate) {
        return qkv::gelu_backward(grad, x, parse_gelu(approximate));
      },
      nb::arg("grad"), nb::arg("x"), nb::arg("approximate") = "none", Release());
  m.def("softmax_backward", &qkv::softmax_backward, nb::arg("grad"), nb::arg("y"),
        nb::arg("dim") = -1, Release(), "y is softmax's output: y * (grad - sum(grad * y)).");
  m.def("log_softmax_backward", &qkv::log_softmax_backward, nb::arg("grad"), nb::arg("y"),
        nb::arg("dim") = -1, Release(), "y is log_softmax's output: grad - exp(y) * sum(grad).");
  m.def(
      "layer_norm_backward",
      [](const Tensor& grad, const Tensor& x, std::optional<Tensor> weight,
         std::optional<Tensor> bias, double eps) {
        return norm_tuple(qkv::layer_norm_backward(grad, x, weight.value_or(Tensor()),
                                                   bias.value_or(Tensor()), eps));
      },
      nb::arg("grad"), nb::arg("x"), nb::arg("weight") = nb::none(), nb::arg("bias") = nb::none(),
      nb::arg("eps") = 1e-5, Release(),
      "(dx, dweight, dbias) of layer_norm; None for a parameter not given.");
  m.def(
      "rms_norm_backward",
      [](const Tensor& grad, const Tensor& x, std::optional<Tensor> weight, double eps) {
        const NormGradients g = qkv::rms_norm_backward(grad, x, weight.value_or(Tensor()), eps);
        return std::make_tuple(g.input, optional(g.weight));
      },
      nb::arg("grad"), nb::arg("x"), nb::arg("weight") = nb::none(),
      nb::arg("eps") = static_cast<double>(std::numeric_limits<float>::epsilon()), Release(),
      "(dx, dweight) of rms_norm; None for dweight without a weight.");
  m.def(
      "sum_to_shape",
      [](const Tensor& grad, const std::vector<int64_t>& shape) {
        return qkv::sum_to_shape(grad, shape);
      },
      nb::arg("grad"), nb::arg("shape"), Release(),
      "grad summed over the dims that broadcasting added to an operand of `shape`.");
  m.def(
      "dropout",
      [](const Tensor& x, double p, uint64_t seed) {
        Generator generator(seed);
        DropoutResult r = qkv::dropout(x, p, generator);
        return std::make_tuple(r.output, optional(r.mask));
      },
      nb::arg("x"), nb::arg("p"), nb::arg("seed"), Release(),
      "(output, mask): inverted dropout with a Generator(seed); mask is None for p == 0.");
  m.def(
      "dropout_backward",
      [](const Tensor& grad, std::optional<Tensor> mask, double p) {
        return qkv::dropout_backward(grad, mask.value_or(Tensor()), p);
      },
      nb::arg("grad"), nb::arg("mask"), nb::arg("p"), Release(), "grad * mask / (1 - p).");

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
