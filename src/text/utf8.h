// UTF-8 decoding and encoding shared by the tokenizers. Internal.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace qkv::text {

// Decodes the code point at text[pos], advancing pos past it. Throws
// qkv::Error naming `what` and the byte offset on malformed UTF-8 (overlong
// forms, surrogates, values past U+10FFFF, truncated sequences).
char32_t decode_utf8(std::string_view text, size_t& pos, const char* what);

void append_utf8(std::string& out, char32_t cp);

// "'a' (U+0061)": a code point as a person reads it in an error message.
std::string describe_code_point(char32_t cp);

}  // namespace qkv::text
