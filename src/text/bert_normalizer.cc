// BertNormalizer's steps (tokenizers/src/normalizers/bert.rs) over traced
// characters. The sources follow NormalizedString::transform: a character that
// replaces one takes the source of the next input character not yet used, one
// that is inserted takes the source of the last one used.
#include "text/bert_normalizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>

namespace qkv::text {

namespace {

// A run of lowercase mappings: first, first + stride, ... up to last each map
// to themselves + delta.
struct LowercaseRun {
  char32_t first, last;
  int stride, delta;
};

#include "text/bert_unicode_tables.inc"

enum : uint8_t {
  kRemoved = 1,
  kWhitespace = 2,
  kPunctuation = 4,
  kNonspacingMark = 8,
  kChinese = 16,
};

// tokenizers' is_chinese_char: the CJK Unified Ideographs blocks. The fourth
// range starts at U+2B920, not U+2B820 as in Google's BERT: kept, it is what
// tokenizers does.
constexpr CodePointRange kChineseRanges[] = {
    {0x4E00, 0x9FFF},   {0x3400, 0x4DBF},   {0x20000, 0x2A6DF}, {0x2A700, 0x2B73F},
    {0x2B740, 0x2B81F}, {0x2B920, 0x2CEAF}, {0xF900, 0xFAFF},   {0x2F800, 0x2FA1F},
};

template <size_t N>
bool in_ranges(const CodePointRange (&ranges)[N], char32_t cp) {
  const auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                                   [](char32_t c, const CodePointRange& r) { return c < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}

uint8_t classes_of(char32_t cp) {
  uint8_t c = 0;
  if (in_ranges(kBertRemoved, cp)) c |= kRemoved;
  if (in_ranges(kBertWhitespace, cp)) c |= kWhitespace;
  if (in_ranges(kBertPunctuation, cp)) c |= kPunctuation;
  if (in_ranges(kBertNonspacingMark, cp)) c |= kNonspacingMark;
  for (const auto& r : kChineseRanges)
    if (cp >= r.first && cp <= r.last) c |= kChinese;
  return c;
}

// The classes of every BMP code point, looked up once per character in the
// hot loops; the supplementary planes search the ranges.
const std::array<uint8_t, 0x10000>& bmp_classes() {
  static const auto table = [] {
    std::array<uint8_t, 0x10000> t{};
    for (char32_t cp = 0; cp < 0x10000; ++cp) t[cp] = classes_of(cp);
    return t;
  }();
  return table;
}

inline uint8_t classes(char32_t cp) { return cp < 0x10000 ? bmp_classes()[cp] : classes_of(cp); }

// Rust's char::to_lowercase, one character to one (U+0130, which becomes two,
// is the caller's).
inline char32_t simple_lowercase(char32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  const auto it = std::upper_bound(std::begin(kBertLowercase), std::end(kBertLowercase), cp,
                                   [](char32_t c, const LowercaseRun& r) { return c < r.first; });
  if (it == std::begin(kBertLowercase)) return cp;
  const LowercaseRun& r = *std::prev(it);
  if (cp > r.last || (cp - r.first) % r.stride != 0) return cp;
  return static_cast<char32_t>(static_cast<int64_t>(cp) + r.delta);
}

bool decomposes(char32_t cp) {
  return std::find(std::begin(kBertNoDecomposition), std::end(kBertNoDecomposition), cp) ==
         std::end(kBertNoDecomposition);
}

void push_lowercase(std::vector<TracedChar>& out, TracedChar c) {
  if (c.cp == 0x130) {
    out.push_back({U'i', c.source});
    out.push_back({0x307, c.source});
  } else {
    out.push_back({simple_lowercase(c.cp), c.source});
  }
}

uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  return static_cast<uint8_t>(
      utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class);
}

// NFD as unicode-normalization-alignments 0.1.12 (what tokenizers uses) does
// it, with utf8proc's decompositions and combining classes: each character is fully decomposed; its first character replaces it and
// the rest are inserted; the run since the last starter (combining class 0) is
// stable-sorted by combining class when the next starter comes, the flags
// travelling with the characters. Then nonspacing marks are dropped and, when
// asked, each character lowercased.
class Decomposer {
 public:
  Decomposer(std::span<const TracedChar> in, std::vector<TracedChar>& out, bool lowercase)
      : in_(in), out_(out), lowercase_(lowercase) {}

  void run() {
    utf8proc_int32_t parts[8];
    for (const TracedChar& c : in_) {
      if (c.cp < 0xC0 || !decomposes(c.cp)) {  // < 0xC0: no decomposition, combining class 0
        flush();
        pending_.push_back({c.cp, 0, false});
        continue;
      }
      int boundclass = 0;
      const auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c.cp), parts, 8,
                                             UTF8PROC_DECOMPOSE, &boundclass);
      if (n <= 0 || n > 8) {  // cannot happen for a valid code point; keep it whole
        flush();
        pending_.push_back({c.cp, 0, false});
        continue;
      }
      for (utf8proc_ssize_t i = 0; i < n; ++i) {
        const auto cp = static_cast<char32_t>(parts[i]);
        const uint8_t ccc = combining_class(cp);
        if (ccc == 0) flush();
        pending_.push_back({cp, ccc, i > 0});
      }
    }
    flush();
  }

 private:
  struct Pending {
    char32_t cp;
    uint8_t ccc;
    bool inserted;
  };

  void flush() {
    if (pending_.size() > 1)
      std::stable_sort(pending_.begin(), pending_.end(),
                       [](const Pending& a, const Pending& b) { return a.ccc < b.ccc; });
    for (const Pending& p : pending_) {
      // The first character handed out is never an inserted one (a
      // decomposition is in canonical order), so used_ > 0 there.
      const uint32_t source = p.inserted ? in_[used_ - 1].source : in_[used_++].source;
      if (classes(p.cp) & kNonspacingMark) continue;
      if (lowercase_)
        push_lowercase(out_, {p.cp, source});
      else
        out_.push_back({p.cp, source});
    }
    pending_.clear();
  }

  std::span<const TracedChar> in_;
  std::vector<TracedChar>& out_;
  bool lowercase_;
  size_t used_ = 0;
  std::vector<Pending> pending_;
};

}  // namespace

bool is_bert_removed(char32_t cp) { return classes(cp) & kRemoved; }
bool is_bert_whitespace(char32_t cp) { return classes(cp) & kWhitespace; }
bool is_bert_punctuation(char32_t cp) { return classes(cp) & kPunctuation; }
bool is_bert_nonspacing_mark(char32_t cp) { return classes(cp) & kNonspacingMark; }
bool is_bert_chinese_char(char32_t cp) { return classes(cp) & kChinese; }

void bert_normalize(const BertNormalizerFlags& flags, std::span<const TracedChar> in,
                    std::vector<TracedChar>& out, std::vector<TracedChar>& scratch) {
  // clean_text and handle_chinese_chars change one character at a time.
  scratch.clear();
  scratch.reserve(in.size());
  for (const TracedChar& c : in) {
    const uint8_t k = classes(c.cp);
    if (flags.clean_text) {
      if (k & kRemoved) continue;  // NUL and U+FFFD included
      if (k & kWhitespace) {
        scratch.push_back({U' ', c.source});
        continue;
      }
    }
    if (flags.handle_chinese_chars && (k & kChinese)) {
      scratch.push_back({U' ', c.source});
      scratch.push_back(c);
      scratch.push_back({U' ', c.source});
    } else {
      scratch.push_back(c);
    }
  }
  out.clear();
  out.reserve(scratch.size() + scratch.size() / 8);
  if (flags.strip_accents) {
    Decomposer(scratch, out, flags.lowercase).run();
  } else if (flags.lowercase) {
    for (const TracedChar& c : scratch) push_lowercase(out, c);
  } else {
    out.assign(scratch.begin(), scratch.end());
  }
}

}  // namespace qkv::text
