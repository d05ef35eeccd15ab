// BERT's text normalisation and word splitting, as the `tokenizers` package's
// BertNormalizer and BertPreTokenizer do them, with each output character
// traced back to the input character it came from. Internal to WordPiece.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace qkv::text {

struct CodePointRange {
  char32_t first, last;  // inclusive
};

// A character of the normalised text and the index of the original character
// it came from (tokenizers' alignment; every normalised character has one).
struct TracedChar {
  char32_t cp;
  uint32_t source;
};

struct BertNormalizerFlags {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;
};

// The character classes of tokenizers' BertNormalizer / BertPreTokenizer.
bool is_bert_removed(char32_t cp);      // dropped by clean_text
bool is_bert_whitespace(char32_t cp);   // Rust's char::is_whitespace
bool is_bert_punctuation(char32_t cp);  // ASCII punctuation or P*
bool is_bert_nonspacing_mark(char32_t cp);
bool is_bert_chinese_char(char32_t cp);

// Runs clean_text, handle_chinese_chars, strip_accents (NFD, then Mn dropped)
// and lowercase over `in`, in tokenizers' order, into `out` (cleared first).
// A character that a step inserts takes the source of the character before it,
// and NFD's canonical reordering moves characters but not sources, as
// tokenizers' NormalizedString::transform does. `scratch` is working memory.
void bert_normalize(const BertNormalizerFlags& flags, std::span<const TracedChar> in,
                    std::vector<TracedChar>& out, std::vector<TracedChar>& scratch);

}  // namespace qkv::text
