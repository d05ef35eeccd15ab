// WordPiece's data, shared by the encoder (wordpiece.cc) and the file readers
// (wordpiece_files.cc). Internal.
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "qkv/wordpiece.h"
#include "text/bert_normalizer.h"

namespace qkv::text {

struct StringViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using TokenIds = std::unordered_map<std::string, int32_t, StringViewHash, std::equal_to<>>;

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
  TokenIds whole;         // model token -> id
  TokenIds continuation;  // model token with the prefix cut off -> id, for tokens with the prefix
  size_t max_whole_bytes = 0;
  size_t max_continuation_bytes = 0;
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
