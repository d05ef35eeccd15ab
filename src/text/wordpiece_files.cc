// WordPiece's files: vocab.txt (+ tokenizer_config.json) and Hugging Face's
// tokenizer.json (the serialisation of tokenizers' Tokenizer). Every file is
// treated as hostile: what is wrong or unsupported is a qkv::Error naming the
// file and the field.
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qkv/error.h"
#include "qkv/file.h"
#include "qkv/wordpiece.h"
#include "text/utf8.h"
#include "text/wordpiece_state.h"

namespace qkv::text {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// "'path'": a file as error messages name it. (Not quoted(path):
// g++ 12 warns -Wrestrict on that spuriously.)
std::string quoted(const std::string& path) { return qkv::detail::str('\'', path, '\''); }

std::string read_file(const std::string& path) { return qkv::read_file(path, "WordPiece"); }

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(qkv::detail::str("WordPiece: ", source, " is not valid JSON: ", e.what()));
  }
}

// Typed access to a JSON object's fields; a field of the wrong type is an
// error naming "<source>: <where>.<key>".
class Fields {
 public:
  Fields(const json& object, std::string source, std::string where)
      : o_(object), source_(std::move(source)), where_(std::move(where)) {
    QKV_CHECK(o_.is_object(), "WordPiece: ", source_, ": ", where_, " must be an object, not ",
              o_.dump());
  }

  bool has(const char* key) const { return o_.contains(key) && !o_.at(key).is_null(); }
  const json& at(const char* key) const {
    QKV_CHECK(has(key), "WordPiece: ", source_, ": ", name(key), " is missing");
    return o_.at(key);
  }
  Fields object(const char* key) const { return Fields(at(key), source_, name(key)); }

  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = o_.at(key);
    QKV_CHECK(v.is_boolean(), "WordPiece: ", source_, ": ", name(key),
              " must be true or false, not ", v.dump());
    return v.get<bool>();
  }
  std::optional<bool> optional_boolean(const char* key) const {
    if (!has(key)) return std::nullopt;
    return boolean(key, false);
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    return as_string(o_.at(key), name(key));
  }
  std::string string(const char* key) const { return as_string(at(key), name(key)); }
  uint64_t count(const char* key, uint64_t fallback) const {
    if (!has(key)) return fallback;
    return as_count(o_.at(key), name(key));
  }
  uint64_t count(const char* key) const { return as_count(at(key), name(key)); }

  std::string as_string(const json& v, const std::string& what) const {
    QKV_CHECK(v.is_string(), "WordPiece: ", source_, ": ", what, " must be a string, not ",
              v.dump());
    return v.get<std::string>();
  }
  uint64_t as_count(const json& v, const std::string& what) const {
    QKV_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
              "WordPiece: ", source_, ": ", what, " must be a non-negative integer, not ",
              v.dump());
    return v.get<uint64_t>();
  }
  int32_t as_id(const json& v, const std::string& what) const {
    const uint64_t id = as_count(v, what);
    QKV_CHECK(id <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max()), "WordPiece: ",
              source_, ": ", what, " ", id, " is past 2^31 - 1");
    return static_cast<int32_t>(id);
  }
  [[noreturn]] void unsupported(const char* key, const std::string& what) const {
    throw Error(qkv::detail::str("WordPiece: ", source_, ": ", name(key), " ", what));
  }
  std::string name(const char* key) const { return where_.empty() ? key : where_ + "." + key; }
  const json& raw() const { return o_; }
  const std::string& source() const { return source_; }

 private:
  const json& o_;
  std::string source_, where_;
};

// transformers writes special tokens in tokenizer_config.json as strings or
// as AddedToken objects ({"content": "[UNK]", ...}).
std::string token_text(const Fields& f, const char* key, const std::string& fallback) {
  if (!f.has(key)) return fallback;
  const json& v = f.at(key);
  if (v.is_object()) return Fields(v, f.source(), f.name(key)).string("content");
  return f.as_string(v, f.name(key));
}

Side side(const Fields& f, const char* key) {
  const std::string s = f.string(key, "Right");
  if (s == "Right") return Side::kRight;
  if (s == "Left") return Side::kLeft;
  f.unsupported(key, "is '" + s + "'; expected \"Right\" or \"Left\"");
}

std::optional<Truncation> read_truncation(const Fields& root) {
  if (!root.has("truncation")) return std::nullopt;
  const Fields t = root.object("truncation");
  Truncation out;
  out.max_length = t.count("max_length");
  const std::string strategy = t.string("strategy", "LongestFirst");
  if (strategy == "LongestFirst") {
    out.strategy = TruncationStrategy::kLongestFirst;
  } else if (strategy == "OnlyFirst") {
    out.strategy = TruncationStrategy::kOnlyFirst;
  } else if (strategy == "OnlySecond") {
    out.strategy = TruncationStrategy::kOnlySecond;
  } else {
    t.unsupported("strategy", "is '" + strategy + "'; expected LongestFirst, OnlyFirst or OnlySecond");
  }
  if (t.count("stride", 0) != 0)
    t.unsupported("stride", "is " + std::to_string(t.count("stride", 0)) +
                                "; qkv's WordPiece has no overflowing windows (stride must be 0)");
  out.direction = side(t, "direction");
  return out;
}

std::optional<Padding> read_padding(const Fields& root, std::string& pad_token) {
  if (!root.has("padding")) return std::nullopt;
  const Fields p = root.object("padding");
  Padding out;
  const json& strategy = p.at("strategy");
  if (strategy.is_string() && strategy.get<std::string>() == "BatchLongest") {
    out.length.reset();
  } else if (strategy.is_object() && strategy.contains("Fixed")) {
    out.length = p.as_count(strategy.at("Fixed"), p.name("strategy") + ".Fixed");
  } else {
    p.unsupported("strategy", "is " + strategy.dump() + "; expected \"BatchLongest\" or {\"Fixed\": n}");
  }
  out.direction = side(p, "direction");
  out.pad_to_multiple_of = p.count("pad_to_multiple_of", 0);
  out.pad_id = p.as_id(p.at("pad_id"), p.name("pad_id"));
  out.pad_type_id = static_cast<int32_t>(p.count("pad_type_id", 0));
  pad_token = p.string("pad_token", pad_token);
  return out;
}

void read_normalizer(const Fields& root, WordPieceState& s) {
  if (!root.has("normalizer")) {  // text goes to the pre-tokenizer as it is
    s.normalizer.reset();
    s.config.normalization = {false, false, false, false};
    return;
  }
  const Fields n = root.object("normalizer");
  const std::string type = n.string("type");
  if (type != "BertNormalizer")
    n.unsupported("type", "is '" + type + "'; qkv's WordPiece implements only BertNormalizer");
  BertNormalization& c = s.config.normalization;
  c.clean_text = n.boolean("clean_text", true);
  c.handle_chinese_chars = n.boolean("handle_chinese_chars", true);
  c.lowercase = n.boolean("lowercase", true);
  c.strip_accents = n.optional_boolean("strip_accents");
  s.normalizer = BertNormalizerFlags{c.clean_text, c.handle_chinese_chars,
                                             c.strip_accents.value_or(c.lowercase), c.lowercase};
}

void read_post_processor(const Fields& root, WordPieceState& s) {
  if (!root.has("post_processor")) return;
  const Fields p = root.object("post_processor");
  const std::string type = p.string("type");
  auto check_id = [&](int32_t id, const std::string& what) {
    QKV_CHECK(static_cast<size_t>(id) < s.tokens.size(), "WordPiece: ", p.source(), ": ", what, " has id ", id, ", past the vocabulary (", s.tokens.size(),
              " tokens)");
  };
  if (type == "BertProcessing") {
    auto pair = [&](const char* key) {
      const json& v = p.at(key);
      QKV_CHECK(v.is_array() && v.size() == 2, "WordPiece: ", p.source(), ": ", p.name(key),
                " must be [token, id], not ", v.dump());
      const std::string token = p.as_string(v[0], p.name(key) + "[0]");
      const int32_t id = p.as_id(v[1], p.name(key) + "[1]");
      check_id(id, p.name(key));
      return std::make_pair(token, id);
    };
    const auto [sep_token, sep] = pair("sep");
    const auto [cls_token, cls] = pair("cls");
    s.config.sep_token = sep_token;
    s.config.cls_token = cls_token;
    s.set_bert_processing(cls, sep);
    return;
  }
  if (type != "TemplateProcessing")
    p.unsupported("type", "is '" + type +
                              "'; qkv's WordPiece implements BertProcessing and TemplateProcessing");
  // special_tokens: name -> {"id": name, "ids": [...], "tokens": [...]}
  std::map<std::string, std::vector<int32_t>> specials;
  const Fields table = p.object("special_tokens");
  for (const auto& [name, entry] : table.raw().items()) {
    const Fields e(entry, p.source(), table.name(name.c_str()));
    const json& ids = e.at("ids");
    QKV_CHECK(ids.is_array() && !ids.empty(), "WordPiece: ", p.source(), ": ",
              e.name("ids"), " must be a non-empty array of ids, not ", ids.dump());
    std::vector<int32_t> v;
    for (const json& id : ids) {
      v.push_back(e.as_id(id, e.name("ids")));
      check_id(v.back(), e.name("ids"));
    }
    specials[name] = std::move(v);
  }
  auto read = [&](const char* key, bool pair) {
    const json& pieces = p.at(key);
    QKV_CHECK(pieces.is_array(), "WordPiece: ", p.source(), ": ", p.name(key),
              " must be an array, not ", pieces.dump());
    std::vector<TemplatePiece> out;
    bool has_a = false, has_b = false;
    for (const json& piece : pieces) {
      const std::string where = p.name(key) + "[" + std::to_string(out.size()) + "]";
      QKV_CHECK(piece.is_object() && piece.size() == 1, "WordPiece: ", p.source(), ": ", where,
                " must be {\"Sequence\": ...} or {\"SpecialToken\": ...}, not ", piece.dump());
      const std::string kind = piece.begin().key();
      const Fields f(piece.begin().value(), p.source(), where + "." + kind);
      const auto type_id = static_cast<int32_t>(f.count("type_id", 0));
      const std::string id = f.string("id");
      if (kind == "Sequence") {
        QKV_CHECK(id == "A" || (id == "B" && pair), "WordPiece: ", p.source(), ": ", where,
                  " names sequence '", id, "' in the ", key, " template");
        (id == "A" ? has_a : has_b) = true;
        out.push_back({id == "A" ? TemplatePiece::kSequenceA : TemplatePiece::kSequenceB, {},
                       type_id});
      } else if (kind == "SpecialToken") {
        const auto it = specials.find(id);
        QKV_CHECK(it != specials.end(), "WordPiece: ", p.source(), ": ", where,
                  " names special token '", id, "', which special_tokens does not define");
        out.push_back({TemplatePiece::kSpecial, it->second, type_id});
      } else {
        throw Error(qkv::detail::str("WordPiece: ", p.source(), ": ", where, " is a '", kind,
                                "'; expected Sequence or SpecialToken"));
      }
    }
    QKV_CHECK(has_a && (has_b || !pair), "WordPiece: ", p.source(), ": ", p.name(key),
              " must place sequence A", pair ? " and sequence B" : "");
    return out;
  };
  s.single_template = read("single", false);
  s.pair_template = read("pair", true);
}

void read_decoder(const Fields& root, WordPieceState& s) {
  if (!root.has("decoder")) {
    s.has_decoder = false;
    return;
  }
  const Fields d = root.object("decoder");
  const std::string type = d.string("type");
  if (type != "WordPiece")
    d.unsupported("type", "is '" + type + "'; qkv's WordPiece implements the WordPiece decoder");
  s.has_decoder = true;
  s.decoder_prefix = d.string("prefix", "##");
  s.decoder_cleanup = d.boolean("cleanup", true);
}

void read_added_tokens(const Fields& root, WordPieceState& s) {
  if (!root.has("added_tokens")) return;
  const json& list = root.at("added_tokens");
  QKV_CHECK(list.is_array(), "WordPiece: ", root.source(), ": added_tokens must be an array, not ",
            list.dump());
  for (size_t i = 0; i < list.size(); ++i) {
    const Fields t(list[i], root.source(), "added_tokens[" + std::to_string(i) + "]");
    const std::string content = t.string("content");
    for (const char* flag : {"single_word", "lstrip", "rstrip", "normalized"})
      if (t.boolean(flag, false))
        t.unsupported(flag, "is true for '" + content +
                                "'; qkv's WordPiece matches added tokens only as written in the "
                                "raw text (single_word, lstrip, rstrip and normalized false)");
    s.add_token(content, t.as_id(t.at("id"), t.name("id")), t.boolean("special", false),
                root.source());
  }
  const size_t model = s.model_vocab_size;
  for (size_t id = model; id < s.tokens.size(); ++id)
    QKV_CHECK(!s.tokens[id].empty(), "WordPiece: ", root.source(), ": no token has id ", id,
              " (the added tokens must continue the vocabulary's ids 0..", model - 1, ")");
}

std::vector<std::string> read_model_vocab(const Fields& model) {
  const Fields vocab = model.object("vocab");
  std::vector<std::string> tokens(vocab.raw().size());
  std::vector<bool> seen(tokens.size(), false);
  for (const auto& [token, value] : vocab.raw().items()) {
    const int32_t id = vocab.as_id(value, vocab.name(quoted(token).c_str()));
    const auto u = static_cast<size_t>(id);
    QKV_CHECK(u < tokens.size(), "WordPiece: ", model.source(), ": model.vocab gives '", token,
              "' id ", id, ", but it has only ", tokens.size(), " tokens (ids must run 0..",
              tokens.size() - 1, ")");
    QKV_CHECK(!seen[u], "WordPiece: ", model.source(), ": model.vocab gives id ", id,
              " to both '", tokens[u], "' and '", token, "'");
    seen[u] = true;
    tokens[u] = token;
  }
  return tokens;
}

}  // namespace

std::vector<std::string> read_vocab_txt(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<std::string> tokens;
  size_t line_start = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    const std::string_view line(text.data() + line_start, line_end - line_start);
    const std::string what = "WordPiece: '" + path + "' line " + std::to_string(tokens.size() + 1);
    // tokenizers trims trailing whitespace (Rust's trim_end), '\r' included.
    size_t keep = 0;
    for (size_t pos = 0; pos < line.size();) {
      const char32_t cp = decode_utf8(line, pos, what.c_str());
      if (!is_bert_whitespace(cp)) keep = pos;
    }
    QKV_CHECK(keep > 0, what, " is empty");
    tokens.emplace_back(line.substr(0, keep));
    line_start = line_end + 1;
  }
  return tokens;
}

WordPiece WordPiece::from_vocab_file(const std::string& path, WordPieceConfig config) {
  return from_vocab(read_vocab_txt(path), std::move(config), quoted(path));
}

WordPiece WordPiece::from_tokenizer_json(const std::string& path) {
  return from_tokenizer_json_text(read_file(path), quoted(path));
}

WordPiece WordPiece::from_tokenizer_json_text(const std::string& text, const std::string& source) {
  const json doc = parse_json(text, source);
  const Fields root(doc, source, "");
  const Fields model = root.object("model");
  const std::string type = model.string("type", "");
  if (type != "WordPiece")
    model.unsupported("type", "is '" + type + "'; qkv's WordPiece reads only WordPiece models");

  WordPiece wp;
  WordPieceState& s = *wp.state_;
  s.config.unk_token = model.string("unk_token", "[UNK]");
  s.config.continuing_subword_prefix = model.string("continuing_subword_prefix", "##");
  s.config.max_input_chars_per_word = model.count("max_input_chars_per_word", 100);
  read_normalizer(root, s);
  if (!root.has("pre_tokenizer") ||
      root.object("pre_tokenizer").string("type", "") != "BertPreTokenizer")
    throw Error(qkv::detail::str("WordPiece: ", source, ": pre_tokenizer is ",
                            root.has("pre_tokenizer") ? root.at("pre_tokenizer").dump() : "null",
                            "; qkv's WordPiece implements only BertPreTokenizer"));
  s.set_vocabulary(read_model_vocab(model), source + " model.vocab");
  read_added_tokens(root, s);
  read_post_processor(root, s);
  read_decoder(root, s);
  s.truncation = read_truncation(root);
  s.padding = read_padding(root, s.config.pad_token);
  s.resolve_special_ids();
  return wp;
}

WordPiece WordPiece::load(const std::string& dir) {
  const fs::path path(dir);
  if (fs::is_regular_file(path)) {
    if (path.extension() == ".json") return from_tokenizer_json(dir);
    return from_vocab_file(dir);
  }
  QKV_CHECK(fs::is_directory(path), "WordPiece::load: '", dir, "' is neither a directory nor a file");
  if (fs::exists(path / "tokenizer.json")) return from_tokenizer_json((path / "tokenizer.json").string());
  const fs::path vocab = path / "vocab.txt";
  QKV_CHECK(fs::exists(vocab), "WordPiece::load: '", dir,
            "' has neither tokenizer.json nor vocab.txt");
  WordPieceConfig config;
  const fs::path settings = path / "tokenizer_config.json";
  if (fs::exists(settings)) {
    const std::string source = quoted(settings.string());
    const json doc = parse_json(read_file(settings.string()), source);
    const Fields f(doc, source, "");
    BertNormalization& n = config.normalization;
    n.lowercase = f.boolean("do_lower_case", true);
    n.strip_accents = f.optional_boolean("strip_accents");
    n.handle_chinese_chars = f.boolean("tokenize_chinese_chars", true);
    config.unk_token = token_text(f, "unk_token", config.unk_token);
    config.sep_token = token_text(f, "sep_token", config.sep_token);
    config.pad_token = token_text(f, "pad_token", config.pad_token);
    config.cls_token = token_text(f, "cls_token", config.cls_token);
    config.mask_token = token_text(f, "mask_token", config.mask_token);
  }
  return from_vocab_file(vocab.string(), std::move(config));
}

}  // namespace qkv::text
