// GloVe / word2vec text-format word vectors (qkv/text_vectors.h).
//
// The file is mapped, not read line by line into strings, so an over-long or
// unterminated line costs nothing before it is rejected.
#include "qkv/text_vectors.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "io/file.h"

namespace qkv {
namespace {

// At most this many characters of a token are quoted in an error.
constexpr size_t kQuoteChars = 40;

// RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

// A token for an error message: control bytes escaped, and every byte from
// 0x80 up as well when the (possibly cut) text is not valid UTF-8, so the
// message itself always is.
std::string quote(std::string_view s) {
  const std::string_view shown = s.substr(0, kQuoteChars);
  const bool escape_high = !valid_utf8(shown);
  std::string out = "'";
  for (char c : shown) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || (escape_high && u >= 0x80))
      out += detail::str("\\x", "0123456789abcdef"[u >> 4], "0123456789abcdef"[u & 15]);
    else
      out += c;
  }
  return out + (s.size() > kQuoteChars ? "...'" : "'");
}

bool parse_count(std::string_view s, int64_t& out) {
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size() && out >= 0;
}

class Parser {
 public:
  Parser(const std::string& path, const TextVectorsOptions& options)
      : path_(path), options_(options) {}

  TextVectors run() {
    QKV_CHECK(options_.max_words >= 0, "load_text_vectors: max_words is ", options_.max_words,
              "; expected >= 0 (0: all)");
    QKV_CHECK(options_.expected_dim >= 0, "load_text_vectors: expected_dim is ",
              options_.expected_dim, "; expected >= 0 (0: any)");
    QKV_CHECK(options_.max_line_bytes > 0, "load_text_vectors: max_line_bytes is ",
              options_.max_line_bytes, "; expected > 0");
    const std::shared_ptr<Storage> file = io::map_file(path_, "load_text_vectors");
    std::string_view text(static_cast<const char*>(file->data()), file->nbytes());
    QKV_CHECK(!text.empty(), "load_text_vectors: '", path_, "' is empty");
    if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);

    bool first = true, truncated = false;
    while (!text.empty() && !truncated) {
      const size_t newline = text.find('\n');
      std::string_view line = text.substr(0, newline);
      text.remove_prefix(newline == std::string_view::npos ? text.size() : newline + 1);
      ++line_;
      if (static_cast<int64_t>(line.size()) > options_.max_line_bytes)
        fail("the line has ", line.size(), " bytes, more than max_line_bytes (",
             options_.max_line_bytes, ")");
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      split(line);
      if (tokens_.empty()) continue;
      if (first) {
        first = false;
        if (header()) continue;
      }
      truncated = row();
    }
    QKV_CHECK(!first, "load_text_vectors: '", path_, "' has no words (only blank lines)");
    if (format_ == TextVectorFormat::word2vec && !truncated)
      QKV_CHECK(rows_ == header_count_, "load_text_vectors: '", path_,
                "': the word2vec header promises ", header_count_, " words but the file has ",
                rows_, " rows");
    QKV_CHECK(dim_ > 0, "load_text_vectors: '", path_, "' has no words");

    TextVectors out;
    out.format = format_;
    out.duplicates = duplicates_;
    out.words = std::move(words_);
    out.vectors = Tensor::empty({static_cast<int64_t>(out.words.size()), dim_}, DType::f32);
    if (!values_.empty())
      std::memcpy(out.vectors.data<float>(), values_.data(), values_.size() * sizeof(float));
    return out;
  }

 private:
  template <class... Args>
  [[noreturn]] void fail(Args&&... args) const {
    throw Error(detail::str("load_text_vectors: '", path_, "' line ", line_, ": ",
                            std::forward<Args>(args)...));
  }

  void split(std::string_view line) {
    tokens_.clear();
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      const size_t start = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      if (i > start) tokens_.push_back(line.substr(start, i - start));
    }
  }

  // The first non-blank line: a word2vec header? Returns true when consumed.
  bool header() {
    int64_t count = 0, dim = 0;
    const bool two_counts =
        tokens_.size() == 2 && parse_count(tokens_[0], count) && parse_count(tokens_[1], dim);
    if (options_.format == TextVectorFormat::glove) return false;
    if (options_.format == TextVectorFormat::detect && !two_counts) {
      if (tokens_.size() == 1 && parse_count(tokens_[0], count))
        fail("a lone number ", quote(tokens_[0]),
             ": a word2vec header needs two values, 'count dim'");
      return false;
    }
    if (!two_counts)
      fail("the word2vec header must be two non-negative integers 'count dim', got ",
           tokens_.size(), " field(s) starting with ", quote(tokens_[0]));
    if (dim <= 0) fail("the word2vec header gives dimension ", dim, "; expected > 0");
    check_dim(dim, "the header's");
    format_ = TextVectorFormat::word2vec;
    header_count_ = count;
    dim_ = dim;
    return true;
  }

  void check_dim(int64_t dim, const char* whose) const {
    if (options_.expected_dim != 0 && dim != options_.expected_dim)
      fail(whose, " dimension is ", dim, " but expected_dim is ", options_.expected_dim);
  }

  // One "word v1 ... vd" line; returns true when max_words is reached.
  bool row() {
    const std::string_view word = tokens_[0];
    const int64_t n = static_cast<int64_t>(tokens_.size()) - 1;
    if (n == 0) fail("the word ", quote(word), " has no values");
    if (format_ == TextVectorFormat::word2vec && rows_ >= header_count_)
      fail("more rows than the ", header_count_, " the word2vec header promises");
    if (dim_ == 0) {
      check_dim(n, "the first row's");
      dim_ = n;
    } else if (n != dim_) {
      fail("ragged rows: the word ", quote(word), " has ", n, " values but ",
           format_ == TextVectorFormat::word2vec ? "the header says " : "the first row has ", dim_);
    }
    if (!valid_utf8(word)) fail("the word ", quote(word), " is not valid UTF-8");
    ++rows_;
    const size_t start = values_.size();
    for (int64_t k = 1; k <= n; ++k) values_.push_back(value(tokens_[static_cast<size_t>(k)], k));
    if (!seen_.emplace(word).second) {
      ++duplicates_;
      values_.resize(start);
      return false;
    }
    words_.emplace_back(word);
    return options_.max_words != 0 && static_cast<int64_t>(words_.size()) == options_.max_words;
  }

  float value(std::string_view token, int64_t index) const {
    std::string_view digits = token;
    if (digits.size() > 1 && digits[0] == '+' && digits[1] != '-') digits.remove_prefix(1);
    double v = 0.0;
    const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (ec == std::errc::invalid_argument || ptr != digits.data() + digits.size())
      fail("value ", index, " of ", quote(tokens_[0]), " is not a number: ", quote(token));
    if (ec == std::errc::result_out_of_range)  // from_chars leaves v alone; strtod rounds
      v = std::strtod(std::string(digits).c_str(), nullptr);
    if (!std::isfinite(v))
      fail("value ", index, " of ", quote(tokens_[0]), " is not finite: ", quote(token));
    const float f = static_cast<float>(v);
    if (!std::isfinite(f))
      fail("value ", index, " of ", quote(tokens_[0]), " is beyond the f32 range: ", quote(token));
    return f;
  }

  const std::string& path_;
  const TextVectorsOptions& options_;
  TextVectorFormat format_ = TextVectorFormat::glove;
  int64_t line_ = 0, dim_ = 0, rows_ = 0, header_count_ = 0, duplicates_ = 0;
  std::vector<std::string_view> tokens_;
  std::vector<std::string> words_;
  std::unordered_set<std::string_view> seen_;  // views into the mapping
  std::vector<float> values_;
};

}  // namespace

TextVectors load_text_vectors(const std::string& path, const TextVectorsOptions& options) {
  return Parser(path, options).run();
}

Tensor embedding_table_for(const std::vector<std::string>& vocab, const TextVectors& vectors,
                           Generator& generator, const MissingWordInit& init) {
  const Tensor& table = vectors.vectors;
  QKV_CHECK(table.defined() && table.dim() == 2 && table.dtype() == DType::f32,
            "embedding_table_for: vectors must be a [n, d] f32 tensor, got ",
            table.defined() ? shape_string(table.shape()) : std::string("undefined"));
  QKV_CHECK(static_cast<int64_t>(vectors.words.size()) == table.size(0),
            "embedding_table_for: ", vectors.words.size(), " words but ", table.size(0),
            " vectors");
  QKV_CHECK(std::isfinite(init.scale) && init.scale >= 0.0, "embedding_table_for: scale is ",
            init.scale, "; expected a finite value >= 0");
  std::unordered_map<std::string_view, int64_t> row_of;
  for (size_t i = 0; i < vectors.words.size(); ++i)
    row_of.emplace(vectors.words[i], static_cast<int64_t>(i));
  const int64_t d = table.size(1);
  const Tensor source = table.contiguous();
  Tensor out = Tensor::empty({static_cast<int64_t>(vocab.size()), d}, DType::f32);
  float* dst = out.data<float>();
  for (const std::string& word : vocab) {
    const auto it = row_of.find(word);
    if (it != row_of.end()) {
      std::memcpy(dst, source.data<float>() + it->second * d, static_cast<size_t>(d) * 4);
    } else {
      for (int64_t j = 0; j < d; ++j) {
        switch (init.kind) {
          case MissingWordInit::Kind::zeros: dst[j] = 0.0f; break;
          case MissingWordInit::Kind::normal:
            dst[j] = static_cast<float>(init.scale * generator.normal());
            break;
          case MissingWordInit::Kind::uniform:
            dst[j] = static_cast<float>(init.scale * (2.0 * generator.uniform() - 1.0));
            break;
        }
      }
    }
    dst += d;
  }
  return out;
}

}  // namespace qkv
