// The embedding ops and the position / segment embedding modules
// (qkv/ops.h, qkv/embeddings.h): explicit forward and backward, Tensors in and out.
#include "qkv/embeddings.h"

#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>

#include <map>
#include <string>

#include "bindings.h"
#include "qkv/ops.h"

namespace qkv::python {
namespace {

using Release = nb::call_guard<nb::gil_scoped_release>;
using Gradients = std::map<std::string, Tensor>;

// A module together with the generator it was initialised from (seeded by the caller).
template <class Module>
struct Seeded {
  Generator generator;
  Module module;
  template <class Config>
  Seeded(const Config& config, uint64_t seed) : generator(seed), module(config, generator) {}
};

nn::SegmentEmbedding parse_segment_embedding(const std::string& kind) {
  if (kind == "none") return nn::SegmentEmbedding::none;
  if (kind == "sinusoidal") return nn::SegmentEmbedding::sinusoidal;
  if (kind == "learned") return nn::SegmentEmbedding::learned;
  throw Error(qkv::detail::str(
      "SegmentedPositionEncoding: segment_embedding must be 'none', 'sinusoidal' or 'learned', "
      "got '",
      kind, "'"));
}

// parameters() / state_dict() (the same dict of tensors sharing the module's
// storage), load_state_dict() and backward(), common to the three modules.
template <class Module>
void bind_common(nb::class_<Seeded<Module>>& c) {
  using S = Seeded<Module>;
  auto parameters = [](const S& s) { return s.module.parameters(); };
  c.def("parameters", parameters, "Parameters by PyTorch's names (sharing the module's memory).")
      .def("state_dict", parameters)
      .def(
          "load_state_dict",
          [](S& s, const std::map<std::string, Tensor>& state) { s.module.load_state_dict(state); },
          nb::arg("state_dict"), "Strict load: names and shapes must match.")
      .def(
          "backward", [](S& s, const Tensor& grad) -> Gradients { return s.module.backward(grad); },
          nb::arg("grad_output"), Release(),
          "Gradients of the parameters for the latest forward(), by name.");
}

}  // namespace

void bind_embeddings(nb::module_& m) {
  m.def("embedding", &qkv::embedding, nb::arg("weight"), nb::arg("ids"), Release(),
        "weight[ids]: rows of weight [N, D] (f32 / bf16 / f16) for i32 / i64 ids -> [..., D] f32.");
  m.def("embedding_backward", &qkv::embedding_backward, nb::arg("grad"), nb::arg("ids"),
        nb::arg("num_embeddings"), nb::arg("padding_idx") = -1, Release(),
        "The gradient of embedding: grad [..., D] scatter-added by id -> [num_embeddings, D] f32, "
        "deterministically; row padding_idx (-1: none) gets no gradient.");

  using Learned = Seeded<nn::LearnedPositionEmbedding>;
  nb::class_<Learned> learned(m, "LearnedPositionEmbedding",
                              "Learned absolute positions (BERT, GPT-2, ViT): 'weight' "
                              "[max_positions, dim], N(0, 1) as torch.nn.Embedding.");
  learned
      .def(
          "__init__",
          [](Learned* self, int64_t max_positions, int64_t dim, uint64_t seed) {
            new (self) Learned(
                nn::LearnedPositionEmbeddingConfig{.max_positions = max_positions, .dim = dim},
                seed);
          },
          nb::arg("max_positions"), nb::arg("dim"), nb::arg("seed") = 0)
      .def(
          "forward",
          [](Learned& s, int64_t length, int64_t offset) {
            return s.module.forward(length, offset);
          },
          nb::arg("length"), nb::arg("offset") = 0, Release(),
          "Positions offset .. offset + length - 1 -> [length, dim].")
      .def(
          "forward", [](Learned& s, const Tensor& ids) { return s.module.forward(ids); },
          nb::arg("position_ids"), Release(), "Explicit positions (i32 / i64) -> [..., dim].");
  bind_common(learned);

  using TokenType = Seeded<nn::TokenTypeEmbedding>;
  nb::class_<TokenType> token_type(m, "TokenTypeEmbedding",
                                   "Token-type (segment) embeddings, BERT's sentence A / B: "
                                   "'weight' [types, dim], N(0, 1).");
  token_type
      .def(
          "__init__",
          [](TokenType* self, int64_t types, int64_t dim, uint64_t seed) {
            new (self) TokenType(nn::TokenTypeEmbeddingConfig{.types = types, .dim = dim}, seed);
          },
          nb::arg("types"), nb::arg("dim"), nb::arg("seed") = 0)
      .def(
          "forward", [](TokenType& s, const Tensor& ids) { return s.module.forward(ids); },
          nb::arg("token_type_ids"), Release(), "token_type_ids [B, L] -> [B, L, dim].");
  bind_common(token_type);

  using Segmented = Seeded<nn::SegmentedPositionEncoding>;
  nb::class_<Segmented> segmented(
      m, "SegmentedPositionEncoding",
      "SPEC §2: position p of n, in k segments of m = ceil(n / k), is the sinusoidal encoding of "
      "p mod m, plus (segment_embedding 'sinusoidal' or 'learned') an embedding of p // m.");
  segmented
      .def(
          "__init__",
          [](Segmented* self, int64_t segments, int64_t dim, const std::string& segment_embedding,
             double base, uint64_t seed) {
            new (self) Segmented(
                nn::SegmentedPositionEncodingConfig{
                    .segments = segments,
                    .dim = dim,
                    .segment_embedding = parse_segment_embedding(segment_embedding),
                    .base = base},
                seed);
          },
          nb::arg("segments"), nb::arg("dim"), nb::arg("segment_embedding") = "none",
          nb::arg("base") = 10000.0, nb::arg("seed") = 0)
      .def(
          "forward", [](Segmented& s, int64_t n) { return s.module.forward(n); }, nb::arg("n"),
          Release(), "The [n, dim] encoding of a length-n sequence.");
  bind_common(segmented);
}

}  // namespace qkv::python
