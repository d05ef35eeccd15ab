// Tokenizers (qkv/tokenizer.h, qkv/wordpiece.h): qkv.CharTokenizer,
// qkv.ByteLevelBPE and qkv.WordPiece (with its qkv.Encoding).
//
// Text crosses as str (UTF-8 inside); ids as list[int]. ByteLevelBPE.decode
// replaces a character cut in half by the ids with U+FFFD, as `tokenizers`
// and tiktoken do; decode_bytes gives the exact bytes. WordPiece follows the
// `tokenizers` package's Python names (encode, encode_batch,
// enable_truncation, enable_padding, ...), offsets in characters as there.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "qkv/error.h"
#include "qkv/tokenizer.h"
#include "qkv/wordpiece.h"

namespace qkv::python {

using text::ByteLevelBPE;
using text::CharTokenizer;
using text::Encoding;
using text::WordPiece;

namespace {

text::Side parse_side(const std::string& s, const char* what) {
  if (s == "right") return text::Side::kRight;
  if (s == "left") return text::Side::kLeft;
  throw Error(detail::str(what, " must be 'right' or 'left', not '", s, "'"));
}

const char* side_name(text::Side s) { return s == text::Side::kLeft ? "left" : "right"; }

text::WordPieceConfig make_config(bool lowercase, std::optional<bool> strip_accents,
                                  bool clean_text, bool handle_chinese_chars,
                                  const std::string& unk_token, const std::string& sep_token,
                                  const std::string& cls_token, const std::string& pad_token,
                                  const std::string& mask_token,
                                  const std::string& continuing_subword_prefix,
                                  size_t max_input_chars_per_word) {
  text::WordPieceConfig c;
  c.normalization = {clean_text, handle_chinese_chars, lowercase, strip_accents};
  c.unk_token = unk_token;
  c.sep_token = sep_token;
  c.cls_token = cls_token;
  c.pad_token = pad_token;
  c.mask_token = mask_token;
  c.continuing_subword_prefix = continuing_subword_prefix;
  c.max_input_chars_per_word = max_input_chars_per_word;
  return c;
}

// The keyword arguments of WordPiece.from_vocab / from_tokens.
#define QKV_WORDPIECE_CONFIG_ARGS                                                        \
  nb::kw_only(), nb::arg("lowercase") = true, nb::arg("strip_accents") = nb::none(),    \
      nb::arg("clean_text") = true, nb::arg("handle_chinese_chars") = true,             \
      nb::arg("unk_token") = "[UNK]", nb::arg("sep_token") = "[SEP]",                   \
      nb::arg("cls_token") = "[CLS]", nb::arg("pad_token") = "[PAD]",                   \
      nb::arg("mask_token") = "[MASK]", nb::arg("continuing_subword_prefix") = "##",    \
      nb::arg("max_input_chars_per_word") = 100

void bind_wordpiece(nb::module_& m) {
  nb::class_<Encoding>(m, "Encoding",
                       "WordPiece's output for one text or pair: ids, type_ids, attention_mask, "
                       "special_tokens_mask and offsets (characters of the text; (0, 0) for "
                       "special tokens and padding), as tokenizers' Encoding.")
      .def_ro("ids", &Encoding::ids)
      .def_ro("type_ids", &Encoding::type_ids)
      .def_ro("attention_mask", &Encoding::attention_mask)
      .def_ro("special_tokens_mask", &Encoding::special_tokens_mask)
      .def_ro("offsets", &Encoding::offsets)
      .def("__len__", &Encoding::size)
      .def("__repr__", [](const Encoding& e) {
        return "Encoding(num_tokens=" + std::to_string(e.size()) + ")";
      });

  nb::class_<WordPiece>(m, "WordPiece",
                        "BERT's WordPiece tokenizer, id for id as Hugging Face's BertTokenizerFast "
                        "(tokenizers' BertNormalizer + BertPreTokenizer + WordPiece + "
                        "BertProcessing).")
      .def_static(
          "from_vocab",
          [](const std::string& path, bool lowercase, std::optional<bool> strip_accents,
             bool clean_text, bool handle_chinese_chars, const std::string& unk,
             const std::string& sep, const std::string& cls, const std::string& pad,
             const std::string& mask, const std::string& prefix, size_t max_chars) {
            return WordPiece::from_vocab_file(
                path, make_config(lowercase, strip_accents, clean_text, handle_chinese_chars, unk,
                                  sep, cls, pad, mask, prefix, max_chars));
          },
          nb::arg("path"), QKV_WORDPIECE_CONFIG_ARGS,
          "A vocab.txt (one token per line, the line number its id). strip_accents=None "
          "follows lowercase, as in tokenizers.")
      .def_static(
          "from_tokens",
          [](std::vector<std::string> tokens, bool lowercase, std::optional<bool> strip_accents,
             bool clean_text, bool handle_chinese_chars, const std::string& unk,
             const std::string& sep, const std::string& cls, const std::string& pad,
             const std::string& mask, const std::string& prefix, size_t max_chars) {
            return WordPiece::from_vocab(
                std::move(tokens),
                make_config(lowercase, strip_accents, clean_text, handle_chinese_chars, unk, sep,
                            cls, pad, mask, prefix, max_chars));
          },
          nb::arg("tokens"), QKV_WORDPIECE_CONFIG_ARGS,
          "The vocabulary as a list of tokens in id order.")
      .def_static("from_tokenizer_json", &WordPiece::from_tokenizer_json, nb::arg("path"),
                  "Hugging Face's tokenizer.json (a WordPiece model).")
      .def_static(
          "from_tokenizer_json_str",
          [](const std::string& json) { return WordPiece::from_tokenizer_json_text(json); },
          nb::arg("json"), "tokenizer.json's text.")
      .def_static("load", &WordPiece::load, nb::arg("path"),
                  "A model directory (tokenizer.json, else vocab.txt + tokenizer_config.json), "
                  "or one of those files.")
      .def(
          "encode",
          [](const WordPiece& wp, const std::string& text, std::optional<std::string> pair,
             bool add_special_tokens) {
            nb::gil_scoped_release release;
            return pair ? wp.encode_pair(text, *pair, add_special_tokens)
                        : wp.encode(text, add_special_tokens);
          },
          nb::arg("text"), nb::arg("pair") = nb::none(), nb::arg("add_special_tokens") = true)
      .def(
          "encode_batch",
          [](const WordPiece& wp, nb::sequence inputs, bool add_special_tokens) {
            if (nb::isinstance<nb::str>(inputs))
              throw Error("WordPiece.encode_batch: give a list of texts, not one str");
            std::vector<std::string> singles;
            std::vector<std::pair<std::string, std::string>> pairs;
            for (nb::handle item : inputs) {
              if (nb::isinstance<nb::str>(item)) {
                singles.push_back(nb::cast<std::string>(item));
              } else {
                pairs.push_back(nb::cast<std::pair<std::string, std::string>>(item));
              }
            }
            if (!singles.empty() && !pairs.empty())
              throw Error("WordPiece.encode_batch: give either texts or (text, pair) tuples, "
                          "not both");
            nb::gil_scoped_release release;
            return pairs.empty() ? wp.encode_batch(singles, add_special_tokens)
                                 : wp.encode_batch_pairs(pairs, add_special_tokens);
          },
          nb::arg("inputs"), nb::arg("add_special_tokens") = true,
          "Texts or (text, pair) tuples, encoded on the thread team and padded together.")
      .def(
          "enable_truncation",
          [](WordPiece& wp, size_t max_length, const std::string& strategy,
             const std::string& direction) {
            text::Truncation t;
            t.max_length = max_length;
            if (strategy == "longest_first") {
              t.strategy = text::TruncationStrategy::kLongestFirst;
            } else if (strategy == "only_first") {
              t.strategy = text::TruncationStrategy::kOnlyFirst;
            } else if (strategy == "only_second") {
              t.strategy = text::TruncationStrategy::kOnlySecond;
            } else {
              throw Error("WordPiece.enable_truncation: strategy must be 'longest_first', "
                          "'only_first' or 'only_second', not '" + strategy + "'");
            }
            t.direction = parse_side(direction, "WordPiece.enable_truncation: direction");
            wp.set_truncation(t);
          },
          nb::arg("max_length"), nb::kw_only(), nb::arg("strategy") = "longest_first",
          nb::arg("direction") = "right")
      .def("no_truncation", [](WordPiece& wp) { wp.set_truncation(std::nullopt); })
      .def(
          "enable_padding",
          [](WordPiece& wp, std::optional<size_t> length, std::optional<size_t> multiple,
             const std::string& direction, std::optional<int32_t> pad_id, int32_t pad_type_id) {
            text::Padding p;
            p.length = length;
            p.pad_to_multiple_of = multiple.value_or(0);
            p.direction = parse_side(direction, "WordPiece.enable_padding: direction");
            p.pad_id = pad_id;
            p.pad_type_id = pad_type_id;
            wp.set_padding(p);
          },
          nb::kw_only(), nb::arg("length") = nb::none(), nb::arg("pad_to_multiple_of") = nb::none(),
          nb::arg("direction") = "right", nb::arg("pad_id") = nb::none(),
          nb::arg("pad_type_id") = 0,
          "length=None pads a batch to its longest encoding; pad_id=None uses the pad token.")
      .def("no_padding", [](WordPiece& wp) { wp.set_padding(std::nullopt); })
      .def_prop_ro("truncation",
                   [](const WordPiece& wp) -> nb::object {
                     if (!wp.truncation()) return nb::none();
                     const text::Truncation& t = *wp.truncation();
                     static const char* kStrategies[] = {"longest_first", "only_first",
                                                         "only_second"};
                     nb::dict d;
                     d["max_length"] = t.max_length;
                     d["strategy"] = kStrategies[static_cast<int>(t.strategy)];
                     d["direction"] = side_name(t.direction);
                     return d;
                   })
      .def_prop_ro("padding",
                   [](const WordPiece& wp) -> nb::object {
                     if (!wp.padding()) return nb::none();
                     const text::Padding& p = *wp.padding();
                     nb::dict d;
                     d["length"] = p.length ? nb::cast(*p.length) : nb::none();
                     d["pad_to_multiple_of"] =
                         p.pad_to_multiple_of ? nb::cast(p.pad_to_multiple_of) : nb::none();
                     d["direction"] = side_name(p.direction);
                     d["pad_id"] = p.pad_id ? *p.pad_id : *wp.pad_id();
                     d["pad_type_id"] = p.pad_type_id;
                     return d;
                   })
      .def(
          "normalize", [](const WordPiece& wp, const std::string& s) { return wp.normalize(s); },
          nb::arg("text"), "BertNormalizer's output (no special-token matching).")
      .def(
          "pre_tokenize",
          [](const WordPiece& wp, const std::string& s) {
            std::vector<std::pair<std::string, std::pair<int32_t, int32_t>>> out;
            for (auto& w : wp.pre_tokenize(s)) out.emplace_back(std::move(w.text), w.offsets);
            return out;
          },
          nb::arg("text"),
          "The words WordPiece sees (special tokens whole), with their character offsets.")
      .def(
          "tokenize", [](const WordPiece& wp, const std::string& s) { return wp.tokenize(s); },
          nb::arg("text"), "The tokens of `text`, without special tokens.")
      .def("decode", &WordPiece::decode, nb::arg("ids"), nb::arg("skip_special_tokens") = true)
      .def(
          "token_to_id",
          [](const WordPiece& wp, const std::string& token) { return wp.token_to_id(token); },
          nb::arg("token"))
      .def("id_to_token", &WordPiece::id_to_token, nb::arg("id"))
      .def_prop_ro("vocab_size", &WordPiece::vocab_size)
      .def_prop_ro("unk_id", &WordPiece::unk_id)
      .def_prop_ro("cls_id", &WordPiece::cls_id)
      .def_prop_ro("sep_id", &WordPiece::sep_id)
      .def_prop_ro("pad_id", &WordPiece::pad_id)
      .def_prop_ro("mask_id", &WordPiece::mask_id)
      .def("num_special_tokens", &WordPiece::num_special_tokens, nb::arg("pair") = false)
      .def("__len__", &WordPiece::vocab_size)
      .def("__repr__", [](const WordPiece& wp) {
        const auto& n = wp.config().normalization;
        return "WordPiece(vocab_size=" + std::to_string(wp.vocab_size()) +
               ", lowercase=" + (n.lowercase ? "True" : "False") + ")";
      });
}

#undef QKV_WORDPIECE_CONFIG_ARGS

}  // namespace

void bind_text(nb::module_& m) {
  nb::class_<CharTokenizer>(m, "CharTokenizer",
                            "One id per Unicode code point of a corpus, in code point order.")
      .def_static(
          "train", [](const std::string& corpus) { return CharTokenizer::from_corpus(corpus); },
          nb::arg("corpus"), "The sorted unique characters of `corpus`.")
      .def_static("load", &CharTokenizer::load, nb::arg("dir"), "Reads <dir>/char_tokenizer.json.")
      .def("save", &CharTokenizer::save, nb::arg("dir"),
           "Writes <dir>/char_tokenizer.json atomically (the directory is created).")
      .def(
          "encode", [](const CharTokenizer& t, const std::string& s) { return t.encode(s); },
          nb::arg("text"))
      .def(
          "decode",
          [](const CharTokenizer& t, const std::vector<int32_t>& ids) { return t.decode(ids); },
          nb::arg("ids"))
      .def_prop_ro("vocab_size", &CharTokenizer::vocab_size)
      .def_prop_ro("chars",
                   [](const CharTokenizer& t) {
                     std::vector<std::string> out;
                     for (size_t i = 0; i < t.vocab_size(); ++i) {
                       const std::vector<int32_t> id{static_cast<int32_t>(i)};
                       out.push_back(t.decode(id));
                     }
                     return out;
                   })
      .def("__len__", &CharTokenizer::vocab_size)
      .def("__repr__", [](const CharTokenizer& t) {
        return "CharTokenizer(vocab_size=" + std::to_string(t.vocab_size()) + ")";
      });

  nb::class_<ByteLevelBPE>(m, "ByteLevelBPE",
                           "GPT-2's byte-level BPE: loads and saves vocab.json + merges.txt, "
                           "and trains on a corpus.")
      .def_static(
          "train",
          [](const std::string& corpus, size_t vocab_size,
             std::vector<std::string> special_tokens) {
            return ByteLevelBPE::train(corpus, vocab_size, std::move(special_tokens));
          },
          nb::arg("corpus"), nb::arg("vocab_size"),
          nb::arg("special_tokens") = std::vector<std::string>{"<|endoftext|>"},
          nb::call_guard<nb::gil_scoped_release>(),
          "BPE training over GPT-2's pre-tokenised words until `vocab_size` tokens; ties between "
          "equally frequent pairs go to the smaller (left id, right id), as in `tokenizers`.")
      .def_static("from_files", &ByteLevelBPE::from_files, nb::arg("vocab"), nb::arg("merges"),
                  nb::arg("special_tokens") = std::vector<std::string>{},
                  "GPT-2's vocab.json and merges.txt. Special tokens default to every "
                  "\"<|...|>\" entry of the vocabulary.")
      .def_static("load", &ByteLevelBPE::load, nb::arg("dir"),
                  "<dir>/vocab.json and <dir>/merges.txt.")
      .def("save", &ByteLevelBPE::save, nb::arg("dir"),
           "Writes <dir>/vocab.json and <dir>/merges.txt, each atomically.")
      .def(
          "encode", [](const ByteLevelBPE& t, const std::string& s) { return t.encode(s); },
          nb::arg("text"), nb::call_guard<nb::gil_scoped_release>())
      .def(
          "decode",
          [](const ByteLevelBPE& t, const std::vector<int32_t>& ids) {
            const std::string bytes = t.decode(ids);
            return nb::steal<nb::str>(PyUnicode_DecodeUTF8(
                bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace"));
          },
          nb::arg("ids"))
      .def(
          "decode_bytes",
          [](const ByteLevelBPE& t, const std::vector<int32_t>& ids) {
            const std::string bytes = t.decode(ids);
            return nb::bytes(bytes.data(), bytes.size());
          },
          nb::arg("ids"))
      .def_static(
          "pretokenize", [](const std::string& s) { return ByteLevelBPE::pretokenize(s); },
          nb::arg("text"), "GPT-2's pre-tokenisation of `text` (the pieces BPE merges within).")
      .def_prop_ro("vocab_size", &ByteLevelBPE::vocab_size)
      .def_prop_ro("num_merges", &ByteLevelBPE::num_merges)
      .def("__len__", &ByteLevelBPE::vocab_size)
      .def("__repr__", [](const ByteLevelBPE& t) {
        return "ByteLevelBPE(vocab_size=" + std::to_string(t.vocab_size()) +
               ", merges=" + std::to_string(t.num_merges()) + ")";
      });

  bind_wordpiece(m);
}

}  // namespace qkv::python
