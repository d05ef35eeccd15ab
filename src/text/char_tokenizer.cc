// CharTokenizer: one id per code point, in code point order.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/file.h"
#include "qkv/error.h"
#include "qkv/file.h"
#include "qkv/tokenizer.h"
#include "text/utf8.h"

namespace qkv::text {

namespace {
constexpr const char* kCharFile = "char_tokenizer.json";
constexpr const char* kCharFormat = "qkv.char_tokenizer";
}  // namespace

CharTokenizer::CharTokenizer(std::vector<char32_t> chars) : chars_(std::move(chars)) {
  std::sort(chars_.begin(), chars_.end());
  chars_.erase(std::unique(chars_.begin(), chars_.end()), chars_.end());
  for (char32_t cp : chars_) {
    QKV_CHECK(cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF),
              "CharTokenizer: ", static_cast<uint32_t>(cp), " is not a Unicode scalar value");
  }
  ids_.reserve(chars_.size());
  for (size_t i = 0; i < chars_.size(); ++i) ids_.emplace(chars_[i], static_cast<int32_t>(i));
}

CharTokenizer CharTokenizer::from_corpus(std::string_view corpus) {
  std::vector<char32_t> chars;
  std::vector<bool> seen_ascii(128, false);
  for (size_t pos = 0; pos < corpus.size();) {
    const char32_t cp = decode_utf8(corpus, pos, "CharTokenizer corpus");
    if (cp < 128) {
      if (seen_ascii[cp]) continue;
      seen_ascii[cp] = true;
    }
    chars.push_back(cp);
  }
  return CharTokenizer(std::move(chars));
}

std::vector<int32_t> CharTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  size_t index = 0;  // code point index, for the error message
  for (size_t pos = 0; pos < text.size(); ++index) {
    const size_t offset = pos;
    const char32_t cp = decode_utf8(text, pos, "CharTokenizer.encode");
    const auto it = ids_.find(cp);
    QKV_CHECK(it != ids_.end(), "CharTokenizer.encode: character ", describe_code_point(cp),
              " at position ", index, " (byte offset ", offset, ") is not in the vocabulary of ",
              chars_.size(), " characters");
    ids.push_back(it->second);
  }
  return ids;
}

std::string CharTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    QKV_CHECK(ids[i] >= 0 && static_cast<size_t>(ids[i]) < chars_.size(),
              "CharTokenizer.decode: id ", ids[i], " at position ", i, " is outside [0, ",
              chars_.size(), ")");
    append_utf8(out, chars_[ids[i]]);
  }
  return out;
}

void CharTokenizer::save(const std::string& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  QKV_CHECK(!ec, "CharTokenizer.save: cannot create directory '", dir, "': ", ec.message());
  nlohmann::json chars = nlohmann::json::array();
  for (char32_t cp : chars_) {
    std::string s;
    append_utf8(s, cp);
    chars.push_back(std::move(s));
  }
  const nlohmann::json doc = {{"format", kCharFormat}, {"version", 1}, {"chars", chars}};
  const std::string text = doc.dump(1) + "\n";
  io::write_file_atomically((std::filesystem::path(dir) / kCharFile).string(),
                            std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

CharTokenizer CharTokenizer::load(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kCharFile).string();
  const std::string text = read_file(path, "CharTokenizer.load");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(detail::str("CharTokenizer.load: '", path, "' is not valid JSON: ", e.what()));
  }
  QKV_CHECK(doc.is_object() && doc.value("format", "") == kCharFormat, "CharTokenizer.load: '",
            path, "' is not a qkv character tokenizer (no \"format\": \"", kCharFormat, "\")");
  QKV_CHECK(doc.contains("chars") && doc["chars"].is_array(), "CharTokenizer.load: '", path,
            "' has no \"chars\" array");
  std::vector<char32_t> chars;
  for (size_t i = 0; i < doc["chars"].size(); ++i) {
    const auto& entry = doc["chars"][i];
    QKV_CHECK(entry.is_string(), "CharTokenizer.load: '", path, "': chars[", i,
              "] is not a string");
    const std::string s = entry.get<std::string>();
    size_t pos = 0;
    const char32_t cp = s.empty() ? 0 : decode_utf8(s, pos, "CharTokenizer.load");
    QKV_CHECK(!s.empty() && pos == s.size(), "CharTokenizer.load: '", path, "': chars[", i,
              "] is not exactly one character");
    QKV_CHECK(chars.empty() || chars.back() < cp, "CharTokenizer.load: '", path, "': chars[", i,
              "] ", describe_code_point(cp), " is a duplicate or out of order");
    chars.push_back(cp);
  }
  return CharTokenizer(std::move(chars));
}

}  // namespace qkv::text
