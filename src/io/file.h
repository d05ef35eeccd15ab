// File helpers shared by the readers and writers in src/io: a read-only
// mapping whose lifetime is a Storage's, and crash-safe replacement of a file.
// Internal to the library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "qkv/tensor.h"

namespace qkv::io {

// Maps `path` into memory; the mapping lives as long as the returned Storage.
// The file is opened read-only and mapped MAP_PRIVATE with write permission,
// so an in-place op on a loaded tensor copies the touched page instead of
// faulting, and never reaches the file. An empty file gives an empty Storage
// (mmap refuses length 0). `what` names the caller in errors ("safetensors").
std::shared_ptr<Storage> map_file(const std::string& path, const char* what);

// Appends bytes to the file being written by write_file_atomically.
class FileSink {
 public:
  void write(const void* data, size_t size);
  uint64_t bytes_written() const { return written_; }

 private:
  friend void write_file_atomically(const std::string&, const std::function<void(FileSink&)>&);
  FileSink(int fd, std::string temp_path) : fd_(fd), temp_path_(std::move(temp_path)) {}
  int fd_;
  std::string temp_path_;
  uint64_t written_ = 0;
};

// Replaces `path` with whatever `produce` writes, so that a reader sees either
// the old file or the complete new one, even across a crash: the bytes go to a
// temporary file in the same directory (rename is atomic only within one file
// system), which is fsync'ed, renamed over `path`, and the directory fsync'ed
// so the rename itself is durable. If anything fails (including `produce`
// throwing), the temporary file is removed, the old file is untouched, and the
// exception propagates (I/O failures as qkv::Error with the path and errno).
void write_file_atomically(const std::string& path, const std::function<void(FileSink&)>& produce);
void write_file_atomically(const std::string& path, std::span<const uint8_t> bytes);

}  // namespace qkv::io
