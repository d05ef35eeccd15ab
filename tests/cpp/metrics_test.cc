// corpus_bleu and its 13a tokeniser against values sacreBLEU 2.6 gives for
// the same inputs (tests/python/test_metrics.py compares with sacreBLEU
// itself over Multi30k).
#include "qkv/metrics.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "qkv/error.h"

namespace qkv {
namespace {

TEST(Bleu, Tokenize13aAsSacreBleu) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"Hello, world!", "Hello , world !"},
      {"It costs $3.50, or 1,000.5 yen.", "It costs $ 3.50 , or 1,000.5 yen ."},
      {"a-b 1-2 x-", "a-b 1 - 2 x-"},
      {"He said &quot;hi&quot; &amp;lt; ok", "He said \" hi \" < ok"},
      {"Ein Mann (mit Hut) l\u00e4uft.", "Ein Mann ( mit Hut ) l\u00e4uft ."},
      {"end.", "end ."},
      {"tab\there  and\u00a0nbsp", "tab here and nbsp"},
      {"3.", "3 ."},
      {".5", ". 5"},
      {"", ""},
  };
  for (const auto& [in, want] : cases) EXPECT_EQ(tokenize_13a(in), want) << in;
}

TEST(Bleu, CorpusScoreAsSacreBleu) {
  const BleuScore s = corpus_bleu({"the cat sat on the mat .", "a dog runs"},
                                  {{"the cat sat on a mat .", "a dog is running"}});
  EXPECT_NEAR(s.score, 40.88064519392259, 1e-12);
  EXPECT_EQ(s.correct, (std::vector<double>{8, 5, 2, 1}));
  EXPECT_EQ(s.total, (std::vector<double>{10, 8, 6, 4}));
  EXPECT_NEAR(s.precisions[2], 33.333333333333336, 1e-12);
  EXPECT_NEAR(s.brevity_penalty, 0.9048374180359595, 1e-15);
  EXPECT_EQ(s.hypothesis_length, 10);
  EXPECT_EQ(s.reference_length, 11);
}

TEST(Bleu, ShortHypothesesAndSmoothing) {
  // No 3- or 4-grams: NIST smoothing halves the empty bigram precision, the
  // missing orders floor the score at 0 (sacreBLEU: 0.0, precisions 50, 50).
  const BleuScore s = corpus_bleu({"a b"}, {{"a c d e"}});
  EXPECT_EQ(s.score, 0.0);
  EXPECT_EQ(s.precisions, (std::vector<double>{50, 50, 0, 0}));
  EXPECT_NEAR(s.brevity_penalty, 0.36787944117144233, 1e-15);
  // Identical lines score 100; an empty hypothesis 0.
  EXPECT_NEAR(corpus_bleu({"one two three four five"}, {{"one two three four five"}}).score, 100,
              1e-12);
  EXPECT_EQ(corpus_bleu({""}, {{"one two"}}).score, 0.0);
}

TEST(Bleu, SeveralReferencesClipToTheBestAndTakeTheClosestLength) {
  // "the the the": the first reference has "the" twice, the second once.
  const BleuScore s =
      corpus_bleu({"the the the"}, {{"the cat the"}, {"the"}}, {.max_ngram_order = 1});
  EXPECT_EQ(s.correct[0], 2);
  EXPECT_EQ(s.total[0], 3);
  EXPECT_EQ(s.reference_length, 3);  // |3 - 3| beats |3 - 1|
  EXPECT_NEAR(s.score, 100.0 * 2 / 3, 1e-12);
}

TEST(Bleu, ErrorsNameTheProblem) {
  try {
    corpus_bleu({"a", "b"}, {{"a"}});
    ADD_FAILURE() << "mismatched counts were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reference stream 0 has 1 lines; there are 2"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(corpus_bleu({"a"}, {}), Error);
  EXPECT_THROW(corpus_bleu({"\xff"}, {{"a"}}), Error);  // not UTF-8
  EXPECT_THROW(corpus_bleu({"a"}, {{"a"}}, {.max_ngram_order = 0}), Error);
}

}  // namespace
}  // namespace qkv
