// Corpus BLEU as sacreBLEU 2.x computes it (sacrebleu/metrics/bleu.py and
// tokenizers/tokenizer_13a.py): the same tokenisation, statistics and
// smoothing, checked against sacreBLEU itself in tests/python/test_metrics.py.
#include "qkv/metrics.h"

#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <unordered_map>

#include "qkv/error.h"
#include "text/utf8.h"

namespace qkv {
namespace {

// Python's str.isspace(), which str.split() and str.rstrip() use.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// The line's tokens: runs between Python whitespace (str.split()).
std::vector<std::string> split_words(std::string_view line) {
  std::vector<std::string> words;
  std::string word;
  for (size_t pos = 0; pos < line.size();) {
    const size_t start = pos;
    const char32_t c = text::decode_utf8(line, pos, "BLEU");
    if (is_python_space(c)) {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word.append(line.substr(start, pos - start));
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size())
    out.append(s, at, hit - at).append(to);
  s = out.append(s, at, std::string::npos);
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// mteval-v13a's punctuation class: {|}~ [\]^_` space!"#$%& ()*+ :;<=>?@ /
bool is_13a_punctuation(char c) {
  const auto u = static_cast<unsigned char>(c);
  return (u >= 0x7B && u <= 0x7E) || (u >= 0x5B && u <= 0x60) || (u >= 0x20 && u <= 0x26) ||
         (u >= 0x28 && u <= 0x2B) || (u >= 0x3A && u <= 0x40) || u == '/';
}

// One re.sub of a two-character pattern, left to right without overlaps:
// where matches(a, b) holds for s[i], s[i + 1], the pair becomes
// rewrite(a, b) and the scan resumes after it. Working on bytes gives
// Python's result on code points: the patterns are ASCII, and the bytes of a
// multi-byte character never match the pattern's ASCII side.
template <class Match, class Rewrite>
std::string substitute_pairs(const std::string& s, Match matches, Rewrite rewrite) {
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t i = 0;
  while (i < s.size()) {
    if (i + 1 < s.size() && matches(s[i], s[i + 1])) {
      rewrite(out, s[i], s[i + 1]);
      i += 2;
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

std::string rstrip_python(std::string_view line) {
  // Scan forward, remembering where the last non-space character ends.
  size_t end = 0;
  for (size_t pos = 0; pos < line.size();) {
    const char32_t c = text::decode_utf8(line, pos, "BLEU");
    if (!is_python_space(c)) end = pos;
  }
  return std::string(line.substr(0, end));
}

std::string lowercase(std::string_view line) {
  std::string out;
  for (size_t pos = 0; pos < line.size();) {
    const char32_t c = text::decode_utf8(line, pos, "BLEU");
    text::append_utf8(out,
                      static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
  }
  return out;
}

// The n-grams of orders 1..max of a token line, keyed by their tokens joined
// with spaces (tokens hold no spaces, so the key fixes the order too).
using NgramCounts = std::unordered_map<std::string, int64_t>;
NgramCounts ngrams(const std::vector<std::string>& words, int max_order) {
  NgramCounts counts;
  for (int n = 1; n <= max_order; ++n)
    for (size_t i = 0; i + n <= words.size(); ++i) {
      std::string key = words[i];
      for (int j = 1; j < n; ++j) key.append(" ").append(words[i + j]);
      ++counts[key];
    }
  return counts;
}

int order_of(const std::string& key) {
  return 1 + static_cast<int>(std::count(key.begin(), key.end(), ' '));
}

// The tokens of mteval-v13a's tokenisation of one line.
std::vector<std::string> words_13a(std::string_view in) {
  std::string line(in);
  replace_all(line, "<skipped>", "");
  replace_all(line, "-\n", "");
  replace_all(line, "\n", " ");
  if (line.find('&') != std::string::npos) {
    replace_all(line, "&quot;", "\"");
    replace_all(line, "&amp;", "&");
    replace_all(line, "&lt;", "<");
    replace_all(line, "&gt;", ">");
  }
  std::string s = " ";
  for (char c : line) {
    if (is_13a_punctuation(c)) {
      s += ' ';
      s += c;
      s += ' ';
    } else {
      s += c;
    }
  }
  s.push_back(' ');
  auto is_period_or_comma = [](char c) { return c == '.' || c == ','; };
  // Period and comma split off unless preceded by a digit, then unless
  // followed by one; a dash after a digit.
  s = substitute_pairs(
      s, [&](char a, char b) { return !is_digit(a) && is_period_or_comma(b); },
      [](std::string& out, char a, char b) {
        out.append({a, ' ', b, ' '});
      });
  s = substitute_pairs(
      s, [&](char a, char b) { return is_period_or_comma(a) && !is_digit(b); },
      [](std::string& out, char a, char b) {
        out.append({' ', a, ' ', b});
      });
  s = substitute_pairs(
      s, [](char a, char b) { return is_digit(a) && b == '-'; },
      [](std::string& out, char a, char b) {
        out.append({a, ' ', b, ' '});
      });
  return split_words(s);
}

std::vector<std::string> preprocess(const std::string& line, const BleuOptions& o) {
  const std::string cased = o.lowercase ? lowercase(line) : line;
  const std::string stripped = rstrip_python(cased);
  return o.tokenize == BleuTokenize::v13a ? words_13a(stripped) : split_words(stripped);
}

}  // namespace

std::string tokenize_13a(std::string_view line) {
  std::string joined;
  for (const std::string& w : words_13a(line)) {
    if (!joined.empty()) joined.push_back(' ');
    joined += w;
  }
  return joined;
}

BleuScore corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& references,
                      const BleuOptions& options) {
  const int max_order = options.max_ngram_order;
  QKV_CHECK(max_order >= 1, "corpus_bleu: max_ngram_order must be >= 1, got ", max_order);
  QKV_CHECK(!references.empty(), "corpus_bleu: no reference streams");
  for (size_t r = 0; r < references.size(); ++r)
    QKV_CHECK(references[r].size() == hypotheses.size(), "corpus_bleu: reference stream ", r,
              " has ", references[r].size(), " lines; there are ", hypotheses.size(),
              " hypotheses");
  BleuScore s;
  s.correct.assign(max_order, 0.0);
  s.total.assign(max_order, 0.0);
  s.precisions.assign(max_order, 0.0);
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    // The references' n-grams, each count the largest over the references.
    NgramCounts reference_counts;
    std::vector<int64_t> reference_lengths;
    for (const auto& stream : references) {
      const std::vector<std::string> words = preprocess(stream[i], options);
      reference_lengths.push_back(static_cast<int64_t>(words.size()));
      for (const auto& [key, count] : ngrams(words, max_order)) {
        int64_t& best = reference_counts[key];
        best = std::max(best, count);
      }
    }
    const std::vector<std::string> words = preprocess(hypotheses[i], options);
    const auto length = static_cast<int64_t>(words.size());
    // The closest reference length; the shorter one on a tie.
    int64_t closest = reference_lengths.front();
    for (int64_t r : reference_lengths) {
      const int64_t d = std::abs(length - r), best = std::abs(length - closest);
      if (d < best || (d == best && r < closest)) closest = r;
    }
    s.hypothesis_length += length;
    s.reference_length += closest;
    for (const auto& [key, count] : ngrams(words, max_order)) {
      const int n = order_of(key) - 1;
      s.total[n] += static_cast<double>(count);
      if (auto it = reference_counts.find(key); it != reference_counts.end())
        s.correct[n] += static_cast<double>(std::min(count, it->second));
    }
  }

  const int64_t sys = s.hypothesis_length, ref = s.reference_length;
  if (sys < ref) s.brevity_penalty = sys > 0 ? std::exp(1.0 - static_cast<double>(ref) / sys) : 0.0;
  if (std::all_of(s.correct.begin(), s.correct.end(), [](double c) { return c == 0; })) return s;
  double k = options.smooth_value;
  if (k < 0) k = options.smooth == BleuSmooth::floor ? 0.1 : 1.0;
  double nist = 1.0;
  for (int n = 0; n < max_order; ++n) {
    if (options.smooth == BleuSmooth::add_k && n > 0) {
      s.correct[n] += k;
      s.total[n] += k;
    }
    if (s.total[n] == 0) break;
    if (s.correct[n] == 0) {
      if (options.smooth == BleuSmooth::exp) {
        nist *= 2;
        s.precisions[n] = 100.0 / (nist * s.total[n]);
      } else if (options.smooth == BleuSmooth::floor) {
        s.precisions[n] = 100.0 * k / s.total[n];
      }
    } else {
      s.precisions[n] = 100.0 * s.correct[n] / s.total[n];
    }
  }
  // sacreBLEU floors log(0) at -9999999999: an empty precision zeroes the score.
  double log_sum = 0;
  for (double p : s.precisions) log_sum += p == 0 ? -9999999999.0 : std::log(p);
  s.score = s.brevity_penalty * std::exp(log_sum / max_order);
  return s;
}

}  // namespace qkv
