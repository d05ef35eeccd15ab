// GPT-2's byte-level alphabet and pre-tokenisation. Internal.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace qkv::text {

// bytes_to_unicode() of openai/gpt-2 src/encoder.py: the printable bytes map
// to themselves, the other 68 to U+0100.. in byte order, so that every byte is
// a visible character in vocab.json and merges.txt.
const std::array<char32_t, 256>& gpt2_byte_to_code_point();
// The inverse: -1 for a code point that stands for no byte.
int gpt2_code_point_to_byte(char32_t cp);

// The byte ranges [begin, end) of the pieces GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// splits UTF-8 `text` into, matched leftmost-first as a backtracking regex
// engine does. \s is Unicode White_Space, \p{L} and \p{N} the general
// categories L* and N* (utf8proc). Throws qkv::Error on invalid UTF-8.
std::vector<std::pair<size_t, size_t>> gpt2_split(std::string_view text);

}  // namespace qkv::text
