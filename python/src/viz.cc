// qkv.viz: attention you can see (qkv/visualize.h) -- PNG heatmaps, the
// offline head-view page and bertviz's JSON -- from a list of token strings
// and one [heads, T, T] array per layer (qkv tensors, NumPy arrays, torch
// tensors: anything NumPy can read; converted to f32).
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <filesystem>
#include <string>
#include <vector>

#include "bindings.h"
#include "qkv/error.h"
#include "qkv/visualize.h"

namespace qkv::python {
namespace {

// One layer's weights as a tensor: qkv tensors as they are, anything else
// through numpy.ascontiguousarray(..., float32) (torch tensors detached first).
Tensor layer_tensor(nb::handle layer, size_t index) {
  if (nb::isinstance<Tensor>(layer)) return nb::cast<Tensor>(layer);
  try {
    nb::object array = nb::borrow(layer);
    if (nb::hasattr(array, "detach")) array = array.attr("detach")().attr("cpu")();
    array = nb::module_::import_("numpy").attr("ascontiguousarray")(array, "float32");
    return tensor_from_array(nb::cast<AnyArray>(array));
  } catch (const nb::python_error& e) {
    throw Error(detail::str("qkv.viz: layer ", index, " (", nb::inst_name(layer).c_str(),
                            ") is not an array of attention weights: ", e.what()));
  }
}

viz::AttentionView make_view(std::vector<std::string> tokens, const nb::sequence& layers,
                             std::string title) {
  viz::AttentionView view{.tokens = std::move(tokens), .title = std::move(title)};
  for (size_t i = 0; i < nb::len(layers); ++i) view.layers.push_back(layer_tensor(layers[i], i));
  return view;
}

}  // namespace

void bind_viz(nb::module_& m) {
  nb::module_ mod = m.def_submodule(
      "viz", "Attention heatmaps (PNG), an offline head-view page and bertviz's JSON.");
  using Path = std::filesystem::path;

  mod.def(
      "write_head_png",
      [](const Path& path, std::vector<std::string> tokens, const nb::sequence& layers,
         int64_t layer, int64_t head, int64_t cell, bool labels) {
        const viz::AttentionView view = make_view(std::move(tokens), layers, "");
        nb::gil_scoped_release release;
        viz::write_head_png(path.string(), view, layer, head, {.cell = cell, .labels = labels});
      },
      nb::arg("path"), nb::arg("tokens"), nb::arg("layers"), nb::arg("layer"), nb::arg("head"),
      nb::kw_only(), nb::arg("cell") = 0, nb::arg("labels") = true,
      "One head's T x T heatmap (white 0 to dark blue 1; rows are queries, columns keys) with "
      "the tokens along both axes. cell: pixels per weight (0 chooses from T).");
  mod.def(
      "write_grid_png",
      [](const Path& path, std::vector<std::string> tokens, const nb::sequence& layers,
         int64_t cell, bool labels, std::string title) {
        const viz::AttentionView view = make_view(std::move(tokens), layers, std::move(title));
        nb::gil_scoped_release release;
        viz::write_grid_png(path.string(), view, {.cell = cell, .labels = labels});
      },
      nb::arg("path"), nb::arg("tokens"), nb::arg("layers"), nb::kw_only(), nb::arg("cell") = 0,
      nb::arg("labels") = true, nb::arg("title") = "",
      "Every head of every layer as a grid of small heatmaps captioned 'L<layer> H<head>'; token "
      "labels when the cells are tall enough for a line of text.");
  mod.def(
      "write_html",
      [](const Path& path, std::vector<std::string> tokens, const nb::sequence& layers,
         std::string title) {
        const viz::AttentionView view = make_view(std::move(tokens), layers, std::move(title));
        nb::gil_scoped_release release;
        viz::write_html(path.string(), view);
      },
      nb::arg("path"), nb::arg("tokens"), nb::arg("layers"), nb::kw_only(), nb::arg("title") = "",
      "A self-contained page (works offline) with a bertviz-style head view: layer and head "
      "selectors, lines weighted by attention, hover a token for its row or column.");
  mod.def(
      "bertviz_json",
      [](std::vector<std::string> tokens, const nb::sequence& layers) {
        return viz::bertviz_json(make_view(std::move(tokens), layers, ""));
      },
      nb::arg("tokens"), nb::arg("layers"),
      "{'tokens': [...], 'attention': [layer][1][head][query][key]}: bertviz.head_view's "
      "arguments once each layer is made a tensor.");
  mod.def(
      "write_bertviz_json",
      [](const Path& path, std::vector<std::string> tokens, const nb::sequence& layers) {
        const viz::AttentionView view = make_view(std::move(tokens), layers, "");
        nb::gil_scoped_release release;
        viz::write_bertviz_json(path.string(), view);
      },
      nb::arg("path"), nb::arg("tokens"), nb::arg("layers"), "bertviz_json() written to `path`.");
}

}  // namespace qkv::python
