// Evaluation metrics (SPEC §5). BLEU is corpus BLEU (Papineni et al. 2002)
// exactly as sacreBLEU computes it (Post 2018, "A Call for Clarity in
// Reporting BLEU Scores"), so a score from qkv is the number papers report:
// mteval-v13a tokenisation, clipped n-gram counts against the closest
// reference length, and NIST's "exp" smoothing of empty precisions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qkv {

enum class BleuTokenize {
  v13a,  // sacreBLEU's default "13a" (mteval-v13a): punctuation split off
  none,  // the text is already tokenised: split on whitespace only
};

enum class BleuSmooth {
  exp,    // NIST (mteval-v13a): the k-th empty precision counts as 1 / (2^k total)
  none,   // an empty precision makes the score 0
  floor,  // an empty precision counts as smooth_value / total
  add_k,  // smooth_value added to the matches and totals of orders >= 2
};

struct BleuOptions {
  bool lowercase = false;  // Unicode lower case before tokenising
  BleuTokenize tokenize = BleuTokenize::v13a;
  BleuSmooth smooth = BleuSmooth::exp;
  double smooth_value = -1;  // < 0: sacreBLEU's default (floor 0.1, add-k 1)
  int max_ngram_order = 4;
};

struct BleuScore {
  double score = 0;                    // 0..100
  std::vector<double> correct, total;  // matched / hypothesis n-grams, per order (1..N)
  std::vector<double> precisions;      // per order, percent
  double brevity_penalty = 1;
  int64_t hypothesis_length = 0;  // tokens in all hypotheses
  int64_t reference_length = 0;   // the closest reference length, summed
};

// hypotheses[i] is scored against references[r][i] for every reference
// stream r (sacreBLEU's layout); every stream has one line per hypothesis.
// Throws qkv::Error when the counts disagree or a line is not valid UTF-8.
BleuScore corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& references,
                      const BleuOptions& options = {});

// sacreBLEU's "13a" tokenisation of one line, tokens joined by single spaces.
std::string tokenize_13a(std::string_view line);

}  // namespace qkv
