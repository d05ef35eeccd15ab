#include "kernels/cpu/onednn.h"

#include <cstdlib>
#include <memory>

#include "qkv/error.h"

namespace qkv::detail::onednn {

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& cpu_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

void* scratchpad(size_t bytes) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    constexpr size_t kAlign = 64;
    const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
    buffer.reset(std::aligned_alloc(kAlign, rounded));
    QKV_CHECK(buffer != nullptr, "matmul: cannot allocate a ", rounded,
              "-byte oneDNN scratchpad");
    capacity = rounded;
  }
  return buffer.get();
}

dnnl::memory::data_type data_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::f32: return dnnl::memory::data_type::f32;
    case DType::bf16: return dnnl::memory::data_type::bf16;
    case DType::f16: return dnnl::memory::data_type::f16;
    case DType::i32: return dnnl::memory::data_type::s32;
    default: break;
  }
  throw Error(str(op, ": dtype ", dtype_name(dtype), " has no oneDNN equivalent"));
}

dnnl::memory::desc strided_desc(const Shape& dims, const Shape& strides, DType dtype,
                                const char* op) {
  return dnnl::memory::desc(dnnl::memory::dims(dims.begin(), dims.end()), data_type(dtype, op),
                            dnnl::memory::dims(strides.begin(), strides.end()));
}

std::string version_string() {
  const dnnl_version_t* v = dnnl_version();
  const char* runtime = v->cpu_runtime == DNNL_RUNTIME_OMP ? "omp"
                        : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "seq"
                                                              : "other";
  return str(v->major, ".", v->minor, ".", v->patch, " (cpu runtime ", runtime, ")");
}

}  // namespace qkv::detail::onednn
