// qkv.MultiheadAttention: torch.nn.MultiheadAttention's interface over qkv::nn.
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <optional>

#include "bindings.h"
#include "qkv/nn.h"

namespace qkv::python {
namespace {

// Owns the generator the module is initialised from (seeded by the caller).
struct PyMultiheadAttention {
  Generator generator;
  nn::MultiHeadAttention module;
  PyMultiheadAttention(const nn::MultiHeadAttentionConfig& config, uint64_t seed)
      : generator(seed), module(config, generator) {}
};

}  // namespace

void bind_nn(nb::module_& m) {
  nb::class_<PyMultiheadAttention>(m, "MultiheadAttention",
                                   "torch.nn.MultiheadAttention's parameters, names and results, "
                                   "on qkv's fused attention, with an explicit backward().")
      .def(
          "__init__",
          [](PyMultiheadAttention* self, int64_t embed_dim, int64_t num_heads, double dropout,
             bool bias, std::optional<int64_t> kdim, std::optional<int64_t> vdim, bool batch_first,
             uint64_t seed) {
            nn::MultiHeadAttentionConfig c{.embed_dim = embed_dim,
                                           .num_heads = num_heads,
                                           .bias = bias,
                                           .kdim = kdim.value_or(0),
                                           .vdim = vdim.value_or(0),
                                           .batch_first = batch_first,
                                           .dropout = dropout};
            new (self) PyMultiheadAttention(c, seed);
          },
          nb::arg("embed_dim"), nb::arg("num_heads"), nb::arg("dropout") = 0.0,
          nb::arg("bias") = true, nb::arg("kdim") = nb::none(), nb::arg("vdim") = nb::none(),
          nb::arg("batch_first") = false, nb::arg("seed") = 0)
      .def("state_dict", [](const PyMultiheadAttention& s) { return s.module.parameters(); })
      .def("load_state_dict",
           [](PyMultiheadAttention& s, const std::map<std::string, Tensor>& state) {
             s.module.load_state_dict(state);
           })
      .def("train", [](PyMultiheadAttention& s, bool on) { s.module.train(on); },
           nb::arg("mode") = true)
      .def("eval", [](PyMultiheadAttention& s) { s.module.train(false); })
      .def(
          "forward",
          [](PyMultiheadAttention& s, const Tensor& query, const Tensor& key, const Tensor& value,
             std::optional<Tensor> key_padding_mask, bool need_weights,
             std::optional<Tensor> attn_mask, bool average_attn_weights, bool is_causal) {
            nn::MultiHeadAttentionInputs in{query,
                                            key,
                                            value,
                                            attn_mask.value_or(Tensor()),
                                            key_padding_mask.value_or(Tensor()),
                                            is_causal,
                                            need_weights,
                                            average_attn_weights};
            nn::MultiHeadAttentionOutput out;
            {
              nb::gil_scoped_release release;
              out = s.module.forward(in);
            }
            return nb::make_tuple(out.output,
                                  out.weights.defined() ? nb::cast(out.weights) : nb::none());
          },
          nb::arg("query"), nb::arg("key"), nb::arg("value"),
          nb::arg("key_padding_mask") = nb::none(), nb::arg("need_weights") = true,
          nb::arg("attn_mask") = nb::none(), nb::arg("average_attn_weights") = true,
          nb::arg("is_causal") = false,
          "Returns (output, weights or None). Weights are before dropout.")
      .def(
          "backward",
          [](PyMultiheadAttention& s, const Tensor& grad_output) {
            nn::MultiHeadAttentionGradients g;
            {
              nb::gil_scoped_release release;
              g = s.module.backward(grad_output);
            }
            nb::dict out;
            out["query"] = g.query;
            out["key"] = g.key;
            out["value"] = g.value;
            out["parameters"] = g.parameters;
            return out;
          },
          nb::arg("grad_output"),
          "Gradients of the latest forward(): {'query', 'key', 'value', 'parameters': {name: grad}}.");
}

}  // namespace qkv::python
