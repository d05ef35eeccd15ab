// qkv.MultiheadAttention: torch.nn.MultiheadAttention's interface over qkv::nn.
#include "qkv/nn.h"

#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <optional>

#include "bindings.h"
#include "qkv/modifiers.h"

namespace qkv::python {
namespace {

// Owns the generator the module is initialised from (seeded by the caller).
struct PyMultiheadAttention {
  Generator generator;
  nn::MultiHeadAttention module;
  PyMultiheadAttention(const nn::MultiHeadAttentionConfig& config, uint64_t seed)
      : generator(seed), module(config, generator) {}
};

nn::AttentionPositions parse_positions(const std::string& s) {
  if (s == "none") return nn::AttentionPositions::none;
  if (s == "alibi") return nn::AttentionPositions::alibi;
  if (s == "t5") return nn::AttentionPositions::t5;
  if (s == "rotary") return nn::AttentionPositions::rotary;
  if (s == "shaw") return nn::AttentionPositions::shaw;
  throw Error(
      detail::str("MultiheadAttention: positions must be 'none', 'alibi', 't5', 'rotary' "
                  "or 'shaw', got '",
                  s, "'"));
}

nn::AttentionKernel parse_kernel(const std::string& s) {
  if (s == "softmax") return nn::AttentionKernel::softmax;
  if (s == "linformer") return nn::AttentionKernel::linformer;
  if (s == "linear") return nn::AttentionKernel::linear;
  if (s == "performer") return nn::AttentionKernel::performer;
  throw Error(
      detail::str("MultiheadAttention: kernel must be 'softmax', 'linformer', 'linear' or "
                  "'performer', got '",
                  s, "'"));
}

// The variant of qkv.MultiheadAttention's and qkv.nn.AttentionVariant's
// keywords (qkv/attention_variant.h).
nn::AttentionVariant variant_of(std::shared_ptr<MaskMod> mask_mod, const std::string& positions,
                                int64_t t5_num_buckets, int64_t t5_max_distance,
                                bool t5_bidirectional, int64_t shaw_max_distance,
                                double rotary_base, const std::string& kernel, int64_t max_length,
                                int64_t linformer_k, bool linformer_per_head,
                                int64_t performer_features, uint64_t performer_seed) {
  nn::AttentionVariant v;
  v.mask_mod = std::move(mask_mod);
  v.positions = parse_positions(positions);
  v.t5 = {.bidirectional = t5_bidirectional,
          .num_buckets = t5_num_buckets,
          .max_distance = t5_max_distance};
  v.shaw_max_distance = shaw_max_distance;
  v.rotary.base = rotary_base;
  v.kernel = parse_kernel(kernel);
  v.max_length = max_length;
  v.linformer_k = linformer_k;
  v.linformer_per_head = linformer_per_head;
  v.performer_features = performer_features;
  v.performer_seed = performer_seed;
  return v;
}

#define QKV_VARIANT_ARGS                                                                       \
  nb::arg("mask_mod").none() = nb::none(), nb::arg("positions") = "none",                      \
      nb::arg("t5_num_buckets") = 32, nb::arg("t5_max_distance") = 128,                        \
      nb::arg("t5_bidirectional") = true, nb::arg("shaw_max_distance") = 16,                   \
      nb::arg("rotary_base") = 10000.0, nb::arg("kernel") = "softmax",                         \
      nb::arg("max_length") = 0, nb::arg("linformer_k") = 256,                                 \
      nb::arg("linformer_per_head") = false, nb::arg("performer_features") = 256,              \
      nb::arg("performer_seed") = 0

}  // namespace

void bind_attention_variant(nb::module_& m) {
  nb::class_<nn::AttentionVariant>(
      m, "AttentionVariant",
      "An attention variant (SPEC §2-3) for qkv.nn.MultiheadAttention(variant=...) and the "
      "layers' self_attention=...: mask_mod (a qkv.MaskMod); positions 'alibi', 't5' (learned "
      "relative_attention_bias.weight), 'rotary' or 'shaw' (learned relative_key / "
      "relative_value); kernel 'linformer' (learned linformer_e / linformer_f over max_length "
      "keys), 'linear' (elu + 1) or 'performer' (FAVOR+). Learned tensors train with the rest.")
      .def(
          "__init__",
          [](nn::AttentionVariant* self, std::shared_ptr<MaskMod> mask_mod,
             const std::string& positions, int64_t t5_num_buckets, int64_t t5_max_distance,
             bool t5_bidirectional, int64_t shaw_max_distance, double rotary_base,
             const std::string& kernel, int64_t max_length, int64_t linformer_k,
             bool linformer_per_head, int64_t performer_features, uint64_t performer_seed) {
            new (self) nn::AttentionVariant(variant_of(
                std::move(mask_mod), positions, t5_num_buckets, t5_max_distance, t5_bidirectional,
                shaw_max_distance, rotary_base, kernel, max_length, linformer_k,
                linformer_per_head, performer_features, performer_seed));
          },
          QKV_VARIANT_ARGS);
}

void bind_nn(nb::module_& m) {
  nb::class_<PyMultiheadAttention>(m, "MultiheadAttention",
                                   "torch.nn.MultiheadAttention's parameters, names and results, "
                                   "on qkv's fused attention, with an explicit backward().")
      .def(
          "__init__",
          [](PyMultiheadAttention* self, int64_t embed_dim, int64_t num_heads, double dropout,
             bool bias, std::optional<int64_t> kdim, std::optional<int64_t> vdim, bool batch_first,
             uint64_t seed, std::shared_ptr<MaskMod> mask_mod, const std::string& positions,
             int64_t t5_num_buckets, int64_t t5_max_distance, bool t5_bidirectional,
             int64_t shaw_max_distance, double rotary_base, const std::string& kernel,
             int64_t max_length, int64_t linformer_k, bool linformer_per_head,
             int64_t performer_features, uint64_t performer_seed) {
            nn::MultiHeadAttentionConfig c{.embed_dim = embed_dim,
                                           .num_heads = num_heads,
                                           .bias = bias,
                                           .kdim = kdim.value_or(0),
                                           .vdim = vdim.value_or(0),
                                           .batch_first = batch_first,
                                           .dropout = dropout};
            static_cast<nn::AttentionVariant&>(c) = variant_of(
                std::move(mask_mod), positions, t5_num_buckets, t5_max_distance, t5_bidirectional,
                shaw_max_distance, rotary_base, kernel, max_length, linformer_k,
                linformer_per_head, performer_features, performer_seed);
            new (self) PyMultiheadAttention(c, seed);
          },
          nb::arg("embed_dim"), nb::arg("num_heads"), nb::arg("dropout") = 0.0,
          nb::arg("bias") = true, nb::arg("kdim") = nb::none(), nb::arg("vdim") = nb::none(),
          nb::arg("batch_first") = false, nb::arg("seed") = 0, QKV_VARIANT_ARGS,
          "torch.nn.MultiheadAttention's arguments, plus the variants of SPEC §2-3: mask_mod "
          "(a qkv.MaskMod: sliding window, sparse patterns, BigBird, Longformer, ...); "
          "positions 'alibi', 't5' (learned relative_attention_bias.weight), 'rotary' or "
          "'shaw' (learned relative_key / relative_value); kernel 'linformer' (learned "
          "linformer_e / linformer_f over max_length keys), 'linear' (elu + 1) or 'performer' "
          "(FAVOR+, redraw_features(seed)).")
      .def("state_dict", [](const PyMultiheadAttention& s) { return s.module.parameters(); })
      .def("load_state_dict",
           [](PyMultiheadAttention& s, const std::map<std::string, Tensor>& state) {
             s.module.load_state_dict(state);
           })
      .def(
          "train", [](PyMultiheadAttention& s, bool on) { s.module.train(on); },
          nb::arg("mode") = true)
      .def("eval", [](PyMultiheadAttention& s) { s.module.train(false); })
      .def(
          "redraw_features",
          [](PyMultiheadAttention& s, uint64_t seed) { s.module.redraw_features(seed); },
          nb::arg("seed"), "Performer: draws new random features.")
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
          "Gradients of the latest forward(): {'query', 'key', 'value', 'parameters': {name: "
          "grad}}.");
}

}  // namespace qkv::python
