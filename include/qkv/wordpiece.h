// WordPiece: BERT's tokenizer (Devlin et al. 2019; the WordPiece model of
// Wu et al. 2016), giving the same ids as Hugging Face's BertTokenizerFast,
// that is the `tokenizers` package's BertNormalizer + BertPreTokenizer +
// WordPiece model + BertProcessing / TemplateProcessing:
//
//   1. special tokens ([CLS], [SEP], [PAD], [MASK], [UNK]) written in the text
//      are kept whole, matched before anything else (leftmost, longest);
//   2. the rest is normalised: clean_text drops NUL, U+FFFD and control /
//      format / private-use characters and turns whitespace into ' ';
//      handle_chinese_chars puts spaces around CJK ideographs; strip_accents
//      decomposes (NFD) and drops nonspacing marks (Mn); lowercase;
//   3. split at whitespace, and around every punctuation character (ASCII
//      33-47, 58-64, 91-96, 123-126, and Unicode P*);
//   4. each word becomes its longest vocabulary prefix, then the longest
//      "##"-prefixed continuation, and so on; a word with no such split or
//      longer than max_input_chars_per_word (100) characters becomes [UNK];
//   5. truncation, [CLS] A [SEP] (B [SEP]) with token-type ids 0 / 1, padding.
//
// Character classes and lowercase mappings are tokenizers' own
// (src/text/bert_unicode_tables.inc, probed from it by
// scripts/gen_bert_unicode_tables.py); NFD comes from utf8proc.
//
//   auto wp = WordPiece::load("all-MiniLM-L6-v2");   // tokenizer.json or vocab.txt
//   Encoding e = wp.encode("Hello, world!");          // ids, type_ids, masks, offsets
//   wp.set_truncation(Truncation{.max_length = 128});
//   wp.set_padding(Padding{});                          // to the longest of a batch
//   std::vector<Encoding> batch = wp.encode_batch(sentences);
//
// Files are treated as hostile: a problem (no [UNK] in the vocabulary, a
// duplicate token, bad UTF-8, an empty vocabulary, a tokenizer.json feature
// qkv does not implement) is a qkv::Error naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qkv::text {

// tokenizers' BertNormalizer flags (and BertTokenizer's do_lower_case,
// tokenize_chinese_chars, strip_accents).
struct BertNormalization {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool lowercase = true;
  std::optional<bool> strip_accents;  // unset: the same as lowercase, as in tokenizers
};

struct WordPieceConfig {
  BertNormalization normalization;
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  size_t max_input_chars_per_word = 100;
  // Special tokens: those in the vocabulary are matched whole in the text;
  // [CLS] and [SEP] frame the encodings (BertProcessing).
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  std::string mask_token = "[MASK]";
};

enum class TruncationStrategy { kLongestFirst, kOnlyFirst, kOnlySecond };
enum class Side { kRight, kLeft };

struct Truncation {
  size_t max_length = 512;  // tokens, the special tokens included
  // kLongestFirst: for a pair, tokens come off the longer sequence until both
  // fit, as tokenizers does.
  TruncationStrategy strategy = TruncationStrategy::kLongestFirst;
  Side direction = Side::kRight;  // the end that loses tokens
};

struct Padding {
  std::optional<size_t> length;  // unset: the longest encoding of the batch
  size_t pad_to_multiple_of = 0;  // 0: no rounding up
  Side direction = Side::kRight;
  std::optional<int32_t> pad_id;  // unset: the id of the pad token
  int32_t pad_type_id = 0;
};

struct Encoding {
  std::vector<int32_t> ids;
  std::vector<int32_t> type_ids;             // token-type (segment) ids: 0 = A, 1 = B
  std::vector<int32_t> attention_mask;       // 1 = token, 0 = padding
  std::vector<int32_t> special_tokens_mask;  // 1 = added [CLS] / [SEP] or padding
  // [begin, end) in code points (characters, as Python counts them) of the
  // text the token came from (for a pair, A's or B's); (0, 0) for added
  // special tokens and padding. As tokenizers' offsets.
  std::vector<std::pair<int32_t, int32_t>> offsets;

  size_t size() const { return ids.size(); }
};

// A word after normalisation and splitting, with its [begin, end) code points
// in the original text.
struct PreToken {
  std::string text;
  std::pair<int32_t, int32_t> offsets;
};

struct WordPieceState;  // internal

class WordPiece {
 public:
  WordPiece();
  ~WordPiece();
  WordPiece(const WordPiece&);
  WordPiece& operator=(const WordPiece&);
  WordPiece(WordPiece&&) noexcept;
  WordPiece& operator=(WordPiece&&) noexcept;

  // vocab.txt: one token per line, its id the line number (from 0).
  static WordPiece from_vocab_file(const std::string& path, WordPieceConfig config = {});
  // The same from the tokens in id order; `source` names them in errors.
  static WordPiece from_vocab(std::vector<std::string> tokens, WordPieceConfig config = {},
                              const std::string& source = "vocabulary");
  // Hugging Face's tokenizer.json with a WordPiece model: its normalizer,
  // post-processor, special (added) tokens, truncation and padding.
  static WordPiece from_tokenizer_json(const std::string& path);
  static WordPiece from_tokenizer_json_text(const std::string& json,
                                            const std::string& source = "tokenizer.json");
  // A model directory: tokenizer.json when there is one, else vocab.txt with
  // tokenizer_config.json's do_lower_case, strip_accents,
  // tokenize_chinese_chars and *_token entries when that file exists.
  static WordPiece load(const std::string& dir);

  Encoding encode(std::string_view text, bool add_special_tokens = true) const;
  // encode("a", "b") would take "b" for add_special_tokens; a pair is encode_pair.
  Encoding encode(std::string_view text, const char* pair) const = delete;
  // A pair (two sentences): [CLS] A [SEP] B [SEP], B's tokens type 1.
  Encoding encode_pair(std::string_view text, std::string_view pair,
                       bool add_special_tokens = true) const;
  // Each text encoded (on the thread team), then padded together.
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts,
                                     bool add_special_tokens = true) const;
  std::vector<Encoding> encode_batch_pairs(
      const std::vector<std::pair<std::string, std::string>>& pairs,
      bool add_special_tokens = true) const;

  // The stages on their own: the normalised text, its words, its tokens.
  std::string normalize(std::string_view text) const;
  std::vector<PreToken> pre_tokenize(std::string_view text) const;
  std::vector<std::string> tokenize(std::string_view text) const;

  // tokenizers' WordPiece decoder: tokens joined by spaces, "##" pieces glued
  // to the one before, " ." -> "." and the like cleaned up. Unknown ids throw.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const;

  // Truncation and padding apply to every encode; none by default (unless
  // tokenizer.json set them).
  void set_truncation(std::optional<Truncation> truncation);
  void set_padding(std::optional<Padding> padding);
  const std::optional<Truncation>& truncation() const;
  const std::optional<Padding>& padding() const;

  size_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // qkv::Error when out of range
  const WordPieceConfig& config() const;
  // Ids of the special tokens; nullopt when the vocabulary lacks one.
  int32_t unk_id() const;
  std::optional<int32_t> cls_id() const;
  std::optional<int32_t> sep_id() const;
  std::optional<int32_t> pad_id() const;
  std::optional<int32_t> mask_id() const;
  // How many special tokens encode adds to one text, or to a pair.
  size_t num_special_tokens(bool pair) const;

 private:
  std::unique_ptr<WordPieceState> state_;
};

}  // namespace qkv::text
