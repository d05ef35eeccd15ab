#include "viz/raster.h"

#include <algorithm>
#include <cmath>

#include "io/file.h"
#include "qkv/error.h"

// stb_image_write compiled here and only here: static, so libqkv exports none
// of its symbols, and without its stdio half (we encode to memory and write
// the file ourselves, atomically).
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wpedantic"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace qkv::viz {

Rgb weight_colour(float w) {
  // Three stops of matplotlib's Blues: #ffffff, #6baed6, #08306b.
  constexpr float kStops[3][3] = {{255, 255, 255}, {107, 174, 214}, {8, 48, 107}};
  const float t = std::isnan(w) ? 0.0f : std::clamp(w, 0.0f, 1.0f) * 2.0f;
  const int i = t >= 1.0f ? 1 : 0;
  const float f = t - static_cast<float>(i);
  auto mix = [&](int c) {
    return static_cast<uint8_t>(std::lround(kStops[i][c] + (kStops[i + 1][c] - kStops[i][c]) * f));
  };
  return {mix(0), mix(1), mix(2)};
}

Image::Image(int width, int height, Rgb background) : width_(width), height_(height) {
  constexpr int64_t kMaxPixels = int64_t{1} << 26;
  QKV_CHECK(width > 0 && height > 0 && static_cast<int64_t>(width) * height <= kMaxPixels,
            "viz: an image of ", width, " x ", height, " pixels is empty or larger than ",
            kMaxPixels, " pixels (choose a smaller cell size)");
  pixels_.resize(static_cast<size_t>(width) * static_cast<size_t>(height) * 3);
  fill(0, 0, width, height, background);
}

Rgb Image::at(int x, int y) const {
  const size_t i =
      (static_cast<size_t>(y) * static_cast<size_t>(width_) + static_cast<size_t>(x)) * 3;
  return {pixels_[i], pixels_[i + 1], pixels_[i + 2]};
}

void Image::fill(int x, int y, int w, int h, Rgb colour) {
  const int x0 = std::max(x, 0), x1 = std::min(x + w, width_);
  const int y0 = std::max(y, 0), y1 = std::min(y + h, height_);
  for (int row = y0; row < y1; ++row) {
    uint8_t* p = &pixels_[(static_cast<size_t>(row) * static_cast<size_t>(width_) +
                           static_cast<size_t>(x0)) *
                          3];
    for (int col = x0; col < x1; ++col, p += 3) {
      p[0] = colour.r;
      p[1] = colour.g;
      p[2] = colour.b;
    }
  }
}

void Image::frame(int x, int y, int w, int h, Rgb colour) {
  fill(x, y, w, 1, colour);
  fill(x, y + h - 1, w, 1, colour);
  fill(x, y, 1, h, colour);
  fill(x + w - 1, y, 1, h, colour);
}

void Image::text(int x, int y, std::span<const Glyph> glyphs, int scale, Rgb colour) {
  for (size_t i = 0; i < glyphs.size(); ++i) {
    const int gx = x + static_cast<int>(i) * kGlyphAdvance * scale;
    for (int py = 0; py < kGlyphHeight; ++py) {
      for (int px = 0; px < kGlyphWidth; ++px) {
        if (glyph_pixel(glyphs[i], px, py))
          fill(gx + px * scale, y + py * scale, scale, scale, colour);
      }
    }
  }
}

void Image::text_up(int x, int y, std::span<const Glyph> glyphs, int scale, Rgb colour) {
  // Glyph pixel (px, py) of glyph i sits at distance i * advance + px up
  // from y, and py to the right of x.
  for (size_t i = 0; i < glyphs.size(); ++i) {
    const int up = static_cast<int>(i) * kGlyphAdvance * scale;
    for (int py = 0; py < kGlyphHeight; ++py) {
      for (int px = 0; px < kGlyphWidth; ++px) {
        if (glyph_pixel(glyphs[i], px, py)) {
          fill(x + py * scale, y - (up + (px + 1) * scale), scale, scale, colour);
        }
      }
    }
  }
}

std::vector<uint8_t> Image::encode_png() const {
  std::vector<uint8_t> out;
  auto append = [](void* context, void* data, int size) {
    auto* bytes = static_cast<std::vector<uint8_t>*>(context);
    const auto* p = static_cast<const uint8_t*>(data);
    bytes->insert(bytes->end(), p, p + size);
  };
  const int ok =
      stbi_write_png_to_func(append, &out, width_, height_, 3, pixels_.data(), width_ * 3);
  QKV_CHECK(ok != 0, "viz: PNG encoding of a ", width_, " x ", height_, " image failed");
  return out;
}

int text_width(size_t glyphs, int scale) {
  return glyphs == 0 ? 0 : (static_cast<int>(glyphs) * kGlyphAdvance - 1) * scale;
}

void write_png(const std::string& path, const Image& image) {
  const std::vector<uint8_t> bytes = image.encode_png();
  io::write_file_atomically(path, bytes);
}

}  // namespace qkv::viz
