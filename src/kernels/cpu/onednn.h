// The thin layer between qkv tensors and oneDNN: one CPU engine, one stream
// per calling thread, and memory descriptors built from qkv's element strides.
// Internal to the library.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <cstddef>
#include <string>

#include "qkv/tensor.h"

namespace qkv::detail::onednn {

// The process-wide CPU engine.
const dnnl::engine& cpu_engine();

// A stream for the calling thread: oneDNN streams are not meant to be shared
// by threads that submit at the same time, and a CPU stream costs nothing.
dnnl::stream& cpu_stream();

// The calling thread's scratchpad of at least `bytes` bytes (64-byte aligned;
// grown on demand, kept for the thread's later calls): primitives run in user
// scratchpad mode so that one cached primitive can serve many threads.
void* scratchpad(size_t bytes);

// oneDNN's data type for `dtype`; throws qkv::Error (naming `op`) for dtypes
// oneDNN has no type for.
dnnl::memory::data_type data_type(DType dtype, const char* op);

// A plain (non-blocked) descriptor; dims and strides in elements, as in qkv.
dnnl::memory::desc strided_desc(const Shape& dims, const Shape& strides, DType dtype,
                                const char* op);

// "major.minor.patch (cpu runtime)" of the oneDNN the library runs with.
std::string version_string();

}  // namespace qkv::detail::onednn
