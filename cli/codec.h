// The tokenizer of a training run: characters or byte-level BPE, saved in
// the run directory beside the checkpoint.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "qkv/tokenizer.h"

namespace qkv::cli {

class TextCodec {
 public:
  // kind "char": the code points of `corpus`; "bpe": byte-level BPE trained
  // on `corpus` to `vocab_size` entries.
  static TextCodec train(const std::string& kind, std::string_view corpus, int64_t vocab_size);
  // Whichever tokenizer `dir` holds (char_tokenizer.json, or vocab.json +
  // merges.txt); qkv::Error when it holds neither.
  static TextCodec load(const std::string& dir);
  void save(const std::string& dir) const;

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> ids) const;
  // One label per id (for attention views), valid UTF-8.
  std::vector<std::string> labels(std::span<const int32_t> ids) const;
  int64_t vocab_size() const;
  const char* kind() const;

 private:
  std::variant<text::CharTokenizer, text::ByteLevelBPE> tokenizer_;
};

// `bytes` with every malformed UTF-8 sequence replaced by U+FFFD (a byte-level
// BPE sample can end in the middle of a character), as Python's
// decode(errors="replace") does per maximal invalid subpart.
std::string valid_utf8(std::string_view bytes);

}  // namespace qkv::cli
