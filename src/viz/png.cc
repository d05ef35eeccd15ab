// The attention heatmaps as PNG: one head with its token labels, or every
// head of every layer in a grid.
#include <algorithm>
#include <string>
#include <vector>

#include "qkv/error.h"
#include "qkv/visualize.h"
#include "viz/font.h"
#include "viz/raster.h"
#include "viz/weights.h"

namespace qkv::viz {
namespace {

constexpr int kPad = 10;       // around the whole image
constexpr int kGap = 6;        // between labels and the heatmap
constexpr int kTileGap = 14;   // between the grid's heatmaps
constexpr int kBarWidth = 12;  // the colour bar
constexpr int kMinBarHeight = 64;
constexpr size_t kMaxLabelGlyphs = 16;

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

// Labels are drawn twice as large once a cell can hold a double-size line.
int label_scale(int cell) {
  return cell >= 2 * kLineHeight ? 2 : 1;
}

std::vector<std::vector<Glyph>> token_labels(const AttentionView& view) {
  std::vector<std::vector<Glyph>> labels;
  labels.reserve(view.tokens.size());
  for (const std::string& token : view.tokens)
    labels.push_back(label_glyphs(token, kMaxLabelGlyphs));
  return labels;
}

int widest(const std::vector<std::vector<Glyph>>& labels, int scale) {
  size_t n = 0;
  for (const auto& label : labels) n = std::max(n, label.size());
  return text_width(n, scale);
}

int checked_cell(int64_t cell, const char* what) {
  QKV_CHECK(cell >= 0 && cell <= 256, what, ": cell size ", cell,
            " is out of range (0 to choose, or 1 to 256 pixels)");
  return static_cast<int>(cell);
}

void draw_heatmap(Image& image, int x, int y, const float* w, int64_t t, int cell) {
  for (int64_t q = 0; q < t; ++q) {
    for (int64_t k = 0; k < t; ++k) {
      image.fill(x + static_cast<int>(k) * cell, y + static_cast<int>(q) * cell, cell, cell,
                 weight_colour(w[q * t + k]));
    }
  }
  const int n = static_cast<int>(t) * cell;
  image.frame(x - 1, y - 1, n + 2, n + 2, kFrame);
}

// The scale from 1 (top, dark) to 0 (bottom, white), ticked at 1, 0.5 and 0.
void draw_colour_bar(Image& image, int x, int y, int height) {
  for (int row = 0; row < height; ++row) {
    const float w = 1.0f - static_cast<float>(row) / static_cast<float>(height - 1);
    image.fill(x, y + row, kBarWidth, 1, weight_colour(w));
  }
  image.frame(x - 1, y - 1, kBarWidth + 2, height + 2, kFrame);
  const int tx = x + kBarWidth + 4;
  image.text(tx, y, text_glyphs("1"), 1, kInk);
  image.text(tx, y + height / 2 - kGlyphHeight / 2, text_glyphs("0.5"), 1, kInk);
  image.text(tx, y + height - kGlyphHeight + 2, text_glyphs("0"), 1, kInk);
}
constexpr int kColourBarWidth = kBarWidth + 4 + 3 * kGlyphAdvance;  // bar and ticks

// Query labels right-aligned against the heatmap's left edge x, key labels
// reading upwards from its top edge y; every `stride`-th token when the
// cells are too small for a line each.
void draw_labels(Image& image, int x, int y, const std::vector<std::vector<Glyph>>& labels,
                 int cell, bool left, bool top) {
  const int scale = label_scale(cell);
  const int stride = ceil_div(kLineHeight * scale, cell);
  const int centre = cell / 2 - kGlyphHeight * scale / 2;
  for (size_t i = 0; i < labels.size(); i += static_cast<size_t>(stride)) {
    const int offset = static_cast<int>(i) * cell + centre;
    if (left) {
      image.text(x - kGap - text_width(labels[i].size(), scale), y + offset, labels[i], scale,
                 kInk);
    }
    if (top) image.text_up(x + offset, y - kGap, labels[i], scale, kInk);
  }
}

}  // namespace

void write_head_png(const std::string& path, const AttentionView& view, int64_t layer, int64_t head,
                    const PngOptions& options) {
  const Weights weights(view);
  const float* w = weights.head(layer, head);
  const int64_t t = weights.tokens();
  // About 768 pixels across; at least a text line per row while that stays
  // within 2560 pixels.
  int cell = checked_cell(options.cell, "write_head_png");
  if (cell == 0) {
    cell = static_cast<int>(std::clamp<int64_t>(768 / t, 2, 32));
    if (options.labels && t * kLineHeight <= 2560) cell = std::max(cell, kLineHeight);
  }
  const int n = static_cast<int>(t) * cell;
  const auto labels = token_labels(view);
  const int extent = options.labels ? widest(labels, label_scale(cell)) + kGap : 0;

  const auto title = text_glyphs(detail::str("layer ", layer, " head ", head));
  const auto axes = text_glyphs("rows: queries, columns: keys");
  const int x0 = kPad + extent;
  const int y0 = kPad + 2 * kLineHeight + 4 + kLineHeight + 6 + extent;
  const int bar_x = x0 + n + 16;
  const int bar_height = std::max(n, kMinBarHeight);
  const int width =
      std::max({bar_x + kColourBarWidth + kPad, kPad + text_width(title.size(), 2) + kPad,
                kPad + text_width(axes.size(), 1) + kPad});
  Image image(width, y0 + bar_height + kPad);

  image.text(kPad, kPad, title, 2, kInk);
  image.text(kPad, kPad + 2 * kLineHeight + 4, axes, 1, kFrame);
  draw_heatmap(image, x0, y0, w, t, cell);
  if (options.labels) draw_labels(image, x0, y0, labels, cell, true, true);
  draw_colour_bar(image, bar_x, y0, bar_height);
  write_png(path, image);
}

void write_grid_png(const std::string& path, const AttentionView& view, const PngOptions& options) {
  const Weights weights(view);
  const int64_t t = weights.tokens(), num_layers = weights.layers(), num_heads = weights.heads();
  int cell = checked_cell(options.cell, "write_grid_png");
  if (cell == 0) cell = static_cast<int>(std::clamp<int64_t>(160 / t, 1, 16));
  const int tile = static_cast<int>(t) * cell;
  // Token labels only where every row gets its own; they run along the left
  // of each row of heatmaps and above the first.
  const bool labelled = options.labels && cell >= kLineHeight;
  const auto labels = token_labels(view);
  const int extent = labelled ? widest(labels, label_scale(cell)) + kGap : 0;

  // The title is prose: its spaces stay blank.
  auto title = label_glyphs(view.title.empty() ? "attention" : view.title, 60);
  std::replace(title.begin(), title.end(), kVisibleSpace, text_glyphs(" ")[0]);
  const auto subtitle =
      text_glyphs(detail::str(num_layers, " layers x ", num_heads, " heads, ", t, " tokens"));
  constexpr int kCaption = 3 + kLineHeight;  // "L0 H3" under each heatmap
  const auto caption = [](int64_t l, int64_t h) {
    return text_glyphs(detail::str("L", l, " H", h));
  };
  const int caption_width = text_width(caption(num_layers - 1, num_heads - 1).size(), 1);
  const int pitch_x = std::max(tile, caption_width) + kTileGap;
  const int pitch_y = tile + kCaption + kTileGap;
  const int x0 = kPad + extent;
  const int y0 = kPad + 2 * kLineHeight + 4 + kLineHeight + 8 + extent;
  const int grid_w = static_cast<int>(num_heads) * pitch_x - kTileGap;
  const int grid_h = static_cast<int>(num_layers) * pitch_y - kTileGap;
  const int bar_x = x0 + grid_w + 16;
  const int bar_height = std::max(std::min(grid_h, 256), kMinBarHeight);
  const int width =
      std::max({bar_x + kColourBarWidth + kPad, kPad + text_width(title.size(), 2) + kPad,
                kPad + text_width(subtitle.size(), 1) + kPad});
  Image image(width, y0 + std::max(grid_h, bar_height) + kPad);

  image.text(kPad, kPad, title, 2, kInk);
  image.text(kPad, kPad + 2 * kLineHeight + 4, subtitle, 1, kFrame);
  for (int64_t l = 0; l < num_layers; ++l) {
    const int y = y0 + static_cast<int>(l) * pitch_y;
    for (int64_t h = 0; h < num_heads; ++h) {
      const int x = x0 + static_cast<int>(h) * pitch_x;
      draw_heatmap(image, x, y, weights.head(l, h), t, cell);
      if (labelled && l == 0) draw_labels(image, x, y, labels, cell, false, true);
      image.text(x, y + tile + 3, caption(l, h), 1, kInk);
    }
    if (labelled) draw_labels(image, x0, y, labels, cell, true, false);
  }
  draw_colour_bar(image, bar_x, y0, bar_height);
  write_png(path, image);
}

}  // namespace qkv::viz
