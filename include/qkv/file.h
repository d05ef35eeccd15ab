// Whole files for programs built on qkv (the qkv command's data, configs,
// logs and reports) and for qkv's own readers.
#pragma once

#include <string>
#include <string_view>

namespace qkv {

// Crash-safe replacement: the bytes go to a temporary file beside `path`,
// which is fsync'ed and renamed over it, so a reader sees the old file or the
// whole new one, never a part. qkv::Error names the path and the cause.
void write_file_atomically(const std::string& path, std::string_view bytes);

// The bytes of the regular file at `path`. qkv::Error led by `what` (the
// caller or the file's role: "WordPiece", "data file") and naming the path:
// "cannot open 'p': it does not exist" (or: it is not a regular file, or the
// system's reason), "cannot read 'p'".
std::string read_file(const std::string& path, std::string_view what);

}  // namespace qkv
