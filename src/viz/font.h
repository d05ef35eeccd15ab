// A small bitmap font of qkv's own for the token labels and captions of the
// attention PNGs: printable ASCII plus three symbols (a visible space, a
// placeholder for what ASCII cannot show, an ellipsis). Internal to src/viz.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace qkv::viz {

// Each glyph is 5 x 9 pixels: rows 0..6 stand on the baseline, rows 7..8 hold
// descenders (g, j, p, q, y, _). Text advances 6 pixels per glyph and 11 per
// line, times the scale it is drawn at.
inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 9;
inline constexpr int kGlyphAdvance = 6;
inline constexpr int kLineHeight = 11;

// A glyph index: 0..94 are ASCII 32..126; the symbols follow.
using Glyph = uint8_t;
inline constexpr Glyph kVisibleSpace = 95;  // an open box, for ' '
inline constexpr Glyph kPlaceholder = 96;   // an inverted '?' in a box
inline constexpr Glyph kEllipsis = 97;
inline constexpr int kNumGlyphs = 98;

// Whether pixel (x, y) of `glyph` is ink (0 <= x < kGlyphWidth, 0 <= y < kGlyphHeight).
bool glyph_pixel(Glyph glyph, int x, int y);

// Plain ASCII text as glyphs (anything else becomes kPlaceholder): for
// captions the library writes itself, such as "layer 0 head 3".
std::vector<Glyph> text_glyphs(std::string_view ascii);

// A token as glyphs a reader can tell apart: printable ASCII as itself, ' '
// as kVisibleSpace, '\n' '\t' '\r' as the two characters of their escape,
// any other control character and every non-ASCII code point (or byte of
// malformed UTF-8) as one kPlaceholder. Longer than `max_glyphs`, the label
// is cut to max_glyphs - 1 glyphs and a kEllipsis.
std::vector<Glyph> label_glyphs(std::string_view utf8, size_t max_glyphs);

}  // namespace qkv::viz
