// libFuzzer target for the safetensors reader (and, on what it accepts, the writer).
//
// Any input may be rejected with qkv::Error; anything else the reader does on
// hostile bytes (a sanitizer report, another exception, a crash) is a finding.
// An accepted file must also survive a round trip: every tensor readable,
// serialize() of what was read accepted again with the same bytes, metadata
// and shapes. The writer is not allowed to throw there, so any exception
// from it escapes and libFuzzer reports it.
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "qkv/safetensors.h"

namespace {

using qkv::Tensor;
namespace st = qkv::safetensors;

[[noreturn]] void fail() {
  __builtin_trap();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
  bool all_supported = true;
  try {
    const st::File file = st::File::from_bytes(data, size);
    metadata = file.metadata();
    uint64_t expected_begin = 0;
    for (const st::TensorInfo& info : file.tensors()) {
      if (&file.info(info.name) != &info || info.begin != expected_begin) fail();
      expected_begin = info.end;
      try {
        const Tensor t = file.get(info.name);
        if (t.shape() != info.shape || t.nbytes() != info.end - info.begin) fail();
        const std::vector<double> values = t.to_values();
        if (static_cast<int64_t>(values.size()) != t.numel()) fail();
        tensors.emplace(info.name, t);
      } catch (const qkv::Error&) {
        all_supported = false;  // a dtype qkv has no tensor type for
      }
    }
    if (!file.contains("")) {
      try {
        file.get("");
        fail();
      } catch (const qkv::Error&) {
      }
    }
  } catch (const qkv::Error&) {
    return 0;
  }
  if (!all_supported) return 0;

  const std::vector<uint8_t> bytes = st::serialize(tensors, metadata);
  const st::File again = st::File::from_bytes(bytes.data(), bytes.size());
  if (again.metadata() != metadata || again.tensors().size() != tensors.size()) fail();
  std::map<std::string, Tensor> reread;
  for (const auto& [name, t] : tensors) {
    const Tensor back = again.get(name);
    if (back.dtype() != t.dtype() || back.shape() != t.shape() || !same_bytes(back, t)) fail();
    reread.emplace(name, back);
  }
  // qkv's output is canonical: what it reads back from its own file, it writes identically.
  if (st::serialize(reread, again.metadata()) != bytes) fail();
  return 0;
}
