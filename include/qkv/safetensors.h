// The safetensors format: an mmap reader and an atomic writer.
//
// The reader treats files as hostile and enforces the reference
// implementation's rules: header <= 100 MB, valid UTF-8 JSON object, no
// duplicate names, __metadata__ string -> string, known dtypes, shape x dtype
// size (overflow-checked) equal to the byte range, ranges contiguous, in order
// and covering the data buffer exactly. Any violation throws qkv::Error naming
// the rule and the values.
//
// Files are written as the reference Python package writes them, byte for byte:
// tensors ordered by descending dtype alignment (I64, F32, I32, BF16, F16,
// BOOL for qkv's dtypes), then by name; the header padded with spaces to a
// multiple of 8 bytes, so every tensor is naturally aligned in the file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qkv/tensor.h"

namespace qkv::safetensors {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  std::string dtype;  // as written in the file: "F32", "BF16", "F64", ...
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data buffer
  uint64_t end = 0;
};

class File {
 public:
  // Maps the file read-only and validates it.
  static File open(const std::string& path);
  // Validates an in-memory image; the bytes are copied.
  static File from_bytes(const void* data, size_t size);

  // Tensor entries in data order (by offset).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  // A zero-copy view into the mapping (kept alive by the tensor). Throws when the
  // file's dtype is one qkv has no tensor type for (e.g. F64). Writing to the
  // view changes this process's copy-on-write pages only, never the file. Data
  // that is not aligned to its element size (possible only in hand-made files)
  // is copied instead, since kernels assume natural alignment.
  Tensor get(const std::string& name) const;

 private:
  std::shared_ptr<Storage> buffer_;  // the whole file image
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::string path_;  // for error messages; empty for from_bytes
  static File parse(std::shared_ptr<Storage> buffer, const std::string& path);
};

// Every tensor of a file, by name.
std::map<std::string, Tensor> load(const std::string& path);

// Writes atomically: a temporary file beside `path`, fsync, rename, fsync of the
// directory. Tensors are written in the order above; any strides are accepted.
// Metadata keys are written in name order (the Python package's order for two
// or more keys varies from run to run).
void save(const std::string& path, const std::map<std::string, Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {});
// The exact bytes save() would write.
std::vector<uint8_t> serialize(const std::map<std::string, Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace qkv::safetensors
