// Tokenizers (qkv/tokenizer.h): character-level round trips, GPT-2's
// pre-tokenisation, byte-level BPE on a hand-made vocabulary, training
// determinism, save/load, and hostile vocab.json / merges.txt files.
#include "qkv/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "qkv/error.h"
#include "text/gpt2_pretokenize.h"
#include "text/utf8.h"

namespace qkv::text {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("qkv_tokenizer_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
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

// ---- CharTokenizer ----

TEST(CharTokenizer, RoundTripsEmojiAndCombiningMarks) {
  // "e" + COMBINING ACUTE stays two code points; the emoji is one (4 bytes),
  // the family emoji a ZWJ sequence of several.
  const std::string corpus =
      "hello w\u00f6rld e\u0301 \U0001F600 \U0001F468\u200D\U0001F469 \u4e2d\n";
  const auto tok = CharTokenizer::from_corpus(corpus);
  const auto ids = tok.encode(corpus);
  EXPECT_EQ(tok.decode(ids), corpus);
  EXPECT_EQ(ids.size(), 23u);
  for (size_t i = 1; i < tok.chars().size(); ++i) EXPECT_LT(tok.chars()[i - 1], tok.chars()[i]);
  EXPECT_EQ(tok.chars().front(), U'\n');
  EXPECT_EQ(tok.chars().back(), U'\U0001F600');
  EXPECT_EQ(tok.encode("e\u0301"),
            (std::vector<int32_t>{tok.encode("e")[0], tok.encode("\u0301")[0]}));
}

TEST(CharTokenizer, UnknownCharacterNamesItAndItsPosition) {
  const auto tok = CharTokenizer::from_corpus("abc");
  const auto message = ErrorOf([&] { tok.encode("ab\u00e9c"); });
  EXPECT_NE(message.find("'\u00e9' (U+00E9)"), std::string::npos) << message;
  EXPECT_NE(message.find("position 2"), std::string::npos) << message;
  EXPECT_NE(ErrorOf([&] {
              tok.decode(std::vector<int32_t>{0, 3});
            }).find("id 3 at position 1"),
            std::string::npos);
}

TEST(CharTokenizer, InvalidUtf8NamesTheByteOffset) {
  for (const std::string& bad : {std::string("ab\xff"), std::string("ab\xc3"),
                                 std::string("a\xc0\xafz"), std::string("x\xed\xa0\x80")}) {
    const auto message = ErrorOf([&] { CharTokenizer::from_corpus(bad); });
    EXPECT_NE(message.find("invalid UTF-8 at byte offset"), std::string::npos) << message;
  }
  EXPECT_NE(ErrorOf([] { CharTokenizer::from_corpus("abc\xff"); }).find("byte offset 3"),
            std::string::npos);
}

TEST(CharTokenizer, SavesAndLoads) {
  TempDir dir;
  const auto tok = CharTokenizer::from_corpus("To be, or not to be \u2014 \U0001F3AD");
  tok.save(dir.str() + "/tok");
  const auto back = CharTokenizer::load(dir.str() + "/tok");
  EXPECT_EQ(back.chars(), tok.chars());
  const std::string text = "not to be \U0001F3AD";
  EXPECT_EQ(back.encode(text), tok.encode(text));
}

TEST(CharTokenizer, HostileFilesAreClearErrors) {
  TempDir dir;
  dir.file("char_tokenizer.json", "{not json");
  EXPECT_NE(ErrorOf([&] { CharTokenizer::load(dir.str()); }).find("not valid JSON"),
            std::string::npos);
  dir.file("char_tokenizer.json", R"({"format": "qkv.char_tokenizer", "chars": ["b", "a"]})");
  EXPECT_NE(ErrorOf([&] { CharTokenizer::load(dir.str()); }).find("out of order"),
            std::string::npos);
  dir.file("char_tokenizer.json", R"({"format": "qkv.char_tokenizer", "chars": ["ab"]})");
  EXPECT_NE(ErrorOf([&] { CharTokenizer::load(dir.str()); }).find("exactly one character"),
            std::string::npos);
  dir.file("char_tokenizer.json", R"({"chars": ["a"]})");
  EXPECT_NE(ErrorOf([&] { CharTokenizer::load(dir.str()); }).find("not a qkv character"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { CharTokenizer::load(dir.str() + "/missing"); }).find("cannot open"),
            std::string::npos);
}

// ---- GPT-2 pre-tokenisation ----

TEST(Gpt2Pretokenize, MatchesThePattern) {
  using V = std::vector<std::string>;
  EXPECT_EQ(
      ByteLevelBPE::pretokenize("I'm  here's 123 hello!!  \n\nworld  "),
      (V{"I", "'m", " ", " here", "'s", " 123", " hello", "!!", "  \n", "\n", "world", "  "}));
  EXPECT_EQ(ByteLevelBPE::pretokenize("don't 'LL x'll"), (V{"don", "'t", " '", "LL", " x", "'ll"}));
  EXPECT_EQ(ByteLevelBPE::pretokenize("caf\u00e9 \u0661\u0662 \U0001F600\U0001F600 e\u0301"),
            (V{"caf\u00e9", " \u0661\u0662", " \U0001F600\U0001F600", " e", "\u0301"}));
  EXPECT_EQ(ByteLevelBPE::pretokenize(" "), (V{" "}));
  EXPECT_EQ(ByteLevelBPE::pretokenize("a\u3000b"), (V{"a", "\u3000", "b"}));
  EXPECT_TRUE(ByteLevelBPE::pretokenize("").empty());
}

TEST(Gpt2Pretokenize, ByteAlphabet) {
  const auto& table = gpt2_byte_to_code_point();
  EXPECT_EQ(table['!'], U'!');
  EXPECT_EQ(table[' '], U'\u0120');   // 'Ġ'
  EXPECT_EQ(table['\n'], U'\u010A');  // 'Ċ'
  EXPECT_EQ(table[0xAD], U'\u0143');
  for (int b = 0; b < 256; ++b) EXPECT_EQ(gpt2_code_point_to_byte(table[b]), b);
}

// ---- ByteLevelBPE ----

// vocab.json with the 256 byte tokens (id = byte) and then `extra`.
std::string HandVocab(const std::vector<std::string>& extra) {
  std::string json = "{";
  int id = 0;
  auto add = [&](const std::string& spelling) {
    std::string escaped;
    for (char c : spelling) {
      if (c == '"' || c == '\\') escaped += '\\';
      escaped += c;
    }
    json += (id ? ", \"" : "\"") + escaped + "\": " + std::to_string(id);
    ++id;
  };
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, gpt2_byte_to_code_point()[b]);
    add(s);
  }
  for (const auto& e : extra) add(e);
  return json + "}";
}

TEST(ByteLevelBPE, HandMadeVocabulary) {
  TempDir dir;
  const auto vocab =
      dir.file("vocab.json", HandVocab({"ll", "he", "hell", "hello", "\u0120w", "<|endoftext|>"}));
  const auto merges = dir.file("merges.txt", "#version: 0.2\nl l\nh e\nhe ll\nhell o\n\u0120 w\n");
  const auto bpe = ByteLevelBPE::from_files(vocab, merges);
  EXPECT_EQ(bpe.vocab_size(), 262u);
  EXPECT_EQ(bpe.num_merges(), 5u);
  EXPECT_EQ(bpe.encode("hello world"), (std::vector<int32_t>{259, 260, 'o', 'r', 'l', 'd'}));
  EXPECT_EQ(bpe.encode("hell<|endoftext|>hello"), (std::vector<int32_t>{258, 261, 259}));
  EXPECT_EQ(bpe.encode("hel"), (std::vector<int32_t>{257, 'l'}));
  const std::string text = "hello \U0001F600 world<|endoftext|> e\u0301!";
  EXPECT_EQ(bpe.decode(bpe.encode(text)), text);
  EXPECT_EQ(bpe.encode("hello world"), bpe.encode("hello world"));  // from the cache

  bpe.save(dir.str() + "/saved");
  const auto back = ByteLevelBPE::load(dir.str() + "/saved");
  EXPECT_EQ(back.encode(text), bpe.encode(text));
  EXPECT_NE(ErrorOf([&] { bpe.encode("ab\xfe"); }).find("byte offset 2"), std::string::npos);
}

TEST(ByteLevelBPE, TrainingIsDeterministicAndRoundTrips) {
  std::string corpus;
  for (int i = 0; i < 30; ++i)
    corpus += "the cat sat on the mat; the hat\u00e9 is flat " + std::to_string(i % 7) + "!\n";
  const auto a = ByteLevelBPE::train(corpus, 280);
  const auto b = ByteLevelBPE::train(corpus, 280);
  EXPECT_EQ(a.vocab_size(), 280u);
  EXPECT_EQ(a.encode(corpus), b.encode(corpus));
  // Training stops when no adjacent pair is left: then every word of 14 per
  // line is one token.
  const auto full = ByteLevelBPE::train(corpus, 1000);
  EXPECT_LT(full.vocab_size(), 1000u);
  EXPECT_EQ(full.encode(corpus).size(), 30u * 14u);
  EXPECT_EQ(a.decode(a.encode(corpus)), corpus);
  EXPECT_EQ(a.encode("<|endoftext|>"), (std::vector<int32_t>{0}));
  // The most frequent pair is merged first: " t" + "he" are among the first.
  EXPECT_EQ(a.encode(" the").size(), 1u);

  TempDir dir;
  a.save(dir.str());
  const auto c = ByteLevelBPE::load(dir.str());
  EXPECT_EQ(c.vocab_size(), 280u);
  EXPECT_EQ(c.encode(corpus), a.encode(corpus));
  std::ifstream v1(dir.str() + "/merges.txt");
  const std::string merges1((std::istreambuf_iterator<char>(v1)), {});
  b.save(dir.str());
  std::ifstream v2(dir.str() + "/merges.txt");
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(v2)), {}), merges1);
  EXPECT_NE(ErrorOf([&] { ByteLevelBPE::train(corpus, 100); }).find("smaller than the 256"),
            std::string::npos);
}

TEST(ByteLevelBPE, HostileFilesAreClearErrors) {
  TempDir dir;
  const auto good_vocab = dir.file("good.json", HandVocab({"ll"}));
  const auto good_merges = dir.file("good.txt", "#version: 0.2\nl l\n");
  EXPECT_NO_THROW(ByteLevelBPE::from_files(good_vocab, good_merges));
  auto error = [&](const std::string& vocab, const std::string& merges) {
    return ErrorOf(
        [&] { ByteLevelBPE::from_files(dir.file("v.json", vocab), dir.file("m.txt", merges)); });
  };
  auto expect = [](const std::string& message, const std::string& part) {
    EXPECT_NE(message.find(part), std::string::npos) << message;
  };
  expect(error("{\"a\": 0,", "l l\n"), "is not valid JSON");
  expect(error("{\"a\": 0,", "l l\n"), "v.json");
  expect(error("[1, 2]", ""), "not a JSON object");
  expect(error(HandVocab({"ll"}), "#version: 0.2\nl\n"), "line 2: \"l\" is not two tokens");
  expect(error(HandVocab({"ll"}), "l l x\n"), "m.txt' line 1");
  expect(error(HandVocab({"ll"}), "l  l\n"), "not two tokens");
  expect(error(HandVocab({"ll"}), "l q\u00e9\n"), "is not in");
  expect(error(HandVocab({"ll"}), "h e\n"), "the merge of \"h\" and \"e\" is not in");
  expect(error(HandVocab({"ll"}), "l l\nl l\n"), "duplicate merge");
  std::string collision = HandVocab({"ll"});
  collision.replace(collision.size() - 1, 1, ", \"zz\": 5}");
  expect(error(collision, ""), "id collision");
  expect(error(collision, ""), "have id 5");
  expect(error("{\"a\": 0, \"b\": 7}", ""), "outside [0, 2)");
  expect(error("{\"a\": \"x\"}", ""), "is not an integer");
  expect(error("{\"a\": 0, \"b\": 1}", ""), "lacks 254 of the 256 single-byte tokens");
  std::string foreign = HandVocab({"x\u4e2d"});
  expect(error(foreign, ""), "not in GPT-2's byte alphabet");
  EXPECT_NE(ErrorOf([&] {
              ByteLevelBPE::from_files(dir.str() + "/nope.json", good_merges);
            }).find("cannot open"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { ByteLevelBPE::load(dir.str() + "/nowhere"); }).find("cannot open"),
            std::string::npos);
}

// Random corruptions of valid files: a qkv::Error or a usable tokenizer, never
// a crash or another exception (run under the sanitizers in CI).
TEST(ByteLevelBPE, CorruptedFilesFailCleanly) {
  TempDir dir;
  const std::string vocab = HandVocab({"ll", "he", "hell", "hello", "\u0120w", "<|endoftext|>"});
  const std::string merges = "#version: 0.2\nl l\nh e\nhe ll\nhell o\n\u0120 w\n";
  std::mt19937 rng(7);
  int loaded = 0, rejected = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string v = vocab, m = merges;
    std::string& target = trial % 2 ? v : m;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !target.empty(); ++e) {
      const size_t at = rng() % target.size();
      switch (rng() % 3) {
        case 0: target[at] = static_cast<char>(rng() % 256); break;
        case 1: target.erase(at, 1 + rng() % 8); break;
        default: target.resize(at); break;
      }
    }
    try {
      const auto bpe = ByteLevelBPE::from_files(dir.file("v.json", v), dir.file("m.txt", m));
      const std::string text = "hello world<|endoftext|>";
      EXPECT_EQ(bpe.decode(bpe.encode(text)), text);
      ++loaded;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(loaded, 0);
}

}  // namespace
}  // namespace qkv::text
