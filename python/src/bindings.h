// Shared declarations of the qkv._qkv extension (nanobind).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <memory>
#include <optional>
#include <string>

#include "qkv/attention.h"
#include "qkv/tensor.h"

namespace qkv::python {

namespace nb = nanobind;

// Any CPU array that speaks DLPack or the buffer protocol; read-only arrays
// are accepted because qkv never writes into its inputs.
using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

// A tensor over the array's own memory (no copy); the storage keeps the
// array alive and drops it with the GIL held.
Tensor tensor_from_array(const AnyArray& array);

// The keyword arguments attention(), attention_backward() and the attention
// variants share, as AttentionOptions (causal: bool or 'top_left' /
// 'bottom_right'; layout: 'bhld' or 'blhd').
AttentionOptions make_options(std::optional<double> scale, nb::handle causal,
                              std::optional<Tensor> mask, std::optional<Tensor> key_padding_mask,
                              const std::string& layout, double dropout, uint64_t dropout_seed,
                              std::shared_ptr<MaskMod> mask_mod,
                              std::shared_ptr<ScoreMod> score_mod);

// "f32" / "float32" / "bfloat16" / ...: the dtype arguments' spellings.
DType parse_dtype(const std::string& name);

void bind_tensor(nb::module_& m);
void bind_ops(nb::module_& m);
void bind_io(nb::module_& m);
void bind_attention(nb::module_& m);
void bind_attention_backward(nb::module_& m);
// qkv.nn.AttentionVariant, into the qkv.nn module (bind_layers calls it).
void bind_attention_variant(nb::module_& m);
void bind_scoring(nb::module_& m);
void bind_positions(nb::module_& m);
void bind_modifiers(nb::module_& m);
void bind_sparse_masks(nb::module_& m);
void bind_train(nb::module_& m);
void bind_embeddings(nb::module_& m);
void bind_linear_attention(nb::module_& m);
void bind_autograd(nb::module_& m);
void bind_checkpoint(nb::module_& m);
void bind_layers(nb::module_& m);
void bind_text(nb::module_& m);
void bind_gpt(nb::module_& m);
void bind_viz(nb::module_& m);
void bind_bert(nb::module_& m);

}  // namespace qkv::python
