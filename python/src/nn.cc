// qkv.nn.AttentionVariant: the attention variants' keywords (qkv/attention_variant.h).
#include "qkv/attention_variant.h"

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

nn::AttentionPositions parse_positions(const std::string& s) {
  return from_name(nn::kAttentionPositionNames, s, "MultiheadAttention: positions");
}

nn::AttentionKernel parse_kernel(const std::string& s) {
  return from_name(nn::kAttentionKernelNames, s, "MultiheadAttention: kernel");
}

// The variant of qkv.nn.AttentionVariant's keywords (qkv/attention_variant.h).
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

}  // namespace qkv::python
