// ByteLevelBPE: GPT-2's byte-level BPE (openai/gpt-2 src/encoder.py), its file
// format, and BPE training (Sennrich et al. 2016) over pre-tokenised words.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_set>

#include "io/file.h"
#include "qkv/error.h"
#include "qkv/file.h"
#include "qkv/tokenizer.h"
#include "text/gpt2_pretokenize.h"
#include "text/utf8.h"

namespace qkv::text {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// A token's bytes as vocab.json and merges.txt spell them.
std::string to_gpt2_spelling(std::string_view bytes) {
  std::string out;
  for (char c : bytes) append_utf8(out, gpt2_byte_to_code_point()[static_cast<uint8_t>(c)]);
  return out;
}

constexpr size_t kCacheLimit = 1 << 16;

}  // namespace

struct ByteLevelBPE::State {
  std::vector<std::string> tokens;               // id -> bytes (a special token: its text)
  std::vector<bool> special;                     // id -> kept whole, spelled literally
  std::unordered_map<std::string, int32_t> ids;  // bytes -> id, ordinary tokens
  std::array<int32_t, 256> byte_ids{};
  std::vector<std::pair<int32_t, int32_t>> merges;                  // in rank order
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> ranks;  // pair -> (rank, merged id)
  std::vector<std::string> specials;                                // longest first

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void finish_specials() {
    specials.clear();
    for (size_t id = 0; id < tokens.size(); ++id)
      if (special[id]) specials.push_back(tokens[id]);
    std::sort(specials.begin(), specials.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  }

  // GPT-2's bpe(): merge the lowest-ranked adjacent pair (every occurrence,
  // left to right) until no adjacent pair has a merge.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    {
      std::lock_guard lock(cache_mutex);
      const auto it = cache.find(std::string(piece));
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> word;
    word.reserve(piece.size());
    for (char c : piece) word.push_back(byte_ids[static_cast<uint8_t>(c)]);
    while (word.size() > 1) {
      int32_t best_rank = -1, merged = -1;
      std::pair<int32_t, int32_t> best{};
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        const auto it = ranks.find(pair_key(word[i], word[i + 1]));
        if (it != ranks.end() && (best_rank < 0 || it->second.first < best_rank)) {
          best_rank = it->second.first;
          merged = it->second.second;
          best = {word[i], word[i + 1]};
        }
      }
      if (best_rank < 0) break;
      size_t w = 0;
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && word[i] == best.first && word[i + 1] == best.second) {
          word[w++] = merged;
          ++i;
        } else {
          word[w++] = word[i];
        }
      }
      word.resize(w);
    }
    out.insert(out.end(), word.begin(), word.end());
    std::lock_guard lock(cache_mutex);
    if (cache.size() >= kCacheLimit) cache.clear();
    cache.emplace(std::string(piece), std::move(word));
  }

  // Calls `text_part` on the stretches between special tokens and
  // `special_part` on each special token, leftmost (then longest) first.
  template <class F, class G>
  void split_specials(std::string_view text, F&& text_part, G&& special_part) const {
    while (!text.empty()) {
      size_t best = std::string_view::npos;
      const std::string* which = nullptr;
      for (const auto& s : specials) {
        const size_t at = text.find(s);
        if (at < best) best = at, which = &s;  // longest first: ties keep the longer
      }
      if (!which) {
        text_part(text);
        return;
      }
      if (best > 0) text_part(text.substr(0, best));
      special_part(*which);
      text.remove_prefix(best + which->size());
    }
  }
};

ByteLevelBPE::ByteLevelBPE() : state_(std::make_unique<State>()) {}
ByteLevelBPE::~ByteLevelBPE() = default;
ByteLevelBPE::ByteLevelBPE(ByteLevelBPE&&) noexcept = default;
ByteLevelBPE& ByteLevelBPE::operator=(ByteLevelBPE&&) noexcept = default;

size_t ByteLevelBPE::vocab_size() const {
  return state_->tokens.size();
}
size_t ByteLevelBPE::num_merges() const {
  return state_->merges.size();
}

std::vector<std::string> ByteLevelBPE::pretokenize(std::string_view text) {
  std::vector<std::string> out;
  for (auto [begin, end] : gpt2_split(text)) out.emplace_back(text.substr(begin, end - begin));
  return out;
}

std::vector<int32_t> ByteLevelBPE::encode(std::string_view text) const {
  const State& s = *state_;
  QKV_CHECK(!s.tokens.empty(), "ByteLevelBPE.encode: the tokenizer is empty (load or train one)");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  s.split_specials(
      text,
      [&](std::string_view part) {
        std::vector<std::pair<size_t, size_t>> pieces;
        try {
          pieces = gpt2_split(part);
        } catch (const Error&) {
          // Re-decode the whole text for an offset relative to its start.
          for (size_t pos = 0; pos < text.size();) decode_utf8(text, pos, "ByteLevelBPE.encode");
          throw;
        }
        for (auto [b, e] : pieces) s.encode_piece(part.substr(b, e - b), ids);
      },
      [&](const std::string& special) { ids.push_back(s.ids.at(special)); });
  return ids;
}

std::string ByteLevelBPE::decode(std::span<const int32_t> ids) const {
  const State& s = *state_;
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    QKV_CHECK(ids[i] >= 0 && static_cast<size_t>(ids[i]) < s.tokens.size(),
              "ByteLevelBPE.decode: id ", ids[i], " at position ", i, " is outside [0, ",
              s.tokens.size(), ")");
    out += s.tokens[ids[i]];
  }
  return out;
}

ByteLevelBPE ByteLevelBPE::from_files(const std::string& vocab_json, const std::string& merges_txt,
                                      std::vector<std::string> special_tokens) {
  const char* what = "ByteLevelBPE.from_files";
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(read_file(vocab_json, what));
  } catch (const nlohmann::json::exception& e) {
    throw Error(detail::str(what, ": '", vocab_json, "' is not valid JSON: ", e.what()));
  }
  QKV_CHECK(doc.is_object() && !doc.empty(), what, ": '", vocab_json,
            "' is not a JSON object of token -> id");
  const size_t n = doc.size();
  QKV_CHECK(n < (size_t{1} << 31), what, ": '", vocab_json, "' has too many tokens (", n, ")");

  ByteLevelBPE bpe;
  State& s = *bpe.state_;
  s.tokens.assign(n, std::string());
  s.special.assign(n, false);
  std::vector<bool> seen(n, false);
  std::vector<std::string> spelled(n);  // id -> vocab.json spelling
  for (const auto& [key, value] : doc.items()) {
    QKV_CHECK(value.is_number_integer(), what, ": '", vocab_json, "': the id of token \"", key,
              "\" is not an integer");
    const int64_t id = value.get<int64_t>();
    QKV_CHECK(id >= 0 && static_cast<size_t>(id) < n, what, ": '", vocab_json, "': token \"", key,
              "\" has id ", id, ", outside [0, ", n, ") (ids must be 0..size-1)");
    QKV_CHECK(!seen[id], what, ": '", vocab_json, "': id collision: \"", spelled[id], "\" and \"",
              key, "\" both have id ", id);
    seen[id] = true;
    spelled[id] = key;
  }

  // Which tokens are special: those named, else every "<|...|>" entry.
  std::unordered_set<std::string> named(special_tokens.begin(), special_tokens.end());
  const bool by_shape = special_tokens.empty();
  for (const auto& name : special_tokens)
    QKV_CHECK(doc.contains(name), what, ": special token \"", name, "\" is not in '", vocab_json,
              "'");
  for (size_t id = 0; id < n; ++id) {
    const std::string& key = spelled[id];
    const bool shaped = key.size() > 4 && key.starts_with("<|") && key.ends_with("|>");
    if (by_shape ? shaped : named.count(key) > 0) {
      s.special[id] = true;
      s.tokens[id] = key;
      continue;
    }
    std::string bytes;
    for (size_t pos = 0; pos < key.size();) {
      const char32_t cp = decode_utf8(key, pos, what);
      const int b = gpt2_code_point_to_byte(cp);
      QKV_CHECK(b >= 0, what, ": '", vocab_json, "': token \"", key, "\" (id ", id,
                ") has the character ", describe_code_point(cp),
                ", which is not in GPT-2's byte alphabet");
      bytes += static_cast<char>(b);
    }
    QKV_CHECK(!bytes.empty(), what, ": '", vocab_json, "': id ", id, " is the empty token");
    s.tokens[id] = bytes;
    s.ids.emplace(std::move(bytes), static_cast<int32_t>(id));
  }
  for (size_t id = 0; id < n; ++id)
    if (s.special[id]) s.ids.emplace(s.tokens[id], static_cast<int32_t>(id));
  std::string missing;
  int num_missing = 0;
  for (int b = 0; b < 256; ++b) {
    const auto it = s.ids.find(std::string(1, static_cast<char>(b)));
    if (it == s.ids.end() || s.special[it->second]) {
      if (num_missing++ < 8) missing += detail::str(missing.empty() ? "" : ", ", b);
      continue;
    }
    s.byte_ids[b] = it->second;
  }
  QKV_CHECK(num_missing == 0, what, ": '", vocab_json, "' lacks ", num_missing,
            " of the 256 single-byte tokens (bytes ", missing, num_missing > 8 ? ", ..." : "",
            "); a byte-level vocabulary needs all of them");

  const std::string merges_text = read_file(merges_txt, what);
  std::istringstream lines(merges_text);
  std::string line;
  size_t line_no = 0;
  auto token_id = [&](const std::string& spelling) -> int32_t {
    const auto it = doc.find(spelling);
    QKV_CHECK(it != doc.end(), what, ": '", merges_txt, "' line ", line_no, ": token \"", spelling,
              "\" is not in '", vocab_json, "'");
    const auto id = it->get<int32_t>();
    QKV_CHECK(!s.special[id], what, ": '", merges_txt, "' line ", line_no, ": \"", spelling,
              "\" is a special token and cannot be merged");
    return id;
  };
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.starts_with("#version")) continue;
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    QKV_CHECK(space != std::string::npos && space > 0 && space + 1 < line.size() &&
                  line.find(' ', space + 1) == std::string::npos,
              what, ": '", merges_txt, "' line ", line_no, ": \"", line,
              "\" is not two tokens separated by one space");
    const int32_t a = token_id(line.substr(0, space));
    const int32_t b = token_id(line.substr(space + 1));
    const auto merged = s.ids.find(s.tokens[a] + s.tokens[b]);
    QKV_CHECK(merged != s.ids.end() && !s.special[merged->second], what, ": '", merges_txt,
              "' line ", line_no, ": the merge of \"", line.substr(0, space), "\" and \"",
              line.substr(space + 1), "\" is not in '", vocab_json, "'");
    const int32_t rank = static_cast<int32_t>(s.merges.size());
    QKV_CHECK(s.ranks.emplace(pair_key(a, b), std::pair{rank, merged->second}).second, what, ": '",
              merges_txt, "' line ", line_no, ": duplicate merge \"", line, "\"");
    s.merges.emplace_back(a, b);
  }
  s.finish_specials();
  return bpe;
}

ByteLevelBPE ByteLevelBPE::load(const std::string& dir) {
  const auto base = std::filesystem::path(dir);
  return from_files((base / "vocab.json").string(), (base / "merges.txt").string());
}

void ByteLevelBPE::save(const std::string& dir) const {
  const State& s = *state_;
  QKV_CHECK(!s.tokens.empty(), "ByteLevelBPE.save: the tokenizer is empty");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  QKV_CHECK(!ec, "ByteLevelBPE.save: cannot create directory '", dir, "': ", ec.message());
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t id = 0; id < s.tokens.size(); ++id)
    vocab[s.special[id] ? s.tokens[id] : to_gpt2_spelling(s.tokens[id])] = id;
  const std::string vocab_text = vocab.dump() + "\n";
  std::string merges_text = "#version: 0.2\n";
  for (auto [a, b] : s.merges)
    merges_text += to_gpt2_spelling(s.tokens[a]) + " " + to_gpt2_spelling(s.tokens[b]) + "\n";
  auto bytes = [](const std::string& t) {
    return std::span(reinterpret_cast<const uint8_t*>(t.data()), t.size());
  };
  const auto base = std::filesystem::path(dir);
  io::write_file_atomically((base / "vocab.json").string(), bytes(vocab_text));
  io::write_file_atomically((base / "merges.txt").string(), bytes(merges_text));
}

ByteLevelBPE ByteLevelBPE::train(std::string_view corpus, size_t vocab_size,
                                 std::vector<std::string> special_tokens) {
  const size_t base_size = special_tokens.size() + 256;
  QKV_CHECK(vocab_size >= base_size, "ByteLevelBPE.train: vocab_size ", vocab_size,
            " is smaller than the 256 byte tokens plus ", special_tokens.size(), " special tokens");
  ByteLevelBPE bpe;
  State& s = *bpe.state_;
  std::unordered_map<std::string, int32_t> all_ids;  // bytes -> id, specials included
  auto add = [&](std::string bytes, bool special) {
    const auto id = static_cast<int32_t>(s.tokens.size());
    QKV_CHECK(all_ids.emplace(bytes, id).second, "ByteLevelBPE.train: special token \"", bytes,
              "\" given twice or is a single byte");
    s.tokens.push_back(bytes);
    s.special.push_back(special);
    s.ids.emplace(std::move(bytes), id);
    return id;
  };
  for (auto& t : special_tokens) {
    QKV_CHECK(!t.empty(), "ByteLevelBPE.train: a special token is empty");
    add(t, true);
  }
  s.finish_specials();
  // The byte tokens in the order of their spelling's code point, as the
  // `tokenizers` BpeTrainer numbers its alphabet.
  std::array<int, 256> by_code_point;
  for (int b = 0; b < 256; ++b) by_code_point[b] = b;
  std::sort(by_code_point.begin(), by_code_point.end(), [](int x, int y) {
    return gpt2_byte_to_code_point()[x] < gpt2_byte_to_code_point()[y];
  });
  for (int b : by_code_point) s.byte_ids[b] = add(std::string(1, static_cast<char>(b)), false);

  // Word counts over the pre-tokenised corpus (special tokens cut out).
  std::unordered_map<std::string_view, int64_t> counts;
  s.split_specials(
      corpus,
      [&](std::string_view part) {
        for (auto [b, e] : gpt2_split(part)) ++counts[part.substr(b, e - b)];
      },
      [](const std::string&) {});
  std::vector<std::string_view> keys;
  keys.reserve(counts.size());
  for (const auto& [word, count] : counts) keys.push_back(word);
  std::sort(keys.begin(), keys.end());  // a fixed word order: nothing depends on hashing
  struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(keys.size());
  for (auto key : keys) {
    Word w{{}, counts[key]};
    for (char c : key) w.symbols.push_back(s.byte_ids[static_cast<uint8_t>(c)]);
    words.push_back(std::move(w));
  }

  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words (may repeat)
  for (uint32_t wi = 0; wi < words.size(); ++wi) {
    const auto& sym = words[wi].symbols;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const uint64_t key = pair_key(sym[i], sym[i + 1]);
      pair_counts[key] += words[wi].count;
      where[key].push_back(wi);
    }
  }
  // A max-heap on (count, then the smaller pair), updated lazily: counts of
  // existing pairs only fall, so a popped entry whose count is stale is pushed
  // back with its current count, and a fresh top is the exact arg max.
  struct Entry {
    int64_t count;
    uint64_t pair;
    bool operator<(const Entry& o) const {
      return count != o.count ? count < o.count : pair > o.pair;
    }
  };
  std::priority_queue<Entry> heap;
  for (const auto& [key, count] : pair_counts)
    if (count > 0) heap.push({count, key});

  std::vector<int32_t> merged_symbols;
  while (s.tokens.size() < vocab_size && !heap.empty()) {
    Entry top = heap.top();
    heap.pop();
    const int64_t current = pair_counts[top.pair];
    if (top.count != current) {
      top.count = current;
      heap.push(top);
      continue;
    }
    if (top.count < 1) break;
    const auto a = static_cast<int32_t>(top.pair >> 32);
    const auto b = static_cast<int32_t>(top.pair & 0xFFFFFFFFu);
    std::string bytes = s.tokens[a] + s.tokens[b];
    const auto existing = all_ids.find(bytes);
    const int32_t merged = existing != all_ids.end() ? existing->second : add(bytes, false);
    s.ranks.emplace(top.pair, std::pair{static_cast<int32_t>(s.merges.size()), merged});
    s.merges.emplace_back(a, b);

    auto affected = std::move(where[top.pair]);
    where.erase(top.pair);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    std::unordered_map<uint64_t, int64_t> delta;
    for (uint32_t wi : affected) {
      Word& w = words[wi];
      const auto& sym = w.symbols;
      bool present = false;
      for (size_t i = 0; i + 1 < sym.size() && !present; ++i)
        present = sym[i] == a && sym[i + 1] == b;
      if (!present) continue;
      for (size_t i = 0; i + 1 < sym.size(); ++i) delta[pair_key(sym[i], sym[i + 1])] -= w.count;
      merged_symbols.clear();
      for (size_t i = 0; i < sym.size(); ++i) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
          merged_symbols.push_back(merged);
          ++i;
        } else {
          merged_symbols.push_back(sym[i]);
        }
      }
      w.symbols.assign(merged_symbols.begin(), merged_symbols.end());
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        const uint64_t key = pair_key(sym[i], sym[i + 1]);
        delta[key] += w.count;
        if (sym[i] == merged || sym[i + 1] == merged) where[key].push_back(wi);
      }
    }
    for (const auto& [key, d] : delta) {
      if (d == 0) continue;
      const int64_t now = (pair_counts[key] += d);
      if (d > 0 && now > 0) heap.push({now, key});
    }
  }
  return bpe;
}

}  // namespace qkv::text
