// WordPiece encoding (qkv/wordpiece.h), step for step as the `tokenizers`
// package does it (tokenizers/src/tokenizer/mod.rs encode + post_process):
// added tokens out of the raw text, BertNormalizer, BertPreTokenizer, the
// WordPiece model, truncation, the post-processing template, padding.
#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "core/parallel.h"
#include "qkv/error.h"
#include "qkv/wordpiece.h"
#include "text/utf8.h"
#include "text/wordpiece_state.h"

namespace qkv::text {

namespace {

using Offsets = std::pair<int32_t, int32_t>;

// One sequence's tokens before post-processing.
struct Tokens {
  std::vector<int32_t> ids;
  std::vector<Offsets> offsets;

  void clear() {
    ids.clear();
    offsets.clear();
  }
  size_t size() const { return ids.size(); }
  // tokenizers' Encoding::truncate without overflow: keep `n` tokens.
  void truncate(size_t n, Side direction) {
    if (ids.size() <= n) return;
    if (direction == Side::kLeft) {
      const auto drop = static_cast<std::ptrdiff_t>(ids.size() - n);
      ids.erase(ids.begin(), ids.begin() + drop);
      offsets.erase(offsets.begin(), offsets.begin() + drop);
    } else {
      ids.resize(n);
      offsets.resize(n);
    }
  }
};

// Working memory of one thread, kept between calls so that encoding allocates
// only when a text is longer than any before it.
struct Workspace {
  std::vector<TracedChar> chars, normalized, scratch;
  std::string word;
  std::vector<uint32_t> char_start;  // byte offset of each character of `word`, then its size
  Tokens a, b;
};

Workspace& workspace() {
  thread_local Workspace ws;
  return ws;
}

// The code points of `text`, each traced to its own index.
void decode_text(std::string_view text, std::vector<TracedChar>& out) {
  QKV_CHECK(text.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
            "WordPiece: a text of ", text.size(), " bytes is longer than 2^31 - 1");
  out.clear();
  out.reserve(text.size());
  size_t pos = 0;
  uint32_t index = 0;
  while (pos < text.size()) {
    const auto byte = static_cast<uint8_t>(text[pos]);
    char32_t cp;
    if (byte < 0x80) {
      cp = byte;
      ++pos;
    } else {
      cp = decode_utf8(text, pos, "WordPiece: text");
    }
    out.push_back({cp, index++});
  }
}

std::string to_utf8(std::span<const TracedChar> chars) {
  std::string out;
  out.reserve(chars.size());
  for (const TracedChar& c : chars) append_utf8(out, c.cp);
  return out;
}

std::string to_utf8(std::u32string_view cps) {
  std::string out;
  for (char32_t cp : cps) append_utf8(out, cp);
  return out;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
}

// tokenizers' decoders::wordpiece::cleanup.
void cleanup(std::string& s) {
  static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},   {" ,", ","},   {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"},
      {" 're", "'re"},
  };
  for (const auto& [from, to] : kRules) replace_all(s, from, to);
}

}  // namespace

// ---- building ----

int32_t TokenTable::insert(std::string_view key, int32_t id) {
  if (2 * (size_ + 1) > slots_.size()) rehash(std::max<size_t>(64, 2 * slots_.size()));
  const uint64_t h = hash(key);
  const auto tag = static_cast<uint32_t>(h);
  size_t i = h >> shift_;
  for (;; i = (i + 1) & (slots_.size() - 1)) {
    const Slot& s = slots_[i];
    if (s.length == 0) break;
    if (s.tag == tag && s.length == key.size() &&
        std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0)
      return s.id;
  }
  QKV_CHECK(arena_.size() + key.size() <= std::numeric_limits<uint32_t>::max(),
            "WordPiece: the vocabulary's tokens take more than 4 GiB");
  slots_[i] = {tag, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), id};
  arena_.append(key);
  ++size_;
  longest_ = std::max(longest_, key.size());
  return -1;
}

void TokenTable::rehash(size_t slots) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(slots, Slot{0, 0, 0, -1});
  shift_ = 64 - std::countr_zero(slots);
  for (const Slot& s : old) {
    if (s.length == 0) continue;
    const std::string_view key(arena_.data() + s.offset, s.length);
    size_t i = hash(key) >> shift_;
    while (slots_[i].length != 0) i = (i + 1) & (slots - 1);
    slots_[i] = s;
  }
}

void WordPieceState::set_vocabulary(std::vector<std::string> vocab, const std::string& source) {
  QKV_CHECK(!vocab.empty(), "WordPiece: ", source, " has no tokens");
  QKV_CHECK(vocab.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
            "WordPiece: ", source, " has ", vocab.size(), " tokens, more than 2^31 - 1");
  whole = TokenTable();
  continuation = TokenTable();
  const std::string& prefix = config.continuing_subword_prefix;
  for (size_t id = 0; id < vocab.size(); ++id) {
    const std::string& token = vocab[id];
    QKV_CHECK(!token.empty(), "WordPiece: ", source, ": the token with id ", id, " is empty");
    for (size_t pos = 0; pos < token.size();)
      decode_utf8(token, pos, ("WordPiece: " + source + ": token " + std::to_string(id)).c_str());
    const int32_t before = whole.insert(token, static_cast<int32_t>(id));
    QKV_CHECK(before < 0, "WordPiece: ", source, ": token '", token, "' is listed twice, with ids ",
              before, " and ", id);
    if (token.size() > prefix.size() && token.compare(0, prefix.size(), prefix) == 0)
      continuation.insert(std::string_view(token).substr(prefix.size()), static_cast<int32_t>(id));
  }
  unk_id = whole.find(config.unk_token);
  QKV_CHECK(unk_id >= 0, "WordPiece: ", source, " has no unknown-word token '", config.unk_token,
            "' (", vocab.size(), " tokens)");
  model_vocab_size = vocab.size();
  tokens = std::move(vocab);
  is_special.assign(tokens.size(), false);
  added.clear();
  added_first.fill(false);
}

void WordPieceState::add_token(const std::string& text, int32_t id, bool special,
                                 const std::string& source) {
  QKV_CHECK(!text.empty(), "WordPiece: ", source, ": added token ", id, " is empty");
  QKV_CHECK(id >= 0, "WordPiece: ", source, ": added token '", text, "' has id ", id);
  const auto uid = static_cast<size_t>(id);
  if (uid < tokens.size()) {
    QKV_CHECK(tokens[uid] == text || (uid >= model_vocab_size && tokens[uid].empty()),
              "WordPiece: ", source, ": added token '", text, "' has id ", id, ", which is '",
              tokens[uid], "'");
  } else {
    tokens.resize(uid + 1);
    is_special.resize(uid + 1, false);
  }
  tokens[uid] = text;
  is_special[uid] = special;
  std::u32string cps;
  for (size_t pos = 0; pos < text.size();)
    cps += decode_utf8(text, pos, ("WordPiece: " + source + ": added token").c_str());
  for (const AddedToken& a : added)
    QKV_CHECK(a.text != cps, "WordPiece: ", source, ": added token '", text,
              "' is listed twice, with ids ", a.id, " and ", id);
  added_first[cps[0] & 0xFF] = true;
  added.push_back({std::move(cps), id, special});
  // Longest first: the first that matches at a position is the longest there,
  // as tokenizers' leftmost-longest Aho-Corasick.
  std::stable_sort(added.begin(), added.end(), [](const AddedToken& x, const AddedToken& y) {
    return x.text.size() > y.text.size();
  });
}

void WordPieceState::set_bert_processing(int32_t cls, int32_t sep) {
  using P = TemplatePiece;
  single_template = std::vector<P>{{P::kSpecial, {cls}, 0}, {P::kSequenceA, {}, 0},
                                   {P::kSpecial, {sep}, 0}};
  pair_template = std::vector<P>{{P::kSpecial, {cls}, 0}, {P::kSequenceA, {}, 0},
                                 {P::kSpecial, {sep}, 0}, {P::kSequenceB, {}, 1},
                                 {P::kSpecial, {sep}, 1}};
}

void WordPieceState::resolve_special_ids() {
  auto find = [&](const std::string& t) -> std::optional<int32_t> {
    for (const AddedToken& a : added)
      if (to_utf8(a.text) == t) return a.id;
    const int32_t id = whole.find(t);
    if (id >= 0) return id;
    return std::nullopt;
  };
  cls_id = find(config.cls_token);
  sep_id = find(config.sep_token);
  pad_id = find(config.pad_token);
  mask_id = find(config.mask_token);
}

// ---- encoding ----

namespace {

// Encodes one sequence into `out` (tokens with offsets in code points).
class SequenceEncoder {
 public:
  SequenceEncoder(const WordPieceState& s, Workspace& ws) : s_(s), ws_(ws) {}

  // Calls on_added(id, begin, end) for each added token found in the raw text
  // and on_word(chars) for each word of the rest, in text order.
  template <class OnAdded, class OnWord>
  void split(std::string_view text, OnAdded&& on_added, OnWord&& on_word) {
    decode_text(text, ws_.chars);
    const std::vector<TracedChar>& chars = ws_.chars;
    size_t segment = 0;
    for (size_t i = 0; i < chars.size();) {
      const AddedToken* match = nullptr;
      if (s_.added_first[chars[i].cp & 0xFF]) match = added_at(i);
      if (!match) {
        ++i;
        continue;
      }
      words(std::span(chars).subspan(segment, i - segment), on_word);
      const size_t end = i + match->text.size();
      on_added(match->id, static_cast<int32_t>(i), static_cast<int32_t>(end));
      segment = i = end;
    }
    words(std::span(chars).subspan(segment), on_word);
  }

  // tokenizers' WordPiece::tokenize on one word: the longest vocabulary
  // prefix, then the longest continuation, ...; [UNK] for the whole word when
  // some position has no match or the word is too long.
  void wordpiece(std::span<const TracedChar> w, Tokens& out) {
    const size_t n = w.size();
    const Offsets whole_word{static_cast<int32_t>(w.front().source),
                             static_cast<int32_t>(w.back().source) + 1};
    if (n > s_.config.max_input_chars_per_word) {
      out.ids.push_back(s_.unk_id);
      out.offsets.push_back(whole_word);
      return;
    }
    std::string& bytes = ws_.word;
    std::vector<uint32_t>& at = ws_.char_start;
    bytes.clear();
    at.clear();
    for (const TracedChar& c : w) {
      at.push_back(static_cast<uint32_t>(bytes.size()));
      append_utf8(bytes, c.cp);
    }
    at.push_back(static_cast<uint32_t>(bytes.size()));
    const std::string_view view = bytes;
    const size_t mark = out.size();
    for (size_t start = 0; start < n;) {
      const bool first = start == 0;
      const TokenTable& table = first ? s_.whole : s_.continuation;
      size_t end = n;
      while (end > start && at[end] - at[start] > table.longest()) --end;
      int32_t id = -1;
      for (; end > start; --end) {
        id = table.find(view.substr(at[start], at[end] - at[start]));
        if (id >= 0) break;
      }
      if (id < 0) {
        out.ids.resize(mark);
        out.offsets.resize(mark);
        out.ids.push_back(s_.unk_id);
        out.offsets.push_back(whole_word);
        return;
      }
      out.ids.push_back(id);
      out.offsets.emplace_back(static_cast<int32_t>(w[start].source),
                               static_cast<int32_t>(w[end - 1].source) + 1);
      start = end;
    }
  }

  void encode(std::string_view text, Tokens& out) {
    out.clear();
    split(
        text,
        [&](int32_t id, int32_t begin, int32_t end) {
          out.ids.push_back(id);
          out.offsets.emplace_back(begin, end);
        },
        [&](std::span<const TracedChar> w) { wordpiece(w, out); });
  }

  void normalize(std::span<const TracedChar> in, std::vector<TracedChar>& out) {
    if (s_.normalizer) {
      bert_normalize(*s_.normalizer, in, out, ws_.scratch);
    } else {
      out.assign(in.begin(), in.end());
    }
  }

 private:
  const AddedToken* added_at(size_t i) const {
    const std::vector<TracedChar>& chars = ws_.chars;
    for (const AddedToken& a : s_.added) {
      if (a.text.size() > chars.size() - i) continue;
      size_t k = 0;
      while (k < a.text.size() && chars[i + k].cp == a.text[k]) ++k;
      if (k == a.text.size()) return &a;
    }
    return nullptr;
  }

  // BertNormalizer, then BertPreTokenizer: words end at whitespace (dropped)
  // and every punctuation character is a word of its own.
  template <class OnWord>
  void words(std::span<const TracedChar> segment, OnWord& on_word) {
    if (segment.empty()) return;
    normalize(segment, ws_.normalized);
    const std::vector<TracedChar>& norm = ws_.normalized;
    size_t begin = 0;
    for (size_t i = 0; i < norm.size(); ++i) {
      const char32_t cp = norm[i].cp;
      const bool space = cp == U' ' || is_bert_whitespace(cp);
      if (!space && !is_bert_punctuation(cp)) continue;
      if (begin < i) on_word(std::span(norm).subspan(begin, i - begin));
      if (!space) on_word(std::span(norm).subspan(i, 1));
      begin = i + 1;
    }
    if (begin < norm.size()) on_word(std::span(norm).subspan(begin));
  }

  const WordPieceState& s_;
  Workspace& ws_;
};

// tokenizers' truncate_encodings (no stride).
void truncate(Tokens& a, Tokens* b, size_t max_length, const Truncation& t) {
  if (max_length == 0) {
    a.truncate(0, t.direction);
    if (b) b->truncate(0, t.direction);
    return;
  }
  const size_t total = a.size() + (b ? b->size() : 0);
  if (total <= max_length) return;
  const size_t to_remove = total - max_length;
  switch (t.strategy) {
    case TruncationStrategy::kLongestFirst:
      if (b) {
        size_t n1 = a.size(), n2 = b->size();
        const bool swap = n1 > n2;
        if (swap) std::swap(n1, n2);
        n2 = n1 > max_length ? n1 : std::max(n1, max_length - n1);
        if (n1 + n2 > max_length) {
          n1 = max_length / 2;
          n2 = n1 + max_length % 2;
        }
        if (swap) std::swap(n1, n2);
        a.truncate(n1, t.direction);
        b->truncate(n2, t.direction);
      } else {
        a.truncate(total - to_remove, t.direction);
      }
      break;
    case TruncationStrategy::kOnlyFirst:
    case TruncationStrategy::kOnlySecond: {
      const bool first = t.strategy == TruncationStrategy::kOnlyFirst;
      QKV_CHECK(first || b, "WordPiece: truncation only_second needs a pair of texts");
      Tokens& target = first ? a : *b;
      QKV_CHECK(target.size() > to_remove, "WordPiece: truncation ",
                first ? "only_first" : "only_second", " cannot fit ", total,
                " tokens into max_length ", max_length, ": the ", first ? "first" : "second",
                " text has only ", target.size());
      target.truncate(target.size() - to_remove, t.direction);
      break;
    }
  }
}

void pad(Encoding& e, size_t length, const Padding& p, int32_t pad_id) {
  if (e.size() >= length) return;
  const size_t n = length - e.size();
  const auto at = [&](auto& v) { return p.direction == Side::kLeft ? v.begin() : v.end(); };
  e.ids.insert(at(e.ids), n, pad_id);
  e.type_ids.insert(at(e.type_ids), n, p.pad_type_id);
  e.attention_mask.insert(at(e.attention_mask), n, 0);
  e.special_tokens_mask.insert(at(e.special_tokens_mask), n, 1);
  e.offsets.insert(at(e.offsets), n, Offsets{0, 0});
}

size_t round_up(size_t length, size_t multiple) {
  return multiple > 0 && length % multiple ? length + multiple - length % multiple : length;
}

int32_t padding_id(const WordPieceState& s, const Padding& p) {
  if (p.pad_id) return *p.pad_id;
  QKV_CHECK(s.pad_id, "WordPiece: padding needs a pad id: the vocabulary has no '",
            s.config.pad_token, "' token and Padding::pad_id is unset");
  return *s.pad_id;
}

size_t num_added(const WordPieceState& s, bool pair) {
  const auto& t = pair ? s.pair_template : s.single_template;
  size_t n = 0;
  if (t)
    for (const TemplatePiece& p : *t) n += p.ids.size();
  return n;
}

// tokenizers' post_process: truncation, then the template, then padding (to
// a fixed length, or to this encoding's own length rounded up).
Encoding finish(const WordPieceState& s, Tokens& a, Tokens* b, bool add_special_tokens) {
  if (s.truncation) {
    size_t max_length = s.truncation->max_length;
    const size_t added = add_special_tokens ? num_added(s, b != nullptr) : 0;
    // tokenizers subtracts without a check and, when max_length is the
    // smaller, wraps around to no truncation at all; an error is kinder.
    QKV_CHECK(max_length >= added, "WordPiece: truncation max_length ", max_length,
              " is shorter than the ", added, " special tokens added to ",
              b ? "a pair" : "a text");
    max_length -= added;
    truncate(a, b, max_length, *s.truncation);
  }
  Encoding e;
  const size_t total = a.size() + (b ? b->size() : 0) + (add_special_tokens ? num_added(s, b != nullptr) : 0);
  e.ids.reserve(total);
  e.type_ids.reserve(total);
  e.offsets.reserve(total);
  e.special_tokens_mask.reserve(total);
  auto append = [&](const Tokens& t, int32_t type_id) {
    e.ids.insert(e.ids.end(), t.ids.begin(), t.ids.end());
    e.offsets.insert(e.offsets.end(), t.offsets.begin(), t.offsets.end());
    e.type_ids.insert(e.type_ids.end(), t.size(), type_id);
    e.special_tokens_mask.insert(e.special_tokens_mask.end(), t.size(), 0);
  };
  const auto& templ = b ? s.pair_template : s.single_template;
  if (!templ) {
    append(a, 0);
    if (b) append(*b, 1);
  } else {
    for (const TemplatePiece& p : *templ) {
      if (p.kind == TemplatePiece::kSequenceA) {
        append(a, p.type_id);
      } else if (p.kind == TemplatePiece::kSequenceB) {
        append(*b, p.type_id);
      } else if (add_special_tokens) {
        e.ids.insert(e.ids.end(), p.ids.begin(), p.ids.end());
        e.offsets.insert(e.offsets.end(), p.ids.size(), Offsets{0, 0});
        e.type_ids.insert(e.type_ids.end(), p.ids.size(), p.type_id);
        e.special_tokens_mask.insert(e.special_tokens_mask.end(), p.ids.size(), 1);
      }
    }
  }
  e.attention_mask.assign(e.ids.size(), 1);
  if (s.padding) {
    const Padding& p = *s.padding;
    pad(e, round_up(p.length.value_or(e.size()), p.pad_to_multiple_of), p, padding_id(s, p));
  }
  return e;
}

// Pads a batch to its longest encoding (or the fixed length), rounded up.
void pad_batch(const WordPieceState& s, std::vector<Encoding>& batch) {
  if (!s.padding || batch.empty()) return;
  const Padding& p = *s.padding;
  size_t length = 0;
  for (const Encoding& e : batch) length = std::max(length, e.size());
  length = round_up(p.length.value_or(length), p.pad_to_multiple_of);
  const int32_t id = padding_id(s, p);
  for (Encoding& e : batch) pad(e, length, p, id);
}

}  // namespace

// ---- WordPiece ----

WordPiece::WordPiece() : state_(std::make_unique<WordPieceState>()) {}
WordPiece::~WordPiece() = default;
WordPiece::WordPiece(const WordPiece& other) : state_(std::make_unique<WordPieceState>(*other.state_)) {}
WordPiece& WordPiece::operator=(const WordPiece& other) {
  if (this != &other) state_ = std::make_unique<WordPieceState>(*other.state_);
  return *this;
}
WordPiece::WordPiece(WordPiece&&) noexcept = default;
WordPiece& WordPiece::operator=(WordPiece&&) noexcept = default;

WordPiece WordPiece::from_vocab(std::vector<std::string> tokens, WordPieceConfig config,
                                const std::string& source) {
  WordPiece wp;
  WordPieceState& s = *wp.state_;
  const BertNormalization& n = config.normalization;
  s.normalizer = BertNormalizerFlags{n.clean_text, n.handle_chinese_chars,
                                             n.strip_accents.value_or(n.lowercase), n.lowercase};
  s.config = std::move(config);
  s.set_vocabulary(std::move(tokens), source);
  // As BertWordPieceTokenizer / BertTokenizerFast: the special tokens the
  // vocabulary has are matched whole in the text.
  for (const std::string* t : {&s.config.unk_token, &s.config.sep_token, &s.config.cls_token,
                               &s.config.pad_token, &s.config.mask_token}) {
    const int32_t id = s.whole.find(*t);
    if (id < 0) continue;
    if (std::none_of(s.added.begin(), s.added.end(), [&](const AddedToken& a) { return a.id == id; }))
      s.add_token(*t, id, true, source);
  }
  s.resolve_special_ids();
  QKV_CHECK(s.cls_id, "WordPiece: ", source, " has no '", s.config.cls_token,
            "' token, which starts every encoding ([CLS] A [SEP])");
  QKV_CHECK(s.sep_id, "WordPiece: ", source, " has no '", s.config.sep_token,
            "' token, which ends every encoding ([CLS] A [SEP])");
  s.set_bert_processing(*s.cls_id, *s.sep_id);
  return wp;
}

Encoding WordPiece::encode(std::string_view text, bool add_special_tokens) const {
  Workspace& ws = workspace();
  SequenceEncoder(*state_, ws).encode(text, ws.a);
  return finish(*state_, ws.a, nullptr, add_special_tokens);
}

Encoding WordPiece::encode_pair(std::string_view text, std::string_view pair,
                                bool add_special_tokens) const {
  Workspace& ws = workspace();
  SequenceEncoder(*state_, ws).encode(text, ws.a);
  SequenceEncoder(*state_, ws).encode(pair, ws.b);
  return finish(*state_, ws.a, &ws.b, add_special_tokens);
}

std::vector<Encoding> WordPiece::encode_batch(const std::vector<std::string>& texts,
                                              bool add_special_tokens) const {
  std::vector<Encoding> out(texts.size());
  qkv::detail::parallel_for(0, static_cast<int64_t>(texts.size()), 64, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = encode(texts[i], add_special_tokens);
  });
  pad_batch(*state_, out);
  return out;
}

std::vector<Encoding> WordPiece::encode_batch_pairs(
    const std::vector<std::pair<std::string, std::string>>& pairs,
    bool add_special_tokens) const {
  std::vector<Encoding> out(pairs.size());
  qkv::detail::parallel_for(0, static_cast<int64_t>(pairs.size()), 64, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      out[i] = encode_pair(pairs[i].first, pairs[i].second, add_special_tokens);
  });
  pad_batch(*state_, out);
  return out;
}

std::string WordPiece::normalize(std::string_view text) const {
  Workspace& ws = workspace();
  decode_text(text, ws.chars);
  std::vector<TracedChar> out;
  SequenceEncoder(*state_, ws).normalize(ws.chars, out);
  return to_utf8(out);
}

std::vector<PreToken> WordPiece::pre_tokenize(std::string_view text) const {
  std::vector<PreToken> out;
  SequenceEncoder(*state_, workspace())
      .split(
          text,
          [&](int32_t id, int32_t begin, int32_t end) {
            out.push_back({state_->tokens[static_cast<size_t>(id)], {begin, end}});
          },
          [&](std::span<const TracedChar> w) {
            out.push_back({to_utf8(w),
                           {static_cast<int32_t>(w.front().source),
                            static_cast<int32_t>(w.back().source) + 1}});
          });
  return out;
}

std::vector<std::string> WordPiece::tokenize(std::string_view text) const {
  Workspace& ws = workspace();
  SequenceEncoder(*state_, ws).encode(text, ws.a);
  std::vector<std::string> out;
  out.reserve(ws.a.size());
  for (int32_t id : ws.a.ids) out.push_back(state_->tokens[static_cast<size_t>(id)]);
  return out;
}

std::string WordPiece::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const WordPieceState& s = *state_;
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    QKV_CHECK(id >= 0 && static_cast<size_t>(id) < s.tokens.size() && !s.tokens[id].empty(),
              "WordPiece::decode: no token has id ", id, " (vocabulary of ", s.tokens.size(), ")");
    if (skip_special_tokens && s.is_special[id]) continue;
    std::string token = s.tokens[id];
    if (!s.has_decoder) {
      if (!first) out += ' ';
    } else if (!first) {
      if (token.compare(0, s.decoder_prefix.size(), s.decoder_prefix) == 0)
        token.erase(0, s.decoder_prefix.size());
      else
        token.insert(0, 1, ' ');
    }
    if (s.has_decoder && s.decoder_cleanup) cleanup(token);
    out += token;
    first = false;
  }
  return out;
}

void WordPiece::set_truncation(std::optional<Truncation> truncation) {
  state_->truncation = truncation;
}

void WordPiece::set_padding(std::optional<Padding> padding) {
  if (padding) padding_id(*state_, *padding);  // a clear error now rather than at encode
  state_->padding = padding;
}

const std::optional<Truncation>& WordPiece::truncation() const { return state_->truncation; }
const std::optional<Padding>& WordPiece::padding() const { return state_->padding; }
size_t WordPiece::vocab_size() const { return state_->tokens.size(); }

std::optional<int32_t> WordPiece::token_to_id(std::string_view token) const {
  const WordPieceState& s = *state_;
  for (const AddedToken& a : s.added)
    if (to_utf8(a.text) == token) return a.id;
  const int32_t id = s.whole.find(token);
  if (id < 0) return std::nullopt;
  return id;
}

const std::string& WordPiece::id_to_token(int32_t id) const {
  const WordPieceState& s = *state_;
  QKV_CHECK(id >= 0 && static_cast<size_t>(id) < s.tokens.size() && !s.tokens[id].empty(),
            "WordPiece::id_to_token: no token has id ", id, " (vocabulary of ", s.tokens.size(),
            ")");
  return s.tokens[id];
}

const WordPieceConfig& WordPiece::config() const { return state_->config; }
int32_t WordPiece::unk_id() const { return state_->unk_id; }
std::optional<int32_t> WordPiece::cls_id() const { return state_->cls_id; }
std::optional<int32_t> WordPiece::sep_id() const { return state_->sep_id; }
std::optional<int32_t> WordPiece::pad_id() const { return state_->pad_id; }
std::optional<int32_t> WordPiece::mask_id() const { return state_->mask_id; }
size_t WordPiece::num_special_tokens(bool pair) const { return num_added(*state_, pair); }

}  // namespace qkv::text
