// Tokenizers: text <-> token ids.
//
// CharTokenizer: one id per Unicode code point seen in a corpus.
// ByteLevelBPE: GPT-2's byte-level byte-pair encoding (Radford et al. 2019,
// openai/gpt-2 src/encoder.py): UTF-8 bytes are mapped to printable code
// points (bytes_to_unicode), text is split by GPT-2's pre-tokenisation pattern,
// and each piece is merged pair by pair in merge-rank order. Loads and saves
// GPT-2's vocab.json + merges.txt, and trains on a corpus.
//
// Errors (bad UTF-8, unknown characters or ids, hostile files) throw qkv::Error.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qkv::text {

class CharTokenizer {
 public:
  CharTokenizer() = default;
  // The sorted unique code points of `chars` (any order, duplicates allowed).
  explicit CharTokenizer(std::vector<char32_t> chars);
  // The sorted unique code points of a UTF-8 corpus.
  static CharTokenizer from_corpus(std::string_view corpus);

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> ids) const;

  // <dir>/char_tokenizer.json, written atomically; the directory is created.
  void save(const std::string& dir) const;
  static CharTokenizer load(const std::string& dir);

  size_t vocab_size() const { return chars_.size(); }
  const std::vector<char32_t>& chars() const { return chars_; }

 private:
  std::vector<char32_t> chars_;  // id -> code point, ascending
  std::unordered_map<char32_t, int32_t> ids_;
};

class ByteLevelBPE {
 public:
  ByteLevelBPE();
  ~ByteLevelBPE();
  ByteLevelBPE(ByteLevelBPE&&) noexcept;
  ByteLevelBPE& operator=(ByteLevelBPE&&) noexcept;

  // GPT-2's files. A special token is a vocabulary entry kept whole by encode
  // and spelled literally in vocab.json: those named in `special_tokens`, or
  // when none are named, every entry spelled "<|...|>" (GPT-2's <|endoftext|>).
  // The files are treated as hostile: any problem is a qkv::Error naming the
  // file, the line or token, and what is wrong.
  static ByteLevelBPE from_files(const std::string& vocab_json, const std::string& merges_txt,
                                 std::vector<std::string> special_tokens = {});

  // Standard BPE training over the pre-tokenised words of `corpus` (special
  // tokens cut out first) until the vocabulary has `vocab_size` entries or no
  // adjacent pair is left. Ids: the special tokens first, then the 256 byte
  // tokens in the order of their bytes_to_unicode code points, then one id per
  // merge (a merge whose result is already a token reuses its id). Each step
  // merges the most frequent adjacent pair; ties go to the smallest (left id,
  // right id). This is what the `tokenizers` package's BpeTrainer does (with
  // ByteLevel.alphabet() as its initial alphabet), so both give the same
  // vocab.json and merges.txt on the same input.
  static ByteLevelBPE train(std::string_view corpus, size_t vocab_size,
                            std::vector<std::string> special_tokens = {"<|endoftext|>"});

  // <dir>/vocab.json and <dir>/merges.txt, each written atomically.
  void save(const std::string& dir) const;
  static ByteLevelBPE load(const std::string& dir);

  std::vector<int32_t> encode(std::string_view text) const;
  // The UTF-8 bytes the ids stand for (may be an incomplete sequence when the
  // ids split a character).
  std::string decode(std::span<const int32_t> ids) const;

  size_t vocab_size() const;
  size_t num_merges() const;
  // GPT-2's pre-tokenisation of UTF-8 text, exposed for tests.
  static std::vector<std::string> pretokenize(std::string_view text);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace qkv::text
