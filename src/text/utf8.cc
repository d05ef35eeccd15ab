#include "text/utf8.h"

#include <cstdint>
#include <cstdio>

#include "qkv/error.h"

namespace qkv::text {

char32_t decode_utf8(std::string_view text, size_t& pos, const char* what) {
  const size_t start = pos;
  auto bad = [&](const char* why) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned>(uint8_t(text[start])));
    return Error(detail::str(what, ": invalid UTF-8 at byte offset ", start, " (", why,
                             ", lead byte ", hex, ")"));
  };
  const auto lead = static_cast<uint8_t>(text[pos]);
  if (lead < 0x80) {
    ++pos;
    return lead;
  }
  int extra;
  char32_t cp;
  char32_t min;
  if ((lead & 0xE0) == 0xC0) {
    extra = 1, cp = lead & 0x1F, min = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    extra = 2, cp = lead & 0x0F, min = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    extra = 3, cp = lead & 0x07, min = 0x10000;
  } else {
    throw bad("not a lead byte");
  }
  if (text.size() - pos <= static_cast<size_t>(extra)) throw bad("truncated sequence");
  for (int i = 1; i <= extra; ++i) {
    const auto c = static_cast<uint8_t>(text[pos + i]);
    if ((c & 0xC0) != 0x80) throw bad("missing continuation byte");
    cp = (cp << 6) | (c & 0x3F);
  }
  if (cp < min) throw bad("overlong encoding");
  if (cp > 0x10FFFF) throw bad("code point past U+10FFFF");
  if (cp >= 0xD800 && cp <= 0xDFFF) throw bad("surrogate code point");
  pos += extra + 1;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string describe_code_point(char32_t cp) {
  char hex[16];
  std::snprintf(hex, sizeof hex, "U+%04X", static_cast<unsigned>(cp));
  std::string out;
  if (cp >= 0x20 && cp != 0x7F) {
    out += '\'';
    append_utf8(out, cp);
    out += "' (";
    out += hex;
    out += ')';
  } else {
    out = hex;
  }
  return out;
}

}  // namespace qkv::text
