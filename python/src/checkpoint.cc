// Weights by PyTorch's names in safetensors files, and GloVe / word2vec text
// vectors (qkv/checkpoint.h, qkv/text_vectors.h).
//
// save_model / load_model take any object with state_dict() -> {name: Tensor}
// and load_state_dict(dict): the nn modules, MultiheadAttention, the position
// embeddings. A file written by save_model loads into torch with
// safetensors.torch.load_file + Module.load_state_dict, and the reverse.
#include "qkv/checkpoint.h"

#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <map>
#include <string>
#include <vector>

#include "bindings.h"
#include "qkv/error.h"
#include "qkv/safetensors.h"
#include "qkv/text_vectors.h"

namespace qkv::python {
namespace {

using TensorDict = std::map<std::string, Tensor>;

TextVectorFormat parse_format(const std::string& s) {
  if (s == "detect") return TextVectorFormat::detect;
  if (s == "glove") return TextVectorFormat::glove;
  if (s == "word2vec") return TextVectorFormat::word2vec;
  throw Error(detail::str(
      "load_text_vectors: format must be 'detect', 'glove' or 'word2vec', got '", s, "'"));
}

MissingWordInit::Kind parse_init(const std::string& s) {
  if (s == "normal") return MissingWordInit::Kind::normal;
  if (s == "uniform") return MissingWordInit::Kind::uniform;
  if (s == "zeros") return MissingWordInit::Kind::zeros;
  throw Error(detail::str("embedding_table_for: init must be 'normal', 'uniform' or 'zeros', got '",
                          s, "'"));
}

}  // namespace

void bind_checkpoint(nb::module_& m) {
  m.def(
      "save_state_dict",
      [](const std::string& path, const TensorDict& state,
         const std::map<std::string, std::string>& metadata) {
        nb::gil_scoped_release release;
        safetensors::save(path, state, metadata);
      },
      nb::arg("path"), nb::arg("state_dict"),
      nb::arg("metadata") = std::map<std::string, std::string>{{"format", "pt"}},
      "Writes {name: Tensor} to a safetensors file atomically (as safetensors.torch.save_file "
      "names them).");
  m.def("load_state_dict_file", &load_weights, nb::arg("path"),
        "{name: Tensor} of a safetensors file (zero-copy views); of a qkv checkpoint, its model "
        "weights.");
  m.def(
      "save_model",
      [](const std::string& path, nb::object module,
         const std::map<std::string, std::string>& metadata) {
        const TensorDict state = nb::cast<TensorDict>(module.attr("state_dict")());
        nb::gil_scoped_release release;
        safetensors::save(path, state, metadata);
      },
      nb::arg("path"), nb::arg("module"),
      nb::arg("metadata") = std::map<std::string, std::string>{{"format", "pt"}},
      "Saves module.state_dict() by its PyTorch names, atomically.");
  m.def(
      "load_model",
      [](const std::string& path, nb::object module) {
        const TensorDict state = load_weights(path);
        try {
          module.attr("load_state_dict")(state);
        } catch (const nb::python_error& e) {
          throw Error(
              detail::str("load_model '", path, "': the file does not fit the module: ", e.what()));
        }
      },
      nb::arg("path"), nb::arg("module"),
      "Strict load of a safetensors file (PyTorch's or qkv's) into module.load_state_dict; "
      "errors name the file and the missing, unexpected and mismatched names.");

  nb::class_<TextVectors>(m, "TextVectors", "Words and their vectors from a GloVe / word2vec file.")
      .def_ro("words", &TextVectors::words)
      .def_ro("vectors", &TextVectors::vectors, "[len(words), dim] f32")
      .def_ro("duplicates", &TextVectors::duplicates, "lines of words seen before (skipped)")
      .def_prop_ro("dim", &TextVectors::dim)
      .def_prop_ro("format",
                   [](const TextVectors& v) {
                     return v.format == TextVectorFormat::word2vec ? "word2vec" : "glove";
                   })
      .def("__len__", [](const TextVectors& v) { return v.words.size(); });
  m.def(
      "load_text_vectors",
      [](const std::string& path, int64_t max_words, int64_t expected_dim,
         const std::string& format, int64_t max_line_bytes) {
        const TextVectorsOptions options{max_words, expected_dim, parse_format(format),
                                         max_line_bytes};
        nb::gil_scoped_release release;
        return load_text_vectors(path, options);
      },
      nb::arg("path"), nb::arg("max_words") = 0, nb::arg("expected_dim") = 0,
      nb::arg("format") = "detect", nb::arg("max_line_bytes") = int64_t{1} << 20,
      "Reads GloVe ('word v1 ... vd' lines) or word2vec text ('count dim' header) vectors; "
      "malformed files raise QkvError naming the file, line and problem.");
  m.def(
      "embedding_table_for",
      [](const std::vector<std::string>& vocab, const TextVectors& vectors, uint64_t seed,
         const std::string& init, double scale) {
        Generator generator(seed);
        return embedding_table_for(vocab, vectors, generator, {parse_init(init), scale});
      },
      nb::arg("vocab"), nb::arg("vectors"), nb::arg("seed") = 0, nb::arg("init") = "normal",
      nb::arg("scale") = 1.0,
      "[len(vocab), dim] f32: each word's vector, or N(0, scale^2) / U(-scale, scale) / 0 "
      "for words without one (drawn in vocabulary order from Generator(seed)).");
}

}  // namespace qkv::python
