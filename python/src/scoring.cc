// qkv.general_attention / qkv.additive_attention and their backwards.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <optional>

#include "bindings.h"
#include "qkv/scoring.h"

namespace qkv::python {
namespace {

AttentionOptions options_of(std::optional<double> scale, bool causal, std::optional<Tensor> mask,
                            std::optional<Tensor> key_padding_mask, bool return_lse) {
  return AttentionOptions{.scale = scale,
                          .causal = causal ? Causal::top_left : Causal::none,
                          .mask = mask.value_or(Tensor()),
                          .key_padding_mask = key_padding_mask.value_or(Tensor()),
                          .return_lse = return_lse};
}

nb::dict input_grads(const AttentionGradients& g) {
  nb::dict d;
  d["q"] = g.grad_q;
  d["k"] = g.grad_k;
  d["v"] = g.grad_v;
  return d;
}

}  // namespace

void bind_scoring(nb::module_& m) {
  m.def(
      "general_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w,
         std::optional<double> scale, bool causal, std::optional<Tensor> mask,
         std::optional<Tensor> key_padding_mask) {
        nb::gil_scoped_release release;
        const auto r = general_attention(q, k, v, w,
                                         options_of(scale, causal, mask, key_padding_mask, true));
        return std::make_pair(r.output, r.lse);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("w"), nb::arg("scale") = nb::none(),
      nb::arg("causal") = false, nb::arg("mask") = nb::none(),
      nb::arg("key_padding_mask") = nb::none(),
      "Luong's general score s = q^T W k (scale defaults to 1). Returns (output, lse).");
  m.def(
      "general_attention_backward",
      [](const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v,
         const Tensor& w, const Tensor& output, const Tensor& lse, std::optional<double> scale,
         bool causal, std::optional<Tensor> mask, std::optional<Tensor> key_padding_mask) {
        GeneralAttentionGradients g;
        {
          nb::gil_scoped_release release;
          g = general_attention_backward(grad_output, q, k, v, w, AttentionResult{output, lse},
                                         options_of(scale, causal, mask, key_padding_mask, false));
        }
        nb::dict d = input_grads(g.inputs);
        d["w"] = g.grad_w;
        return d;
      },
      nb::arg("grad_output"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("w"),
      nb::arg("output"), nb::arg("lse"), nb::arg("scale") = nb::none(), nb::arg("causal") = false,
      nb::arg("mask") = nb::none(), nb::arg("key_padding_mask") = nb::none());
  m.def(
      "additive_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w_q, const Tensor& w_k,
         const Tensor& v_a, std::optional<double> scale, bool causal, std::optional<Tensor> mask,
         std::optional<Tensor> key_padding_mask) {
        nb::gil_scoped_release release;
        return additive_attention(q, k, v, {w_q, w_k, v_a},
                                  options_of(scale, causal, mask, key_padding_mask, false))
            .output;
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("w_q"), nb::arg("w_k"), nb::arg("v_a"),
      nb::arg("scale") = nb::none(), nb::arg("causal") = false, nb::arg("mask") = nb::none(),
      nb::arg("key_padding_mask") = nb::none(),
      "Bahdanau's additive score s = v_a^T tanh(W_q q + W_k k); w_q, w_k: [A, D], v_a: [A].");
  m.def(
      "additive_attention_backward",
      [](const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v,
         const Tensor& w_q, const Tensor& w_k, const Tensor& v_a, std::optional<double> scale,
         bool causal, std::optional<Tensor> mask, std::optional<Tensor> key_padding_mask) {
        AdditiveAttentionGradients g;
        {
          nb::gil_scoped_release release;
          g = additive_attention_backward(grad_output, q, k, v, {w_q, w_k, v_a},
                                          options_of(scale, causal, mask, key_padding_mask, false));
        }
        nb::dict d = input_grads(g.inputs);
        d["w_q"] = g.grad_w_q;
        d["w_k"] = g.grad_w_k;
        d["v_a"] = g.grad_v_a;
        return d;
      },
      nb::arg("grad_output"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("w_q"),
      nb::arg("w_k"), nb::arg("v_a"), nb::arg("scale") = nb::none(), nb::arg("causal") = false,
      nb::arg("mask") = nb::none(), nb::arg("key_padding_mask") = nb::none());
}

}  // namespace qkv::python
