// Tokenizers (qkv/tokenizer.h): qkv.CharTokenizer and qkv.ByteLevelBPE.
//
// Text crosses as str (UTF-8 inside); ids as list[int]. ByteLevelBPE.decode
// replaces a character cut in half by the ids with U+FFFD, as `tokenizers`
// and tiktoken do; decode_bytes gives the exact bytes.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "qkv/tokenizer.h"

namespace qkv::python {

using text::ByteLevelBPE;
using text::CharTokenizer;

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
}

}  // namespace qkv::python
