// Attention you can see: heatmaps (PNG), an offline HTML head view in the
// manner of bertviz, and bertviz's own JSON.
//
//   viz::AttentionView view{.tokens = {"T", "o", " ", "b", "e"},
//                           .layers = model.attention_maps(ids)};   // [H, T, T] each
//   viz::write_head_png("l0h3.png", view, 0, 3);
//   viz::write_grid_png("grid.png", view);
//   viz::write_html("attention.html", view);
//   viz::write_bertviz_json("attention.json", view);
//
// Every file is written to a temporary name beside its target and renamed
// into place, so a failure leaves no partial file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qkv/tensor.h"

namespace qkv::viz {

struct AttentionView {
  // UTF-8 labels, one per position. Bytes that are not UTF-8 (half a
  // character of a byte-level token) show as U+FFFD in the page and the JSON.
  std::vector<std::string> tokens;
  // One f32 [H, T, T] tensor per layer: rows are queries, columns keys, each
  // row a probability distribution (T = tokens.size()). bf16 / f16 and
  // strided tensors are accepted and converted.
  std::vector<Tensor> layers;
  std::string title;  // shown in the HTML page and the grid's caption

  // qkv::Error naming what is inconsistent (no tokens or layers, shapes that
  // differ from [H, T, T], a head count that changes between layers, a
  // weight outside [0, 1] or NaN). Every writer calls it first.
  void validate() const;
  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  int64_t num_heads() const;
};

struct PngOptions {
  // Pixels per attention cell, 1 to 256; 0 chooses from T (one head: 768 / T
  // within 2 to 32, raised to a text line of 11 while T <= 232; the grid:
  // 160 / T within 1 to 16).
  int64_t cell = 0;
  // Token labels along both axes, in a small bitmap font: printable ASCII as
  // itself, ' ' as an open box, "\n" "\t" "\r" as escapes, anything else as a
  // placeholder box, cut to 16 characters. Where cells are shorter than a
  // line, one head labels every n-th token and the grid leaves them out.
  bool labels = true;
};

// One head: a T x T heatmap (white = 0, dark = 1) with token labels.
void write_head_png(const std::string& path, const AttentionView& view, int64_t layer,
                    int64_t head, const PngOptions& options = {});
// Every head: a layers x heads grid of small heatmaps, labelled "L<i> H<j>".
void write_grid_png(const std::string& path, const AttentionView& view,
                    const PngOptions& options = {});
// A self-contained page (inline CSS and JavaScript, no network): the tokens
// in two columns with lines weighted by attention, layer and head selectors,
// hovering a token to show its row.
void write_html(const std::string& path, const AttentionView& view);
// {"tokens": [...], "attention": [layer][batch = 1][head][query][key]}: the
// arguments of bertviz.head_view(attention, tokens) once the attention lists
// are made tensors.
std::string bertviz_json(const AttentionView& view);
void write_bertviz_json(const std::string& path, const AttentionView& view);

}  // namespace qkv::viz
