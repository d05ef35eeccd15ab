#include "text/gpt2_pretokenize.h"

#include <utf8proc.h>

#include "text/utf8.h"

namespace qkv::text {

const std::array<char32_t, 256>& gpt2_byte_to_code_point() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

int gpt2_code_point_to_byte(char32_t cp) {
  static const std::array<int, 324> inverse = [] {
    std::array<int, 324> t;
    t.fill(-1);
    const auto& forward = gpt2_byte_to_code_point();
    for (int b = 0; b < 256; ++b) t[forward[b]] = b;
    return t;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

namespace {

// Unicode White_Space (PropList.txt), which is what \s means in the regex
// engines of `tokenizers` (Oniguruma) and tiktoken (fancy-regex).
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_letter(char32_t c) {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: return true;
    default: return false;
  }
}

bool is_number(char32_t c) {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO: return true;
    default: return false;
  }
}

enum class Kind : uint8_t { kSpace, kLetter, kNumber, kOther };

Kind kind_of(char32_t c) {
  if (is_space(c)) return Kind::kSpace;
  if (is_letter(c)) return Kind::kLetter;
  if (is_number(c)) return Kind::kNumber;
  return Kind::kOther;
}

}  // namespace

std::vector<std::pair<size_t, size_t>> gpt2_split(std::string_view text) {
  // Code points with their byte offsets; offsets[n] is text.size().
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  cps.reserve(text.size());
  offsets.reserve(text.size() + 1);
  for (size_t pos = 0; pos < text.size();) {
    offsets.push_back(pos);
    cps.push_back(decode_utf8(text, pos, "ByteLevelBPE"));
  }
  const size_t n = cps.size();
  offsets.push_back(text.size());
  std::vector<Kind> kinds(n);
  for (size_t i = 0; i < n; ++i) kinds[i] = kind_of(cps[i]);

  std::vector<std::pair<size_t, size_t>> pieces;
  size_t i = 0;
  auto emit = [&](size_t end) {
    pieces.emplace_back(offsets[i], offsets[end]);
    i = end;
  };
  while (i < n) {
    // 's|'t|'re|'ve|'m|'ll|'d
    if (cps[i] == '\'' && i + 1 < n) {
      const char32_t a = cps[i + 1];
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        emit(i + 2);
        continue;
      }
      if (i + 2 < n) {
        const char32_t b = cps[i + 2];
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
          emit(i + 3);
          continue;
        }
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': a space can only lead, as
    // the optional ' ' (it is no letter, number or "other" itself).
    const size_t k = (cps[i] == ' ' && i + 1 < n) ? i + 1 : i;
    if (kinds[k] != Kind::kSpace) {
      size_t end = k + 1;
      while (end < n && kinds[end] == kinds[k]) ++end;
      emit(end);
      continue;
    }
    // '\s+(?!\S)' backtracks off the run's last space when a non-space follows
    // (leaving it to lead the next piece); '\s+' takes a lone space.
    size_t end = i + 1;
    while (end < n && kinds[end] == Kind::kSpace) ++end;
    if (end < n && end - 1 > i) --end;
    emit(end);
  }
  return pieces;
}

}  // namespace qkv::text
