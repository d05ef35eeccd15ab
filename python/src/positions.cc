// Positional encodings: sinusoidal tables, ALiBi, rotary embeddings.
#include "qkv/positions.h"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "bindings.h"

namespace qkv::python {
namespace {

RotaryOptions rotary_options(double base, double scaling, int64_t offset, const std::string& style,
                             int64_t rotary_dim, const std::string& layout) {
  RotaryOptions o{.base = base, .scaling = scaling, .offset = offset, .rotary_dim = rotary_dim};
  if (style == "rotate_half")
    o.style = RotaryStyle::rotate_half;
  else if (style == "interleaved")
    o.style = RotaryStyle::interleaved;
  else
    throw Error(detail::str("rotary_embedding: style must be 'rotate_half' or 'interleaved', got '",
                            style, "'"));
  if (layout == "blhd")
    o.layout = AttentionLayout::blhd;
  else if (layout != "bhld")
    throw Error(
        detail::str("rotary_embedding: layout must be 'bhld' or 'blhd', got '", layout, "'"));
  return o;
}

T5BiasOptions t5_options(bool bidirectional, int64_t num_buckets, int64_t max_distance,
                         int64_t query_offset) {
  return {.bidirectional = bidirectional,
          .num_buckets = num_buckets,
          .max_distance = max_distance,
          .query_offset = query_offset};
}

ShawPositions shaw_positions(std::optional<Tensor> key, std::optional<Tensor> value,
                             int64_t max_distance, int64_t query_offset) {
  return {.key = key.value_or(Tensor()),
          .value = value.value_or(Tensor()),
          .max_distance = max_distance,
          .query_offset = query_offset};
}

void bind_shaw(nb::module_& m) {
  m.def(
      "shaw_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, std::optional<Tensor> key,
         std::optional<Tensor> value, int64_t max_distance, int64_t query_offset,
         std::optional<double> scale, nb::handle causal, std::optional<Tensor> mask,
         std::optional<Tensor> key_padding_mask, const std::string& layout,
         std::shared_ptr<MaskMod> mask_mod, std::shared_ptr<ScoreMod> score_mod) {
        const AttentionOptions options =
            make_options(scale, causal, mask, key_padding_mask, layout, 0.0, 0, std::move(mask_mod),
                         std::move(score_mod));
        const ShawPositions positions = shaw_positions(key, value, max_distance, query_offset);
        ShawResult r;
        {
          nb::gil_scoped_release release;
          r = shaw_attention(q, k, v, positions, options);
        }
        nb::dict out;
        out["output"] = r.attention.output;
        out["lse"] = r.attention.lse;
        out["value_weights"] = r.value_weights.defined() ? nb::cast(r.value_weights) : nb::none();
        return out;
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("key").none() = nb::none(),
      nb::arg("value").none() = nb::none(), nb::arg("max_distance"), nb::arg("query_offset") = 0,
      nb::arg("scale") = nb::none(), nb::arg("causal") = false, nb::arg("mask") = nb::none(),
      nb::arg("key_padding_mask") = nb::none(), nb::arg("layout") = "bhld",
      nb::arg("mask_mod").none() = nb::none(), nb::arg("score_mod").none() = nb::none(),
      "Attention with Shaw et al.'s relative positions: key (a^K [2k+1, D]) in the scores and "
      "value (a^V [2k+1, Dv]) in the outputs, distances clipped to max_distance = k. Returns a "
      "dict: 'output', 'lse' and 'value_weights' (pass it back to shaw_attention_backward).");
  m.def(
      "shaw_attention_backward",
      [](const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v,
         const Tensor& output, const Tensor& lse, std::optional<Tensor> value_weights,
         std::optional<Tensor> key, std::optional<Tensor> value, int64_t max_distance,
         int64_t query_offset, std::optional<double> scale, nb::handle causal,
         std::optional<Tensor> mask, std::optional<Tensor> key_padding_mask,
         const std::string& layout, bool mask_requires_grad, std::shared_ptr<MaskMod> mask_mod,
         std::shared_ptr<ScoreMod> score_mod) {
        const AttentionOptions options =
            make_options(scale, causal, mask, key_padding_mask, layout, 0.0, 0, std::move(mask_mod),
                         std::move(score_mod));
        const ShawPositions positions = shaw_positions(key, value, max_distance, query_offset);
        const ShawResult forward{{output, lse}, value_weights.value_or(Tensor())};
        ShawGradients g;
        {
          nb::gil_scoped_release release;
          g = shaw_attention_backward(grad_output, q, k, v, positions, forward, options,
                                      mask_requires_grad);
        }
        nb::dict grads;
        grads["q"] = g.attention.grad_q;
        grads["k"] = g.attention.grad_k;
        grads["v"] = g.attention.grad_v;
        grads["mask"] =
            g.attention.grad_mask.defined() ? nb::cast(g.attention.grad_mask) : nb::none();
        grads["score_mod"] = g.attention.grad_score_mod;
        grads["key"] = g.grad_key.defined() ? nb::cast(g.grad_key) : nb::none();
        grads["value"] = g.grad_value.defined() ? nb::cast(g.grad_value) : nb::none();
        return grads;
      },
      nb::arg("grad_output"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("output"),
      nb::arg("lse"), nb::arg("value_weights").none() = nb::none(),
      nb::arg("key").none() = nb::none(), nb::arg("value").none() = nb::none(),
      nb::arg("max_distance"), nb::arg("query_offset") = 0, nb::arg("scale") = nb::none(),
      nb::arg("causal") = false, nb::arg("mask") = nb::none(),
      nb::arg("key_padding_mask") = nb::none(), nb::arg("layout") = "bhld",
      nb::arg("mask_requires_grad") = false, nb::arg("mask_mod").none() = nb::none(),
      nb::arg("score_mod").none() = nb::none(),
      "Gradients of shaw_attention(): a dict with 'q', 'k', 'v', 'key' (d a^K), 'value' (d a^V), "
      "'mask' and 'score_mod'. Pass the forward's output, lse and value_weights.");
}

}  // namespace

void bind_positions(nb::module_& m) {
  m.def("sinusoidal_positions", &sinusoidal_positions, nb::arg("length"), nb::arg("dim"),
        nb::arg("base") = 10000.0, "The [length, dim] sinusoidal table of Vaswani et al. 2017.");
  m.def("alibi_slopes", &alibi_slopes, nb::arg("heads"),
        "ALiBi's per-head slopes (Press et al. 2022).");
  m.def("alibi_score", &alibi_score, nb::arg("slopes"), nb::arg("query_offset") = 0,
        "A score modifier adding -slope[h] * |q + query_offset - kv| inside the fused kernel.");
  m.def(
      "t5_relative_bucket",
      [](int64_t relative_position, bool bidirectional, int64_t num_buckets, int64_t max_distance) {
        return t5_relative_bucket(relative_position,
                                  t5_options(bidirectional, num_buckets, max_distance, 0));
      },
      nb::arg("relative_position"), nb::arg("bidirectional") = true, nb::arg("num_buckets") = 32,
      nb::arg("max_distance") = 128, "T5's bucket of relative_position = key - query.");
  m.def(
      "t5_bias_score",
      [](const Tensor& table, bool bidirectional, int64_t num_buckets, int64_t max_distance,
         int64_t query_offset) {
        return t5_bias_score(table,
                             t5_options(bidirectional, num_buckets, max_distance, query_offset));
      },
      nb::arg("table"), nb::arg("bidirectional") = true, nb::arg("num_buckets") = 32,
      nb::arg("max_distance") = 128, nb::arg("query_offset") = 0,
      "A learned score modifier adding table[bucket(kv - q - query_offset), head] (table: "
      "[num_buckets, heads], T5's relative_attention_bias.weight) inside the fused kernel; "
      "attention_backward(...)['score_mod'][0] is its gradient.");
  bind_shaw(m);
  // rotary_embedding and its backward take the same keywords.
  using Rotation = Tensor (*)(const Tensor&, const RotaryOptions&);
  auto bind_rotation = [&m](const char* name, const char* arg, Rotation rotation, const char* doc) {
    m.def(
        name,
        [rotation](const Tensor& x, double base, double scaling, int64_t offset,
                   const std::string& style, int64_t rotary_dim, const std::string& layout) {
          const RotaryOptions o = rotary_options(base, scaling, offset, style, rotary_dim, layout);
          nb::gil_scoped_release release;
          return rotation(x, o);
        },
        nb::arg(arg), nb::arg("base") = 10000.0, nb::arg("scaling") = 1.0, nb::arg("offset") = 0,
        nb::arg("style") = "rotate_half", nb::arg("rotary_dim") = 0, nb::arg("layout") = "bhld",
        doc);
  };
  bind_rotation("rotary_embedding", "x", &qkv::rotary_embedding,
                "Rotary position embedding of x [B, H, L, D] (layout='blhd': [B, L, H, D]).");
  bind_rotation("rotary_embedding_backward", "grad", &qkv::rotary_embedding_backward,
                "The gradient of rotary_embedding (the inverse rotation).");
}

}  // namespace qkv::python
