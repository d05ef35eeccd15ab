// GloVe / word2vec text import (qkv/text_vectors.h): the formats, the
// options, every malformed input with the line and problem named, random
// corruptions of a valid file (an error or a result, never a crash), and the
// embedding table for a vocabulary.
#include "qkv/text_vectors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace qkv {
namespace {

namespace fs = std::filesystem;

class TextFile {
 public:
  explicit TextFile(const std::string& content) {
    path_ = (fs::temp_directory_path() /
             ("qkv_text_vectors_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++)))
                .string();
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TextFile() { fs::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  static inline int counter_ = 0;
};

TextVectors Load(const std::string& content, const TextVectorsOptions& options = {}) {
  return load_text_vectors(TextFile(content).path(), options);
}

std::string ErrorOf(const std::string& content, const TextVectorsOptions& options = {}) {
  TextFile file(content);
  try {
    load_text_vectors(file.path(), options);
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(file.path()), std::string::npos) << message;
    return message;
  }
  ADD_FAILURE() << "expected qkv::Error for: " << content.substr(0, 80);
  return "";
}

TEST(TextVectors, ReadsGlove) {
  const TextVectors v =
      Load("the 0.418 0.24968 -0.41242\n, 0.013441 0.23682 -0.16899\nof 1e-3 -2 +3.5\n");
  EXPECT_EQ(v.format, TextVectorFormat::glove);
  ASSERT_EQ(v.words, (std::vector<std::string>{"the", ",", "of"}));
  ASSERT_EQ(v.vectors.shape(), (Shape{3, 3}));
  EXPECT_EQ(v.vectors.at({0, 1}), static_cast<double>(0.24968f));
  EXPECT_EQ(v.vectors.at({2, 0}), static_cast<double>(1e-3f));
  EXPECT_EQ(v.vectors.at({2, 2}), 3.5);
  EXPECT_EQ(v.duplicates, 0);
}

TEST(TextVectors, ReadsWord2vecWithCrlfTabsAndBom) {
  const TextVectors v = Load(
      "\xEF\xBB\xBF"
      "3 2\r\nk\xC3\xB6nig 1 2\r\n\tqueen\t3  4 \r\n\r\nman 5 6\r\n");
  EXPECT_EQ(v.format, TextVectorFormat::word2vec);
  ASSERT_EQ(v.words, (std::vector<std::string>{"k\xC3\xB6nig", "queen", "man"}));
  EXPECT_EQ(v.vectors.to_values(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
}

TEST(TextVectors, OptionsAndDuplicates) {
  const std::string glove = "a 1 2\nb 3 4\na 9 9\nc 5 6\n";
  TextVectors v = Load(glove);
  EXPECT_EQ(v.words, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(v.duplicates, 1);
  EXPECT_EQ(v.vectors.to_values(), (std::vector<double>{1, 2, 3, 4, 5, 6}));  // first kept
  v = Load(glove, {.max_words = 2});
  EXPECT_EQ(v.words, (std::vector<std::string>{"a", "b"}));
  v = Load("2 2\na 1 2\nb 3 4\nc 5 6\n", {.max_words = 2});  // stops before the extra row
  EXPECT_EQ(v.words.size(), 2u);
  EXPECT_EQ(Load(glove, {.expected_dim = 2}).dim(), 2);
  // Forced GloVe: a first line of two integers is a word and its vector.
  v = Load("3 1\n4 1\n", {.format = TextVectorFormat::glove});
  EXPECT_EQ(v.words, (std::vector<std::string>{"3", "4"}));
  v = Load("0 5\n");  // a header with no words
  EXPECT_EQ(v.vectors.shape(), (Shape{0, 5}));
}

TEST(TextVectors, MalformedInputsNameTheLineAndTheProblem) {
  struct Case {
    std::string content;
    TextVectorsOptions options;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"", {}, {"is empty"}},
      {"\n  \n\t\n", {}, {"has no words"}},
      {"a 1 2\nb 1 2 3\n", {}, {"line 2", "ragged rows", "'b' has 3 values", "first row has 2"}},
      {"2 3\na 1 2 3\nb 1 2\n", {}, {"line 3", "ragged", "header says 3"}},
      {"a 1 x2\n", {}, {"line 1", "value 2 of 'a' is not a number: 'x2'"}},
      {"a 1 2\nb 1 nan\n", {}, {"line 2", "not finite: 'nan'"}},
      {"a inf 2\n", {}, {"line 1", "not finite"}},
      {"a 1 1e39\n", {}, {"beyond the f32 range"}},
      {"a 1 1e400\n", {}, {"not finite"}},
      {"a 1 0x10\n", {}, {"not a number"}},
      {"a 1 --2\n", {}, {"not a number"}},
      {"a\n", {}, {"line 1", "'a' has no values"}},
      {"5\na 1\n", {}, {"line 1", "word2vec header needs two values"}},
      {"5\n", {.format = TextVectorFormat::word2vec}, {"line 1", "'count dim'"}},
      {"a 1\n", {.format = TextVectorFormat::word2vec}, {"line 1", "'count dim'"}},
      {"2 0\n", {}, {"line 1", "dimension 0"}},
      {"3 2\na 1 2\nb 3 4\n", {}, {"promises 3 words but the file has 2 rows"}},
      {"1 2\na 1 2\nb 3 4\n", {}, {"line 3", "more rows than the 1"}},
      {"a 1 2\n", {.expected_dim = 3}, {"line 1", "dimension is 2 but expected_dim is 3"}},
      {"4 2\n", {.expected_dim = 3}, {"line 1", "header's dimension is 2"}},
      {"a 1 2\n" + std::string(100, 'x') + " 1 2\n",
       {.max_line_bytes = 64},
       {"line 2", "more than max_line_bytes (64)"}},
      {"\xff\xfe 1 2\n", {}, {"line 1", "'\\xff\\xfe' is not valid UTF-8"}},
      {"a\xC3 1 2\n", {}, {"not valid UTF-8"}},
      {"\xED\xA0\x80 1 2\n", {}, {"not valid UTF-8"}},  // a surrogate
      {"a 1 2\nb 1 2\x01\n", {}, {"line 2", "'2\\x01'"}},
  };
  for (const Case& c : cases) {
    const std::string message = ErrorOf(c.content, c.options);
    for (const std::string& part : c.parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "'" << part << "' not in: " << message << "\nfor input: " << c.content.substr(0, 60);
  }
  EXPECT_THROW(load_text_vectors("/nonexistent/vectors.txt"), Error);
  EXPECT_THROW(Load("a 1\n", {.max_words = -1}), Error);
}

// Random corruptions of a valid file: every outcome is a result or a qkv::Error.
TEST(TextVectors, CorruptedFilesNeverCrash) {
  std::string valid = "4 3\n";
  for (const char* row :
       {"alpha 0.5 -1.25 3e-2", "beta 1 2 3", "gamma -0 .5 7.", "delta 1e3 2E-3 4"})
    valid += std::string(row) + "\n";
  const std::string alphabet = std::string(" \t\n\r.-+eE0123456789nafix") + '\0' + "\xC3\xff";
  std::mt19937 rng(17);
  int ok = 0, errors = 0;
  for (int iteration = 0; iteration < 1500; ++iteration) {
    std::string s = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const size_t at = rng() % s.size();
      switch (rng() % 4) {
        case 0: s[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: s.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
        case 2: s.erase(at, 1 + rng() % 3); break;
        case 3: s.resize(at); break;
      }
    }
    try {
      const TextVectors v = Load(s, {.max_line_bytes = 64});
      ASSERT_EQ(v.vectors.size(0), static_cast<int64_t>(v.words.size()));
      for (double x : v.vectors.to_values()) ASSERT_TRUE(std::isfinite(x));
      ++ok;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_GT(errors, 0);
}

TEST(TextVectors, EmbeddingTableForAVocabulary) {
  const TextVectors v = Load("cat 1 2\ndog 3 4\n");
  Generator gen(3);
  const Tensor table = embedding_table_for({"dog", "<unk>", "cat", "emu"}, v, gen);
  ASSERT_EQ(table.shape(), (Shape{4, 2}));
  EXPECT_EQ(table.at({0, 0}), 3.0);
  EXPECT_EQ(table.at({2, 1}), 2.0);
  Generator same(3);  // missing rows are drawn in vocabulary order
  for (int64_t r : {1, 3})
    for (int64_t j = 0; j < 2; ++j) EXPECT_EQ(table.at({r, j}), static_cast<float>(same.normal()));
  Generator g2(3);
  const Tensor zeros = embedding_table_for({"emu", "cat"}, v, g2, {MissingWordInit::Kind::zeros});
  EXPECT_EQ(zeros.to_values(), (std::vector<double>{0, 0, 1, 2}));
  EXPECT_EQ(g2.seed_state(), Generator(3).seed_state());  // zeros draw nothing
  const Tensor uniform = embedding_table_for({"emu"}, v, g2, {MissingWordInit::Kind::uniform, 0.1});
  for (double x : uniform.to_values()) EXPECT_LE(std::abs(x), 0.1);
}

}  // namespace
}  // namespace qkv
