// qkv.autograd: Variables on the tape and the ops that record onto it
// (qkv/autograd.h). Recording state is per thread, as in C++; the GIL is
// released in backward() and in the heavier ops.
#include "qkv/autograd.h"

#include <nanobind/stl/function.h>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <string>

#include "bindings.h"
#include "qkv/gradcheck.h"

namespace qkv::python {
namespace {

using autograd::Variable;

GeluApproximation gelu_mode(const std::string& approximate) {
  return from_name(kGeluApproximationNames, approximate, "autograd.gelu: approximate");
}

Reduction reduction_of(const std::string& r, const char* op) {
  return from_name(kReductionNames, r, std::string(op) + ": reduction");
}

}  // namespace

void bind_autograd(nb::module_& m) {
  nb::module_ ag =
      m.def_submodule("autograd", "Reverse-mode automatic differentiation (qkv/autograd.h).");
  nb::class_<Variable>(ag, "Variable",
                       "A tensor on the tape: value, requires_grad, grad, backward().")
      .def(nb::init<Tensor, bool>(), nb::arg("value"), nb::arg("requires_grad") = false)
      .def_prop_ro("value", &Variable::value)
      .def_prop_ro("shape", [](const Variable& v) { return v.shape(); })
      .def_prop_ro("grad",
                   [](const Variable& v) -> nb::object {
                     return v.grad().defined() ? nb::cast(v.grad()) : nb::none();
                   })
      .def_prop_rw("requires_grad", &Variable::requires_grad, &Variable::set_requires_grad)
      .def_prop_ro("is_leaf", &Variable::is_leaf)
      .def_prop_ro("grad_fn",
                   [](const Variable& v) -> nb::object {
                     return v.grad_fn() ? nb::cast(v.grad_fn()->name()) : nb::none();
                   })
      .def(
          "backward",
          [](const Variable& v, std::optional<Tensor> grad, bool retain_graph) {
            nb::gil_scoped_release release;
            v.backward(grad.value_or(Tensor()), retain_graph);
          },
          nb::arg("grad") = nb::none(), nb::arg("retain_graph") = false,
          "Accumulates d self / d leaf into each leaf's grad (a scalar needs no grad).")
      .def("zero_grad", &Variable::zero_grad)
      .def("retain_grad", &Variable::retain_grad)
      .def("detach", &Variable::detach)
      .def("__add__", [](const Variable& a, const Variable& b) { return autograd::add(a, b); })
      .def("__sub__", [](const Variable& a, const Variable& b) { return autograd::sub(a, b); })
      .def("__mul__", [](const Variable& a, const Variable& b) { return autograd::mul(a, b); })
      .def("__mul__", [](const Variable& a, double c) { return autograd::scale(a, c); })
      .def("__rmul__", [](const Variable& a, double c) { return autograd::scale(a, c); })
      .def("__matmul__",
           [](const Variable& a, const Variable& b) { return autograd::matmul(a, b); })
      .def("__repr__", [](const Variable& v) {
        return "Variable(" + shape_string(v.shape()) + ", " + dtype_name(v.dtype()) +
               (v.requires_grad() ? ", requires_grad" : "") +
               (v.grad_fn() ? ", grad_fn=" + v.grad_fn()->name() : std::string()) + ")";
      });

  using V = const Variable&;
  ag.def(
      "gradcheck",
      [](const std::function<Variable()>& fn, const std::vector<Variable>& leaves, double eps,
         double atol, double rtol, int64_t max_elements, int directions, uint64_t seed) {
        const autograd::GradcheckResult r = autograd::gradcheck(
            fn, leaves,
            {.eps = eps, .atol = atol, .rtol = rtol, .max_elements = max_elements,
             .directions = directions, .seed = seed});
        nb::dict out;
        out["passed"] = r.passed;
        out["checks"] = r.checks;
        out["max_error"] = r.max_error;
        out["failures"] = r.failures;
        return out;
      },
      nb::arg("fn"), nb::arg("leaves"), nb::arg("eps") = 1e-6, nb::arg("atol") = 1e-5,
      nb::arg("rtol") = 1e-3, nb::arg("max_elements") = 0, nb::arg("directions") = 0,
      nb::arg("seed") = 0,
      "fn() -> an f64 Variable computed from `leaves` (f64, requires_grad): its backward "
      "against central finite differences in f64 (qkv/gradcheck.h). Returns a dict: passed, "
      "checks, max_error, failures (one line per failed check).");
  ag.def("grad_enabled", &autograd::grad_enabled);
  ag.def("set_grad_enabled", &autograd::set_grad_enabled, nb::arg("on"));
  ag.def("autocast_enabled", &autograd::autocast_enabled);
  ag.def("set_autocast_enabled", &autograd::set_autocast_enabled, nb::arg("on"));
  ag.def(
      "to", [](V x, const std::string& dtype) { return autograd::to(x, parse_dtype(dtype)); },
      nb::arg("x"), nb::arg("dtype"));

  ag.def("add", [](V a, V b) { return autograd::add(a, b); });
  ag.def("sub", [](V a, V b) { return autograd::sub(a, b); });
  ag.def("mul", [](V a, V b) { return autograd::mul(a, b); });
  ag.def("scale", [](V x, double c) { return autograd::scale(x, c); });
  ag.def(
      "matmul",
      [](V a, V b, bool transpose_a, bool transpose_b) {
        nb::gil_scoped_release release;
        return autograd::matmul(a, b, {.transpose_a = transpose_a, .transpose_b = transpose_b});
      },
      nb::arg("a"), nb::arg("b"), nb::arg("transpose_a") = false, nb::arg("transpose_b") = false);
  ag.def(
      "linear",
      [](V x, V w, std::optional<Variable> b) {
        nb::gil_scoped_release release;
        return autograd::linear(x, w, b.value_or(Variable()));
      },
      nb::arg("x"), nb::arg("weight"), nb::arg("bias") = nb::none());
  ag.def("relu", [](V x) { return autograd::relu(x); });
  ag.def(
      "gelu", [](V x, const std::string& a) { return autograd::gelu(x, gelu_mode(a)); },
      nb::arg("x"), nb::arg("approximate") = "none");
  ag.def("silu", [](V x) { return autograd::silu(x); });
  ag.def(
      "softmax", [](V x, int64_t dim) { return autograd::softmax(x, dim); }, nb::arg("x"),
      nb::arg("dim") = -1);
  ag.def(
      "log_softmax", [](V x, int64_t dim) { return autograd::log_softmax(x, dim); }, nb::arg("x"),
      nb::arg("dim") = -1);
  ag.def(
      "layer_norm",
      [](V x, std::optional<Variable> w, std::optional<Variable> b, double eps) {
        nb::gil_scoped_release release;
        return autograd::layer_norm(x, w.value_or(Variable()), b.value_or(Variable()), eps);
      },
      nb::arg("x"), nb::arg("weight") = nb::none(), nb::arg("bias") = nb::none(),
      nb::arg("eps") = 1e-5);
  ag.def(
      "rms_norm",
      [](V x, std::optional<Variable> w, double eps) {
        return autograd::rms_norm(x, w.value_or(Variable()), eps);
      },
      nb::arg("x"), nb::arg("weight") = nb::none(), nb::arg("eps") = 1.1920928955078125e-07);
  ag.def(
      "embedding",
      [](V w, const Tensor& ids, int64_t padding_idx) {
        return autograd::embedding(w, ids, padding_idx);
      },
      nb::arg("weight"), nb::arg("ids"), nb::arg("padding_idx") = -1);
  ag.def("reshape", [](V x, const Shape& s) { return autograd::reshape(x, s); });
  ag.def("permute", [](V x, const Shape& d) { return autograd::permute(x, d); });
  ag.def("transpose", [](V x, int64_t a, int64_t b) { return autograd::transpose(x, a, b); });
  ag.def("narrow", [](V x, int64_t dim, int64_t start, int64_t length) {
    return autograd::narrow(x, dim, start, length);
  });
  ag.def("select", [](V x, int64_t dim, int64_t index) { return autograd::select(x, dim, index); });
  ag.def(
      "sum",
      [](V x, std::optional<int64_t> dim, bool keepdim) {
        return dim ? autograd::sum(x, *dim, keepdim) : autograd::sum(x);
      },
      nb::arg("x"), nb::arg("dim") = nb::none(), nb::arg("keepdim") = false);
  ag.def(
      "mean",
      [](V x, std::optional<int64_t> dim, bool keepdim) {
        return dim ? autograd::mean(x, *dim, keepdim) : autograd::mean(x);
      },
      nb::arg("x"), nb::arg("dim") = nb::none(), nb::arg("keepdim") = false);
  ag.def(
      "attention",
      [](V q, V k, V v, std::optional<double> scale, nb::handle causal, std::optional<Tensor> mask,
         std::optional<Tensor> key_padding_mask, const std::string& layout,
         std::shared_ptr<MaskMod> mask_mod, std::shared_ptr<ScoreMod> score_mod) {
        const AttentionOptions o = make_options(scale, causal, mask, key_padding_mask, layout, 0.0,
                                                0, std::move(mask_mod), std::move(score_mod));
        nb::gil_scoped_release release;
        return autograd::attention(q, k, v, o);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scale") = nb::none(),
      nb::arg("causal") = false, nb::arg("mask") = nb::none(),
      nb::arg("key_padding_mask") = nb::none(), nb::arg("layout") = "bhld",
      nb::arg("mask_mod").none() = nb::none(), nb::arg("score_mod").none() = nb::none());
  ag.def(
      "cross_entropy",
      [](V logits, const Tensor& targets, int64_t ignore_index, double label_smoothing,
         const std::string& reduction) {
        nb::gil_scoped_release release;
        return autograd::cross_entropy(
            logits, targets,
            {.ignore_index = ignore_index,
             .label_smoothing = label_smoothing,
             .reduction = reduction_of(reduction, "autograd.cross_entropy")});
      },
      nb::arg("logits"), nb::arg("targets"), nb::arg("ignore_index") = -100,
      nb::arg("label_smoothing") = 0.0, nb::arg("reduction") = "mean");
  ag.def(
      "mse_loss",
      [](V input, V target, const std::string& reduction) {
        return autograd::mse_loss(input, target, reduction_of(reduction, "autograd.mse_loss"));
      },
      nb::arg("input"), nb::arg("target"), nb::arg("reduction") = "mean");
}

}  // namespace qkv::python
