// Shared declarations of the qkv._qkv extension (nanobind).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "qkv/tensor.h"

namespace qkv::python {

namespace nb = nanobind;

// Any CPU array that speaks DLPack or the buffer protocol; read-only arrays
// are accepted because qkv never writes into its inputs.
using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

// A tensor over the array's own memory (no copy); the storage keeps the
// array alive and drops it with the GIL held.
Tensor tensor_from_array(const AnyArray& array);

void bind_tensor(nb::module_& m);
void bind_ops(nb::module_& m);
void bind_io(nb::module_& m);
void bind_attention(nb::module_& m);
void bind_attention_backward(nb::module_& m);
void bind_nn(nb::module_& m);
void bind_scoring(nb::module_& m);
void bind_positions(nb::module_& m);
void bind_modifiers(nb::module_& m);
void bind_embeddings(nb::module_& m);

}  // namespace qkv::python
