#include "codec.h"

#include <algorithm>
#include <filesystem>

#include "qkv/error.h"

namespace qkv::cli {

TextCodec TextCodec::train(const std::string& kind, std::string_view corpus, int64_t vocab_size) {
  TextCodec codec;
  if (kind == "char") {
    codec.tokenizer_ = text::CharTokenizer::from_corpus(corpus);
  } else if (kind == "bpe") {
    QKV_CHECK(vocab_size >= 257, "--bpe-vocab must be at least 257 (256 bytes + 1), got ",
              vocab_size);
    codec.tokenizer_ = text::ByteLevelBPE::train(corpus, static_cast<size_t>(vocab_size));
  } else {
    throw Error(detail::str("unknown tokenizer '", kind, "' (expected char or bpe)"));
  }
  return codec;
}

TextCodec TextCodec::load(const std::string& dir) {
  namespace fs = std::filesystem;
  TextCodec codec;
  if (fs::exists(fs::path(dir) / "char_tokenizer.json"))
    codec.tokenizer_ = text::CharTokenizer::load(dir);
  else if (fs::exists(fs::path(dir) / "vocab.json"))
    codec.tokenizer_ = text::ByteLevelBPE::load(dir);
  else
    throw Error(detail::str("'", dir, "' holds no tokenizer (char_tokenizer.json or vocab.json + merges.txt)"));
  return codec;
}

void TextCodec::save(const std::string& dir) const {
  std::visit([&](const auto& t) { t.save(dir); }, tokenizer_);
}

std::vector<int32_t> TextCodec::encode(std::string_view text) const {
  return std::visit([&](const auto& t) { return t.encode(text); }, tokenizer_);
}

std::string TextCodec::decode(std::span<const int32_t> ids) const {
  return std::visit([&](const auto& t) { return t.decode(ids); }, tokenizer_);
}

std::vector<std::string> TextCodec::labels(std::span<const int32_t> ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) out.push_back(valid_utf8(decode(ids.subspan(i, 1))));
  return out;
}

int64_t TextCodec::vocab_size() const {
  return std::visit([](const auto& t) { return static_cast<int64_t>(t.vocab_size()); }, tokenizer_);
}

const char* TextCodec::kind() const {
  return std::holds_alternative<text::CharTokenizer>(tokenizer_) ? "char" : "bpe";
}

std::string valid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    // Length and the allowed range of the second byte (no overlong forms, no
    // surrogates, nothing past U+10FFFF).
    size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;
    if (lead < 0x80) length = 1;
    else if (lead >= 0xC2 && lead <= 0xDF) length = 2;
    else if (lead == 0xE0) length = 3, low = 0xA0;
    else if (lead == 0xED) length = 3, high = 0x9F;
    else if (lead >= 0xE1 && lead <= 0xEF) length = 3;
    else if (lead == 0xF0) length = 4, low = 0x90;
    else if (lead == 0xF4) length = 4, high = 0x8F;
    else if (lead >= 0xF1 && lead <= 0xF3) length = 4;
    size_t valid = length == 0 ? 0 : 1;  // bytes of the sequence that fit
    for (; valid < length && i + valid < bytes.size(); ++valid) {
      const auto c = static_cast<unsigned char>(bytes[i + valid]);
      if (valid == 1 ? (c < low || c > high) : (c < 0x80 || c > 0xBF)) break;
    }
    if (length != 0 && valid == length) {
      out.append(bytes.substr(i, length));
      i += length;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal invalid subpart
      i += std::max<size_t>(valid, 1);
    }
  }
  return out;
}

}  // namespace qkv::cli
