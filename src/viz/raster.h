// An RGB canvas for the attention PNGs: rectangles, the heatmap colour scale,
// text in the font of font.h (across or rotated to read upwards), and PNG
// encoding. Internal to src/viz.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "viz/font.h"

namespace qkv::viz {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb&) const = default;
};

inline constexpr Rgb kWhite{255, 255, 255};
inline constexpr Rgb kInk{34, 34, 34};
inline constexpr Rgb kFrame{160, 160, 160};

// The heatmap scale: white at 0 through a light blue to a dark blue at 1
// (the ends of matplotlib's "Blues"); values outside [0, 1] are clamped.
Rgb weight_colour(float w);

class Image {
 public:
  Image(int width, int height, Rgb background = kWhite);
  int width() const { return width_; }
  int height() const { return height_; }

  Rgb at(int x, int y) const;
  // Clipped to the image.
  void fill(int x, int y, int w, int h, Rgb colour);
  void frame(int x, int y, int w, int h, Rgb colour);  // a 1-pixel outline

  // Glyphs left to right from (x, y), the top-left of the first glyph box,
  // each font pixel a scale x scale square.
  void text(int x, int y, std::span<const Glyph> glyphs, int scale, Rgb colour);
  // Glyphs rotated a quarter turn anticlockwise, reading upwards: the
  // baseline runs up the image, (x, y) is the bottom-left corner of the
  // first glyph box (its top row at column x).
  void text_up(int x, int y, std::span<const Glyph> glyphs, int scale, Rgb colour);

  // 8-bit RGB PNG bytes (stb_image_write).
  std::vector<uint8_t> encode_png() const;

 private:
  int width_, height_;
  std::vector<uint8_t> pixels_;  // [height, width, 3]
};

// The width in pixels of `glyphs` drawn at `scale` (no trailing gap).
int text_width(size_t glyphs, int scale);

// Encodes `image` and writes it to `path` atomically.
void write_png(const std::string& path, const Image& image);

}  // namespace qkv::viz
