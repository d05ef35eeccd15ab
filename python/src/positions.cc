// Positional encodings: sinusoidal tables, ALiBi, rotary embeddings.
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "bindings.h"
#include "qkv/positions.h"

namespace qkv::python {
namespace {

RotaryOptions rotary_options(double base, double scaling, int64_t offset, const std::string& style,
                             int64_t rotary_dim, const std::string& layout) {
  RotaryOptions o{.base = base, .scaling = scaling, .offset = offset, .rotary_dim = rotary_dim};
  if (style == "rotate_half") o.style = RotaryStyle::rotate_half;
  else if (style == "interleaved") o.style = RotaryStyle::interleaved;
  else throw Error(detail::str("rotary_embedding: style must be 'rotate_half' or 'interleaved', got '", style, "'"));
  if (layout == "blhd") o.layout = AttentionLayout::blhd;
  else if (layout != "bhld") throw Error(detail::str("rotary_embedding: layout must be 'bhld' or 'blhd', got '", layout, "'"));
  return o;
}

}  // namespace

void bind_positions(nb::module_& m) {
  m.def("sinusoidal_positions", &sinusoidal_positions, nb::arg("length"), nb::arg("dim"),
        nb::arg("base") = 10000.0, "The [length, dim] sinusoidal table of Vaswani et al. 2017.");
  m.def("alibi_slopes", &alibi_slopes, nb::arg("heads"), "ALiBi's per-head slopes (Press et al. 2022).");
  m.def("alibi_score", &alibi_score, nb::arg("slopes"), nb::arg("query_offset") = 0,
        "A score modifier adding -slope[h] * |q + query_offset - kv| inside the fused kernel.");
  // rotary_embedding and its backward take the same keywords.
  using Rotation = Tensor (*)(const Tensor&, const RotaryOptions&);
  auto bind_rotation = [&m](const char* name, const char* arg, Rotation rotation, const char* doc) {
    m.def(
        name,
        [rotation](const Tensor& x, double base, double scaling, int64_t offset,
                   const std::string& style, int64_t rotary_dim, const std::string& layout) {
          const RotaryOptions o = rotary_options(base, scaling, offset, style, rotary_dim, layout);
          nb::gil_scoped_release release;
          return rotation(x, o);
        },
        nb::arg(arg), nb::arg("base") = 10000.0, nb::arg("scaling") = 1.0, nb::arg("offset") = 0,
        nb::arg("style") = "rotate_half", nb::arg("rotary_dim") = 0, nb::arg("layout") = "bhld", doc);
  };
  bind_rotation("rotary_embedding", "x", &qkv::rotary_embedding,
                "Rotary position embedding of x [B, H, L, D] (layout='blhd': [B, L, H, D]).");
  bind_rotation("rotary_embedding_backward", "grad", &qkv::rotary_embedding_backward,
                "The gradient of rotary_embedding (the inverse rotation).");
}

}  // namespace qkv::python
