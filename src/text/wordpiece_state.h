// WordPiece's data, shared by the encoder (wordpiece.cc) and the file readers
// (wordpiece_files.cc). Internal.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qkv/wordpiece.h"
#include "text/bert_normalizer.h"

namespace qkv::text {

// The vocabulary's string -> id lookup, read on every word: open addressing
// over one flat array (linear probing, at most half full), the keys in one
// arena, so that a lookup hashes once and reads a slot or two, where
// std::unordered_map follows pointers to scattered nodes (half of encode's
// time with it).
class TokenTable {
 public:
  // Stores key -> id, or returns the id already stored for `key` (else -1).
  int32_t insert(std::string_view key, int32_t id);

  int32_t find(std::string_view key) const {  // -1 when absent
    if (slots_.empty()) return -1;
    const uint64_t h = hash(key);
    const auto tag = static_cast<uint32_t>(h);
    for (size_t i = h >> shift_;; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& s = slots_[i];
      if (s.length == 0) return -1;
      if (s.tag == tag && s.length == key.size() &&
          std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0)
        return s.id;
    }
  }

  size_t size() const { return size_; }
  size_t longest() const { return longest_; }  // bytes of the longest key

 private:
  struct Slot {
    uint32_t tag, offset, length;  // length 0: empty (keys are never empty)
    int32_t id;
  };

  // 8 bytes at a time, multiply-xorshift mixing; the top bits pick the slot.
  static uint64_t hash(std::string_view key) {
    const char* p = key.data();
    const size_t n = key.size();
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t v;
      std::memcpy(&v, p + i, 8);
      h = (h ^ v) * 0xFF51AFD7ED558CCDull;
      h ^= h >> 32;
    }
    if (i < n) {
      uint64_t v = 0;
      std::memcpy(&v, p + i, n - i);
      h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
      h ^= h >> 29;
    }
    return (h ^ (h >> 32)) * 0x9E3779B97F4A7C15ull;
  }
  void rehash(size_t slots);

  std::vector<Slot> slots_;
  std::string arena_;
  size_t size_ = 0, longest_ = 0;
  int shift_ = 64;
};

// A token matched whole in the raw text before normalisation (tokenizers'
// added tokens with normalized = false; BERT's special tokens).
struct AddedToken {
  std::u32string text;
  int32_t id;
  bool special;  // dropped by decode(skip_special_tokens = true)
};

// One step of a post-processing template: a special token's ids, or the
// tokens of sequence A or B; either with its token-type id.
struct TemplatePiece {
  enum Kind { kSpecial, kSequenceA, kSequenceB } kind;
  std::vector<int32_t> ids;  // kSpecial only
  int32_t type_id;
};

struct WordPieceState {
  WordPieceConfig config;
  // BertNormalizer's flags; unset: tokenizer.json has no normalizer.
  std::optional<BertNormalizerFlags> normalizer;

  std::vector<std::string> tokens;  // id -> token; the model's, then added ones past them
  size_t model_vocab_size = 0;
  TokenTable whole;         // model token -> id
  TokenTable continuation;  // model token with the prefix cut off -> id, for tokens with the prefix
  int32_t unk_id = -1;

  std::vector<AddedToken> added;           // longest first
  std::array<bool, 256> added_first{};     // (first code point & 0xFF) of some added token
  std::vector<bool> is_special;            // id -> an added special token

  // Unset: no post-processor, add_special_tokens changes nothing.
  std::optional<std::vector<TemplatePiece>> single_template, pair_template;

  // Decoder: tokenizers' WordPiece decoder, or none (tokens joined by spaces).
  bool has_decoder = true;
  std::string decoder_prefix = "##";
  bool decoder_cleanup = true;

  std::optional<Truncation> truncation;
  std::optional<Padding> padding;

  std::optional<int32_t> cls_id, sep_id, pad_id, mask_id;

  // Builds the lookup maps from `tokens` (the model's vocabulary); throws
  // naming `source` on an empty vocabulary, an empty, duplicate or non-UTF-8
  // token, or a missing unk token.
  void set_vocabulary(std::vector<std::string> vocab, const std::string& source);
  // Registers an added token (after set_vocabulary).
  void add_token(const std::string& text, int32_t id, bool special, const std::string& source);
  // BertProcessing: [CLS] A [SEP] and [CLS] A [SEP] B [SEP], B's part type 1.
  void set_bert_processing(int32_t cls, int32_t sep);
  // The ids of config's special tokens, from the vocabulary.
  void resolve_special_ids();
};

// vocab.txt's tokens, one a line (tokenizers' WordPiece::read_file: lines with
// trailing whitespace trimmed).
std::vector<std::string> read_vocab_txt(const std::string& path);

}  // namespace qkv::text
