// Crash-safe file replacement for programs built on qkv (the qkv command's
// configs, logs and reports): the bytes go to a temporary file beside `path`,
// which is fsync'ed and renamed over it, so a reader sees the old file or the
// whole new one, never a part. qkv::Error names the path and the cause.
#pragma once

#include <string>
#include <string_view>

namespace qkv {

void write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace qkv
