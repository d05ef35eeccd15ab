// qkv.attention: the fused scaled dot-product attention of qkv/attention.h.
#include "qkv/attention.h"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "bindings.h"
#include "qkv/modifiers.h"

namespace qkv::python {
namespace {

AttentionLayout parse_layout(const std::string& layout) {
  if (layout == "bhld") return AttentionLayout::bhld;
  if (layout == "blhd") return AttentionLayout::blhd;
  throw Error(detail::str("attention: layout must be 'bhld' or 'blhd', got '", layout, "'"));
}

// causal: False / True (top-left, as torch's is_causal) / "top_left" / "bottom_right".
Causal parse_causal(const nb::handle& causal) {
  if (nb::isinstance<nb::bool_>(causal))
    return nb::cast<bool>(causal) ? Causal::top_left : Causal::none;
  if (nb::isinstance<nb::str>(causal)) {
    const std::string s = nb::cast<std::string>(causal);
    if (s == "top_left") return Causal::top_left;
    if (s == "bottom_right") return Causal::bottom_right;
    if (s == "none") return Causal::none;
  }
  throw Error(detail::str("attention: causal must be a bool, 'top_left' or 'bottom_right', got ",
                          nb::cast<std::string>(nb::str(causal))));
}

}  // namespace

AttentionOptions make_options(std::optional<double> scale, nb::handle causal,
                              std::optional<Tensor> mask, std::optional<Tensor> key_padding_mask,
                              const std::string& layout, double dropout, uint64_t dropout_seed,
                              std::shared_ptr<MaskMod> mask_mod,
                              std::shared_ptr<ScoreMod> score_mod) {
  return AttentionOptions{.layout = parse_layout(layout),
                          .scale = scale,
                          .causal = parse_causal(causal),
                          .mask = mask.value_or(Tensor()),
                          .key_padding_mask = key_padding_mask.value_or(Tensor()),
                          .mask_mod = std::move(mask_mod),
                          .score_mod = std::move(score_mod),
                          .dropout = dropout,
                          .dropout_seed = dropout_seed};
}

void bind_attention(nb::module_& m) {
  m.def(
      "attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, std::optional<double> scale,
         nb::handle causal, std::optional<Tensor> mask, std::optional<Tensor> key_padding_mask,
         const std::string& layout, double dropout, uint64_t dropout_seed, bool return_lse,
         std::vector<int64_t> weights_heads, bool reference, std::shared_ptr<MaskMod> mask_mod,
         std::shared_ptr<ScoreMod> score_mod) -> nb::object {
        AttentionOptions options =
            make_options(scale, causal, mask, key_padding_mask, layout, dropout, dropout_seed,
                         std::move(mask_mod), std::move(score_mod));
        options.return_lse = return_lse;
        options.weights_heads = std::move(weights_heads);
        AttentionResult r;
        {
          nb::gil_scoped_release release;
          r = reference ? attention_reference(q, k, v, options) : attention(q, k, v, options);
        }
        if (!return_lse && !r.weights.defined()) return nb::cast(r.output);
        nb::list out;
        out.append(r.output);
        if (return_lse) out.append(r.lse);
        if (r.weights.defined()) out.append(r.weights);
        return nb::tuple(out);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scale") = nb::none(),
      nb::arg("causal") = false, nb::arg("mask") = nb::none(),
      nb::arg("key_padding_mask") = nb::none(), nb::arg("layout") = "bhld",
      nb::arg("dropout") = 0.0, nb::arg("dropout_seed") = 0, nb::arg("return_lse") = false,
      nb::arg("weights_heads") = std::vector<int64_t>{}, nb::arg("reference") = false,
      nb::arg("mask_mod").none() = nb::none(), nb::arg("score_mod").none() = nb::none(),
      "Fused scaled dot-product attention. q: [B, Hq, Lq, D] (or [B, Lq, Hq, D] with "
      "layout='blhd'); k, v with Hkv dividing Hq. mask: bool (True = may attend) or a float "
      "bias, broadcastable to [B, Hq, Lq, Lk]; key_padding_mask: bool [B, Lk], True = padding. "
      "A fully masked row gives 0 (log-sum-exp -inf). dropout / dropout_seed: seeded dropout on "
      "the weights (see attention_dropout_mask). Returns the f32 output; with return_lse and/or "
      "weights_heads a tuple (output[, lse][, weights]), weights [B, len(weights_heads), Lq, Lk] "
      "before dropout. reference=True runs the double-precision oracle instead. mask_mod (a "
      "qkv.MaskMod) hides pairs and score_mod (a qkv.ScoreMod) rewrites the scaled scores "
      "before the mask is added (FlexAttention-style).");
  m.def("attention_dropout_mask", &qkv::attention_dropout_mask, nb::arg("batch"), nb::arg("heads"),
        nb::arg("lq"), nb::arg("lk"), nb::arg("dropout"), nb::arg("seed"),
        "The bool [B, H, Lq, Lk] keep-mask attention(dropout=p, dropout_seed=seed) applies.");
}

void bind_attention_backward(nb::module_& m) {
  m.def(
      "attention_backward",
      [](const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v,
         std::optional<Tensor> output, std::optional<Tensor> lse, std::optional<double> scale,
         nb::handle causal, std::optional<Tensor> mask, std::optional<Tensor> key_padding_mask,
         const std::string& layout, double dropout, uint64_t dropout_seed, bool mask_requires_grad,
         bool reference, std::shared_ptr<MaskMod> mask_mod, std::shared_ptr<ScoreMod> score_mod) {
        const AttentionOptions options =
            make_options(scale, causal, mask, key_padding_mask, layout, dropout, dropout_seed,
                         std::move(mask_mod), std::move(score_mod));
        AttentionGradients g;
        {
          nb::gil_scoped_release release;
          if (reference) {
            g = attention_backward_reference(grad_output, q, k, v, options, mask_requires_grad);
          } else {
            const AttentionResult saved{output.value_or(Tensor()), lse.value_or(Tensor())};
            g = qkv::attention_backward(grad_output, q, k, v, saved, options, mask_requires_grad);
          }
        }
        nb::dict grads;
        grads["q"] = g.grad_q;
        grads["k"] = g.grad_k;
        grads["v"] = g.grad_v;
        grads["mask"] = g.grad_mask.defined() ? nb::cast(g.grad_mask) : nb::none();
        grads["score_mod"] = g.grad_score_mod;
        return grads;
      },
      nb::arg("grad_output"), nb::arg("q"), nb::arg("k"), nb::arg("v"),
      nb::arg("output") = nb::none(), nb::arg("lse") = nb::none(), nb::arg("scale") = nb::none(),
      nb::arg("causal") = false, nb::arg("mask") = nb::none(),
      nb::arg("key_padding_mask") = nb::none(), nb::arg("layout") = "bhld",
      nb::arg("dropout") = 0.0, nb::arg("dropout_seed") = 0, nb::arg("mask_requires_grad") = false,
      nb::arg("reference") = false, nb::arg("mask_mod").none() = nb::none(),
      nb::arg("score_mod").none() = nb::none(),
      "Gradients of attention(): a dict with 'q', 'k', 'v' (f32, shaped like the inputs) and "
      "'mask' (the additive mask's gradient when mask_requires_grad), 'score_mod' (a list: the "
      "gradients of the score modifier's learned tensors, e.g. t5_bias_score's table). Pass the "
      "forward's output "
      "and lse (attention(..., return_lse=True)); reference=True recomputes in double instead. "
      "Pass the same mask_mod / score_mod as the forward.");
}

}  // namespace qkv::python
