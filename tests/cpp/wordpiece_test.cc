// WordPiece (qkv/wordpiece.h) without Python: greedy longest-match-first with
// "##" pieces, [UNK] for unmatched and over-long words, BERT's normalisation
// (cleaning, CJK, accents, lowercase) and splitting, character offsets,
// special tokens in the text, pairs, truncation, padding, decode, batches,
// tokenizer.json, and hostile vocab.txt / tokenizer.json files. The goldens on
// tests/data/wordpiece/cased_vocab.txt are the `tokenizers` package's output
// (tests/python/test_wordpiece.py checks the rest against it).
#include "qkv/wordpiece.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "qkv/error.h"
#include "qkv/threads.h"

namespace qkv::text {
namespace {

namespace fs = std::filesystem;
using Offsets = std::vector<std::pair<int32_t, int32_t>>;
using Strings = std::vector<std::string>;
using Ids = std::vector<int32_t>;

const std::string kCasedVocab = std::string(QKV_TEST_DATA_DIR) + "/wordpiece/cased_vocab.txt";

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("qkv_wordpiece_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name, const std::string& content) const {
    const auto p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

template <class F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then the rest in order.
Strings SmallVocab() {
  return {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un",    "##aff", "##able", "##a",
          "hello", "world", ",",     ".",     "!",      "a",     "naive", "cafe",   "i",
          "##̇",   "中",    "文",    "«",     "»",      "。",    "x",     "y",      "Hello",
          "café",  "straße", "##s",  "'",     "do",     "not",   "n",     "##t",    "t"};
}

WordPiece Small(bool lowercase = true, std::optional<bool> strip_accents = std::nullopt) {
  WordPieceConfig c;
  c.normalization.lowercase = lowercase;
  c.normalization.strip_accents = strip_accents;
  return WordPiece::from_vocab(SmallVocab(), c);
}

// ---- the model ----

TEST(WordPiece, GreedyLongestMatchFirstWithContinuationPieces) {
  const WordPiece wp = Small();
  EXPECT_EQ(wp.tokenize("unaffable"), (Strings{"un", "##aff", "##able"}));
  EXPECT_EQ(wp.tokenize("unaffablea"), (Strings{"un", "##aff", "##able", "##a"}));
  // "aff" has no word-initial token, so the whole word is unknown.
  EXPECT_EQ(wp.tokenize("affable hello"), (Strings{"[UNK]", "hello"}));
  EXPECT_EQ(wp.tokenize("unhello"), (Strings{"[UNK]"}));
  EXPECT_EQ(wp.encode("unaffable").ids, (Ids{2, 5, 6, 7, 3}));
}

TEST(WordPiece, WordsPastMaxInputCharsAreUnknown) {
  const WordPiece wp = Small();
  const std::string hundred = "a" + std::string(99, 'a');  // "a" then 99 × "##a"
  EXPECT_EQ(wp.tokenize(hundred).size(), 100u);
  EXPECT_EQ(wp.tokenize(hundred + "a"), (Strings{"[UNK]"}));
  const Encoding e = wp.encode("x " + hundred + "a y");
  EXPECT_EQ(e.ids, (Ids{2, 24, 1, 25, 3}));
  EXPECT_EQ(e.offsets[2], std::make_pair(2, 103));
  // Counted after normalisation: 101 "é" are 101 characters once stripped
  // (unknown), 60 "e" + U+0301 are 120 unstripped.
  std::string decomposed;
  for (int i = 0; i < 60; ++i) decomposed += "e\u0301";
  WordPieceConfig c;
  c.max_input_chars_per_word = 100;
  EXPECT_EQ(Small(false, false).tokenize(decomposed), (Strings{"[UNK]"}));
}

// ---- normalisation and splitting ----

TEST(WordPiece, LowercaseStripsAccentsAndCased) {
  EXPECT_EQ(Small().normalize("Naïve CAFÉ Straße"), "naive cafe straße");
  EXPECT_EQ(Small().tokenize("Naïve CAFÉ"), (Strings{"naive", "cafe"}));
  EXPECT_EQ(Small(false).normalize("Naïve CAFÉ"), "Naïve CAFÉ");
  EXPECT_EQ(Small(true, false).normalize("Naïve CAFÉ"), "naïve café");
  EXPECT_EQ(Small(false, true).normalize("Naïve CAFÉ"), "Naive CAFE");
  // U+0130 lowercases to "i" + U+0307, which strip_accents then drops.
  EXPECT_EQ(Small(true, false).normalize("İ"), "i\u0307");
  EXPECT_EQ(Small().normalize("İ"), "i");
  EXPECT_EQ(Small(true, false).tokenize("İ"), (Strings{"i", "##̇"}));
  EXPECT_EQ(Small().normalize("ΣΊΣΥΦΟΣ ﬁ Ａ"), "σισυφοσ ﬁ ａ");  // no final sigma, no NFKC
}

TEST(WordPiece, CleansControlAndInvisibleCharacters) {
  const WordPiece wp = Small(false);
  EXPECT_EQ(wp.normalize(std::string("a\0b", 3) + "\u200Bc\uFFFDd\u00ADe\x7F" "f\u202Eg"),
            "abcdefg");
  // Whitespace becomes ' '; NEL, VT and FF are control characters first.
  EXPECT_EQ(wp.normalize("a\tb\nc\rd\u00A0e\u3000f\u2028g"), "a b c d e f g");
  EXPECT_EQ(wp.normalize("a\u0085b\x0B" "c\x0C" "d"), "abcd");
  WordPieceConfig raw;
  raw.normalization.clean_text = false;
  raw.normalization.lowercase = false;
  EXPECT_EQ(WordPiece::from_vocab(SmallVocab(), raw).normalize("a\x01\tb"), "a\x01\tb");
}

TEST(WordPiece, SplitsWhitespacePunctuationAndChineseCharacters) {
  const WordPiece wp = Small();
  const auto words = [&](const std::string& s) {
    Strings out;
    for (const PreToken& p : wp.pre_tokenize(s)) out.push_back(p.text);
    return out;
  };
  EXPECT_EQ(words("hello,world!! «x»"),
            (Strings{"hello", ",", "world", "!", "!", "«", "x", "»"}));
  EXPECT_EQ(words("a$b^c`d~e"), (Strings{"a", "$", "b", "^", "c", "`", "d", "~", "e"}));
  EXPECT_EQ(words("中文。x"), (Strings{"中", "文", "。", "x"}));
  EXPECT_EQ(words("  \t a \u2003 b  "), (Strings{"a", "b"}));
  // Not split: kana and Hangul (not CJK ideographs), a Po of Unicode 10
  // (tokenizers' punctuation tables predate it), symbols.
  EXPECT_EQ(words("カナ a\U00011A3Fb a+b"), (Strings{"カナ", "a\U00011A3Fb", "a", "+", "b"}));
  EXPECT_EQ(words("a€b"), (Strings{"a€b"}));
  WordPieceConfig no_cjk;
  no_cjk.normalization.handle_chinese_chars = false;
  EXPECT_EQ(WordPiece::from_vocab(SmallVocab(), no_cjk).tokenize("中文"), (Strings{"[UNK]"}));
}

TEST(WordPiece, OffsetsCountCharactersOfTheOriginalText) {
  const WordPiece wp = Small();
  const Encoding e = wp.encode("Naïve  café, 中文!");
  EXPECT_EQ(e.ids, (Ids{2, 15, 16, 11, 19, 20, 13, 3}));
  EXPECT_EQ(e.offsets, (Offsets{{0, 0}, {0, 5}, {7, 11}, {11, 12}, {13, 14}, {14, 15}, {15, 16},
                                {0, 0}}));
  // A stripped accent leaves the span of the token: "cafe" + U+0301 -> (0, 4),
  // and a Hangul syllable decomposed (NFD) into three jamo spans one character.
  EXPECT_EQ(wp.encode("cafe\u0301").offsets[1], std::make_pair(0, 4));
  EXPECT_EQ(wp.pre_tokenize("x 한")[1].text, "\u1112\u1161\u11AB");
  EXPECT_EQ(wp.pre_tokenize("x 한")[1].offsets, std::make_pair(2, 3));
  // Removed characters inside a word stay inside its span.
  EXPECT_EQ(wp.encode("un\u200Baffable").offsets,
            (Offsets{{0, 0}, {0, 2}, {3, 6}, {6, 10}, {0, 0}}));
}

TEST(WordPiece, SpecialTokensInTheTextAreKeptWhole) {
  const WordPiece wp = Small();
  const Encoding e = wp.encode("hello[MASK]world [SEP]x [mask]");
  EXPECT_EQ(e.ids, (Ids{2, 9, 4, 10, 3, 24, 1, 1, 1, 3}));  // "[mask]" is "[", "mask", "]"
  EXPECT_EQ(wp.tokenize("[mask]"), (Strings{"[UNK]", "[UNK]", "[UNK]"}));
  EXPECT_EQ(e.offsets[2], std::make_pair(5, 11));
  EXPECT_EQ(e.special_tokens_mask, (Ids{1, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
}

TEST(WordPiece, RejectsInvalidUtf8Text) {
  EXPECT_NE(ErrorOf([] { Small().encode("ab\xC3"); }).find("invalid UTF-8 at byte offset 2"),
            std::string::npos);
}

// ---- the cased vocabulary tokenizers trained (goldens from tokenizers) ----

TEST(WordPiece, CasedVocabularyMatchesTokenizers) {
  WordPieceConfig c;
  c.normalization.lowercase = false;
  const WordPiece wp = WordPiece::from_vocab_file(kCasedVocab, c);
  EXPECT_EQ(wp.vocab_size(), 4000u);
  const Encoding e = wp.encode("Ein Mädchen klettert, während Straßenkünstler spielen!");
  EXPECT_EQ(e.ids, (Ids{2, 631, 794, 2050, 16, 886, 1498, 438, 2999, 1023, 5, 3}));
  EXPECT_EQ(e.offsets, (Offsets{{0, 0}, {0, 3}, {4, 11}, {12, 20}, {20, 21}, {22, 29}, {30, 37},
                                {37, 38}, {38, 45}, {46, 53}, {53, 54}, {0, 0}}));
  EXPECT_EQ(wp.encode("Two young, White males are outside near many bushes.").ids,
            (Ids{2, 742, 798, 16, 3958, 765, 1684, 430, 715, 1028, 1149, 2422, 1392, 1737, 18,
                 3}));
  const Encoding p = wp.encode_pair("Ein Mädchen", "Two males");
  EXPECT_EQ(p.ids, (Ids{2, 631, 794, 3, 742, 1684, 430, 3}));
  EXPECT_EQ(p.type_ids, (Ids{0, 0, 0, 0, 1, 1, 1, 1}));
}

// ---- pairs, truncation, padding ----

TEST(WordPiece, PairsGetTypeIdsAndSeparators) {
  const WordPiece wp = Small();
  const Encoding e = wp.encode_pair("hello world", "x y");
  EXPECT_EQ(e.ids, (Ids{2, 9, 10, 3, 24, 25, 3}));
  EXPECT_EQ(e.type_ids, (Ids{0, 0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(e.special_tokens_mask, (Ids{1, 0, 0, 1, 0, 0, 1}));
  EXPECT_EQ(e.attention_mask, Ids(7, 1));
  EXPECT_EQ(e.offsets[4], std::make_pair(0, 1));  // offsets are within the second text
  const Encoding bare = wp.encode_pair("hello world", "x y", /*add_special_tokens=*/false);
  EXPECT_EQ(bare.ids, (Ids{9, 10, 24, 25}));
  EXPECT_EQ(bare.type_ids, (Ids{0, 0, 1, 1}));
  EXPECT_EQ(wp.num_special_tokens(false), 2u);
  EXPECT_EQ(wp.num_special_tokens(true), 3u);
}

// Lengths as tokenizers gives them (checked with BertWordPieceTokenizer).
TEST(WordPiece, LongestFirstTruncationAsTokenizers) {
  WordPiece wp = Small();
  const std::string six = "a a a a a a", two = "x y";
  const auto lengths = [&](size_t max_length) {
    wp.set_truncation(Truncation{.max_length = max_length});
    const Encoding e = wp.encode_pair(six, two);
    size_t a = 0;
    for (size_t i = 0; i < e.size(); ++i) a += e.type_ids[i] == 0 && e.special_tokens_mask[i] == 0;
    return std::make_pair(a, e.size() - a - 3);
  };
  using P = std::pair<size_t, size_t>;
  EXPECT_EQ(lengths(11), P(6, 2));  // fits
  EXPECT_EQ(lengths(8), P(3, 2));   // only the longer loses tokens
  EXPECT_EQ(lengths(6), P(2, 1));   // both: the longer max / 2 + max % 2, the shorter max / 2
  EXPECT_EQ(lengths(4), P(1, 0));
  EXPECT_EQ(lengths(3), P(0, 0));
  wp.set_truncation(Truncation{.max_length = 4});
  EXPECT_EQ(wp.encode(six).ids, (Ids{2, 14, 14, 3}));
  wp.set_truncation(Truncation{.max_length = 4, .direction = Side::kLeft});
  EXPECT_EQ(wp.encode("hello world x").ids, (Ids{2, 10, 24, 3}));
  wp.set_truncation(Truncation{.max_length = 1});
  EXPECT_NE(ErrorOf([&] { wp.encode(six); }).find("shorter than the 2 special tokens"),
            std::string::npos);
  EXPECT_EQ(wp.encode(six, false).size(), 1u);
}

TEST(WordPiece, OnlyFirstAndOnlySecondTruncation) {
  WordPiece wp = Small();
  wp.set_truncation(Truncation{.max_length = 7, .strategy = TruncationStrategy::kOnlyFirst});
  EXPECT_EQ(wp.encode_pair("a a a a a a", "x y").ids, (Ids{2, 14, 14, 3, 24, 25, 3}));
  EXPECT_NE(ErrorOf([&] { wp.encode_pair("a", "x y x y x y"); }).find("only_first cannot fit"),
            std::string::npos);
  wp.set_truncation(Truncation{.max_length = 7, .strategy = TruncationStrategy::kOnlySecond});
  EXPECT_EQ(wp.encode_pair("x y", "a a a a a a").ids, (Ids{2, 24, 25, 3, 14, 14, 3}));
  EXPECT_NE(ErrorOf([&] { wp.encode("a a a a a a a a"); }).find("only_second needs a pair"),
            std::string::npos);
}

TEST(WordPiece, PaddingToLongestFixedAndMultiples) {
  WordPiece wp = Small();
  wp.set_padding(Padding{});
  const std::vector<Encoding> batch = wp.encode_batch({"hello", "hello world , x"});
  EXPECT_EQ(batch[0].ids, (Ids{2, 9, 3, 0, 0, 0}));
  EXPECT_EQ(batch[0].attention_mask, (Ids{1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(batch[0].special_tokens_mask, (Ids{1, 0, 1, 1, 1, 1}));
  EXPECT_EQ(batch[0].offsets.back(), std::make_pair(0, 0));
  EXPECT_EQ(batch[1].size(), 6u);
  EXPECT_EQ(wp.encode("hello").size(), 3u);  // alone, the longest is itself
  wp.set_padding(Padding{.pad_to_multiple_of = 4, .direction = Side::kLeft, .pad_type_id = 1});
  const Encoding e = wp.encode("hello");
  EXPECT_EQ(e.ids, (Ids{0, 2, 9, 3}));
  EXPECT_EQ(e.type_ids, (Ids{1, 0, 0, 0}));
  wp.set_padding(Padding{.length = 5, .pad_id = 7});
  EXPECT_EQ(wp.encode("hello").ids, (Ids{2, 9, 3, 7, 7}));
  EXPECT_EQ(wp.encode("hello world , x y").size(), 7u);  // longer than the length: untouched
  const Strings no_pad{"[UNK]", "[CLS]", "[SEP]"};
  WordPiece bare = WordPiece::from_vocab(no_pad);
  EXPECT_NE(ErrorOf([&] { bare.set_padding(Padding{}); }).find("no '[PAD]' token"),
            std::string::npos);
}

TEST(WordPiece, BatchOnThreadsEqualsOneByOne) {
  const WordPiece wp = Small();
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i)
    texts.push_back(std::string(i % 7, ' ') + "hello, world " + std::string(i % 5, 'a') +
                    (i % 3 ? " unaffable" : " Naïve 中"));
  const int before = num_threads();
  set_num_threads(2);
  const std::vector<Encoding> batch = wp.encode_batch(texts);
  set_num_threads(before);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const Encoding one = wp.encode(texts[i]);
    EXPECT_EQ(batch[i].ids, one.ids) << i;
    EXPECT_EQ(batch[i].offsets, one.offsets) << i;
  }
  std::vector<std::pair<std::string, std::string>> pairs{{"hello", "world"}, {"x", "y y"}};
  EXPECT_EQ(wp.encode_batch_pairs(pairs)[1].ids, (Ids{2, 24, 3, 25, 25, 3}));
}

// ---- decode ----

TEST(WordPiece, DecodeJoinsPiecesAndCleansUp) {
  const WordPiece wp = Small();
  EXPECT_EQ(wp.decode(wp.encode("unaffable hello , world !").ids), "unaffable hello, world!");
  EXPECT_EQ(wp.decode(wp.encode("hello").ids, false), "[CLS] hello [SEP]");
  EXPECT_NE(ErrorOf([&] { wp.decode({99}); }).find("no token has id 99"), std::string::npos);
}

// ---- files ----

TEST(WordPiece, VocabTxtAndModelDirectories) {
  TempDir dir;
  std::string text;
  for (const std::string& t : SmallVocab()) text += t + "\r\n";
  dir.file("vocab.txt", text);
  const WordPiece wp = WordPiece::load(dir.str());
  EXPECT_EQ(wp.vocab_size(), SmallVocab().size());
  EXPECT_EQ(wp.tokenize("Naïve"), (Strings{"naive"}));
  EXPECT_EQ(wp.token_to_id("##able"), 7);
  EXPECT_EQ(wp.id_to_token(7), "##able");
  EXPECT_EQ(wp.pad_id(), 0);
  EXPECT_EQ(wp.mask_id(), 4);
  dir.file("tokenizer_config.json", R"({"do_lower_case": false, "strip_accents": null})");
  EXPECT_EQ(WordPiece::load(dir.str()).tokenize("Naïve Hello"), (Strings{"[UNK]", "Hello"}));
  EXPECT_NE(ErrorOf([&] { WordPiece::load(dir.str() + "/nothing"); }).find("neither"),
            std::string::npos);
}

TEST(WordPiece, HostileVocabTxt) {
  TempDir dir;
  const auto error = [&](const std::string& content) {
    const std::string path = dir.file("vocab.txt", content);
    return ErrorOf([&] { WordPiece::from_vocab_file(path); });
  };
  const std::string base = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n";
  EXPECT_EQ(error(base), "(no error)");
  EXPECT_NE(error("[PAD]\n[CLS]\n[SEP]\n").find("no unknown-word token '[UNK]'"),
            std::string::npos);
  EXPECT_NE(error(base + "hello\n").find("'hello' is listed twice, with ids 4 and 5"),
            std::string::npos);
  EXPECT_NE(error(base + "caf\xE9\n").find("line 6: invalid UTF-8"), std::string::npos);
  EXPECT_NE(error("").find("has no tokens"), std::string::npos);
  EXPECT_NE(error("[UNK]\n\n[CLS]\n[SEP]\n").find("line 2 is empty"), std::string::npos);
  EXPECT_NE(error("[UNK]\n[SEP]\n").find("no '[CLS]' token"), std::string::npos);
  EXPECT_NE(ErrorOf([&] { WordPiece::from_vocab_file(dir.str() + "/missing.txt"); })
                .find("cannot open"),
            std::string::npos);
  WordPieceConfig c;
  c.unk_token = "<unk>";
  EXPECT_NE(ErrorOf([&] { WordPiece::from_vocab(SmallVocab(), c); }).find("'<unk>'"),
            std::string::npos);
}

// A small tokenizer.json in tokenizers' format: cased, no accent stripping,
// TemplateProcessing, an added token past the vocabulary, truncation, padding.
std::string TokenizerJson() {
  return R"({
    "version": "1.0",
    "truncation": {"direction": "Right", "max_length": 6, "strategy": "LongestFirst", "stride": 0},
    "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
    "added_tokens": [
      {"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 7, "content": "<new>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
    ],
    "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                   "strip_accents": false, "lowercase": false},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
      "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
      "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                         "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 100,
              "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "Café": 4, "x": 5, "##y": 6}}
  })";
}

TEST(WordPiece, TokenizerJson) {
  const WordPiece wp = WordPiece::from_tokenizer_json_text(TokenizerJson());
  EXPECT_EQ(wp.vocab_size(), 8u);
  const Encoding e = wp.encode("Café xy<new>");
  EXPECT_EQ(e.ids, (Ids{2, 4, 5, 6, 7, 3, 0, 0}));
  EXPECT_EQ(e.offsets, (Offsets{{0, 0}, {0, 4}, {5, 6}, {6, 7}, {7, 12}, {0, 0}, {0, 0}, {0, 0}}));
  EXPECT_EQ(wp.encode("x x x x x x").ids, (Ids{2, 5, 5, 5, 5, 3, 0, 0}));  // truncated to 6
  EXPECT_EQ(wp.encode("café").ids[1], 1);
  EXPECT_EQ(wp.decode(e.ids), "Café xy <new>");
  ASSERT_TRUE(wp.truncation().has_value());
  EXPECT_EQ(wp.truncation()->max_length, 6u);
  EXPECT_EQ(wp.padding()->length, std::optional<size_t>(8));
}

TEST(WordPiece, HostileTokenizerJson) {
  const auto error = [](const std::string& from, const std::string& to) {
    std::string json = TokenizerJson();
    const size_t at = json.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    json.replace(at, from.size(), to);
    return ErrorOf([&] { WordPiece::from_tokenizer_json_text(json); });
  };
  EXPECT_NE(error(R"("type": "WordPiece", "unk)", R"("type": "BPE", "unk)")
                .find("model.type is 'BPE'"),
            std::string::npos);
  EXPECT_NE(error(R"("[UNK]": 1,)", R"("<unk>": 1,)").find("no unknown-word token '[UNK]'"),
            std::string::npos);
  EXPECT_NE(error(R"("##y": 6)", R"("##y": 5)").find("id 5 to both"), std::string::npos);
  EXPECT_NE(error(R"("##y": 6)", R"("##y": 9)").find("ids must run 0..6"), std::string::npos);
  EXPECT_NE(error(R"("lowercase": false)", R"("lowercase": 1)")
                .find("normalizer.lowercase must be true or false"),
            std::string::npos);
  EXPECT_NE(error(R"({"type": "BertNormalizer")", R"({"type": "NFC")")
                .find("normalizer.type is 'NFC'"),
            std::string::npos);
  EXPECT_NE(error(R"("stride": 0)", R"("stride": 2)").find("stride"), std::string::npos);
  EXPECT_NE(error(R"("id": 7, "content": "<new>", "single_word": false, "lstrip": false)",
                  R"("id": 7, "content": "<new>", "single_word": false, "lstrip": true)")
                .find("lstrip is true for '<new>'"),
            std::string::npos);
  EXPECT_NE(error(R"("id": 7, "content")", R"("id": 9, "content")").find("no token has id 7"),
            std::string::npos);
  EXPECT_NE(error(R"("ids": [3])", R"("ids": [30])").find("past the vocabulary"),
            std::string::npos);
  EXPECT_NE(error(R"({"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],)",
                  R"({"SpecialToken": {"id": "[SEP]", "type_id": 0}}],)")
                .find("must place sequence A"),
            std::string::npos);
  EXPECT_NE(error(R"("pre_tokenizer": {"type": "BertPreTokenizer"})", R"("pre_tokenizer": null)")
                .find("BertPreTokenizer"),
            std::string::npos);
  EXPECT_NE(ErrorOf([] { WordPiece::from_tokenizer_json_text("{\"model\": "); })
                .find("is not valid JSON"),
            std::string::npos);
}

TEST(WordPiece, CopiesAreIndependent) {
  WordPiece a = Small();
  WordPiece b = a;
  b.set_truncation(Truncation{.max_length = 3});
  EXPECT_FALSE(a.truncation().has_value());
  EXPECT_EQ(b.encode("hello world").ids, (Ids{2, 9, 3}));
  EXPECT_EQ(a.encode("hello world").ids, (Ids{2, 9, 10, 3}));
}

}  // namespace
}  // namespace qkv::text
