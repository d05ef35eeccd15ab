// Attention you can see (qkv/visualize.h): the view's checks, the PNGs'
// sizes and pixels (decoded with stb_image), the page's data and escaping,
// bertviz's JSON read back with nlohmann, token labels in the bitmap font,
// and writes that leave nothing behind when they fail.
#include "qkv/visualize.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "qkv/error.h"
#include "viz/font.h"
#include "viz/raster.h"

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wpedantic"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

namespace qkv::viz {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("qkv_visualize_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_))
      names.push_back(e.path().filename().string());
    return names;
  }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

template <class F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// [H, T, T] with weights(h, q, k).
template <class F>
Tensor Map(int64_t heads, int64_t t, F&& weights) {
  std::vector<double> values;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t q = 0; q < t; ++q)
      for (int64_t k = 0; k < t; ++k) values.push_back(weights(h, q, k));
  return Tensor::from_values(values, {heads, t, t});
}

// Causal attention with a pattern that differs per layer and head: query q
// spreads its weight over keys 0..q in proportion to 1 + (k * (l + h + 1)) % 3.
AttentionView CausalView(int64_t layers, int64_t heads, std::vector<std::string> tokens) {
  AttentionView view{.tokens = std::move(tokens), .title = "causal"};
  const auto t = static_cast<int64_t>(view.tokens.size());
  for (int64_t l = 0; l < layers; ++l) {
    view.layers.push_back(Map(heads, t, [&](int64_t h, int64_t q, int64_t k) {
      if (k > q) return 0.0;
      double total = 0;
      for (int64_t j = 0; j <= q; ++j) total += 1 + (j * (l + h + 1)) % 3;
      return (1 + (k * (l + h + 1)) % 3) / total;
    }));
  }
  return view;
}

struct Png {
  int width = 0, height = 0;
  std::vector<Rgb> pixels;
  int count(Rgb colour) const {
    int n = 0;
    for (const Rgb& p : pixels) n += p == colour;
    return n;
  }
};

// Reads the IHDR by hand (the size a viewer will show), then decodes.
Png ReadPng(const std::string& path) {
  const std::string bytes = ReadFile(path);
  EXPECT_GE(bytes.size(), 33u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(bytes.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<uint8_t>(bytes[at + i]);
    return static_cast<int>(v);
  };
  Png png{.width = be32(16), .height = be32(20)};
  EXPECT_EQ(bytes[24], 8) << "bit depth";
  EXPECT_EQ(bytes[25], 2) << "colour type RGB";
  int w = 0, h = 0, channels = 0;
  uint8_t* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                        static_cast<int>(bytes.size()), &w, &h, &channels, 3);
  EXPECT_NE(data, nullptr) << stbi_failure_reason();
  if (data == nullptr) return png;
  EXPECT_EQ(w, png.width);
  EXPECT_EQ(h, png.height);
  for (int i = 0; i < w * h; ++i)
    png.pixels.push_back({data[3 * i], data[3 * i + 1], data[3 * i + 2]});
  stbi_image_free(data);
  return png;
}

// ---- AttentionView::validate ----

TEST(AttentionView, ValidatesShapesHeadsAndValues) {
  AttentionView ok = CausalView(2, 3, {"a", "b", "c"});
  EXPECT_NO_THROW(ok.validate());
  EXPECT_EQ(ok.num_layers(), 2);
  EXPECT_EQ(ok.num_heads(), 3);
  EXPECT_EQ(AttentionView{}.num_heads(), 0);

  EXPECT_EQ(ErrorOf([] { AttentionView{.tokens = {"a"}}.validate(); }), "AttentionView: no layers");
  EXPECT_EQ(ErrorOf([&] { AttentionView{.layers = ok.layers}.validate(); }),
            "AttentionView: no tokens");

  AttentionView wrong_t = ok;
  wrong_t.tokens.push_back("d");
  EXPECT_EQ(ErrorOf([&] { wrong_t.validate(); }),
            "AttentionView: layer 0 has shape [3, 3, 3]; expected [heads, 4, 4] for 4 tokens");

  AttentionView two_d = ok;
  two_d.layers[1] = Tensor::zeros({3, 3});
  EXPECT_EQ(ErrorOf([&] { two_d.validate(); }),
            "AttentionView: layer 1 has shape [3, 3]; expected [heads, 3, 3] for 3 tokens");

  AttentionView heads_change = ok;
  heads_change.layers[1] = CausalView(1, 2, ok.tokens).layers[0];
  EXPECT_EQ(ErrorOf([&] { heads_change.validate(); }),
            "AttentionView: layer 1 has 2 heads but layer 0 has 3");

  AttentionView no_heads = ok;
  no_heads.layers = {Tensor::zeros({0, 3, 3})};
  EXPECT_EQ(ErrorOf([&] { no_heads.validate(); }),
            "AttentionView: layer 0 has no heads (shape [0, 3, 3])");

  AttentionView nan = ok;
  nan.layers[1] = nan.layers[1].clone();
  nan.layers[1].data<float>()[1 * 9 + 2 * 3 + 1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(ErrorOf([&] { nan.validate(); }),
            "AttentionView: layer 1 head 1 query 2 key 1 has weight nan; attention weights are "
            "probabilities in [0, 1]");

  AttentionView too_big = ok;
  too_big.layers[0] = Tensor::full({3, 3, 3}, 1.5);
  EXPECT_NE(
      ErrorOf([&] { too_big.validate(); }).find("layer 0 head 0 query 0 key 0 has weight 1.5"),
      std::string::npos);

  AttentionView ints = ok;
  ints.layers[0] = Tensor::zeros({3, 3, 3}, DType::i32);
  EXPECT_EQ(ErrorOf([&] { ints.validate(); }),
            "AttentionView: layer 0 has dtype i32; attention weights are f32 (or bf16 / f16)");

  AttentionView undefined = ok;
  undefined.layers[1] = Tensor();
  EXPECT_EQ(ErrorOf([&] { undefined.validate(); }),
            "AttentionView: layer 1 is an undefined tensor");
}

TEST(AttentionView, AcceptsBf16AndStridedLayers) {
  AttentionView view = CausalView(1, 2, {"x", "y", "z", "w"});
  AttentionView transposed{.tokens = view.tokens,
                           .layers = {view.layers[0].transpose(1, 2).contiguous().transpose(1, 2)}};
  EXPECT_FALSE(transposed.layers[0].is_contiguous());
  EXPECT_EQ(bertviz_json(transposed), bertviz_json(view));
  AttentionView bf16{.tokens = view.tokens, .layers = {view.layers[0].to(DType::bf16)}};
  EXPECT_NO_THROW(bf16.validate());
}

// ---- the bitmap font ----

TEST(Font, LabelsShowWhitespaceControlsAndNonAscii) {
  const Glyph a = 'a' - 32, n = 'n' - 32, t = 't' - 32, backslash = '\\' - 32;
  EXPECT_EQ(label_glyphs("a", 16), std::vector<Glyph>{a});
  EXPECT_EQ(label_glyphs(" a", 16), (std::vector<Glyph>{kVisibleSpace, a}));
  EXPECT_EQ(label_glyphs("\n\t", 16), (std::vector<Glyph>{backslash, n, backslash, t}));
  EXPECT_EQ(label_glyphs(std::string("\x01\x7f", 2), 16),
            (std::vector<Glyph>{kPlaceholder, kPlaceholder}));
  // One placeholder per code point: e-acute (2 bytes), CJK (3), emoji (4).
  EXPECT_EQ(label_glyphs("\u00e9\u4e2d\U0001F600a", 16),
            (std::vector<Glyph>{kPlaceholder, kPlaceholder, kPlaceholder, a}));
  // Malformed: a lone continuation byte, a truncated sequence, 0xFF.
  EXPECT_EQ(label_glyphs("\x80", 16), std::vector<Glyph>{kPlaceholder});
  EXPECT_EQ(label_glyphs("\xe4\xb8"
                         "a",
                         16),
            (std::vector<Glyph>{kPlaceholder, kPlaceholder, a}));
  EXPECT_EQ(label_glyphs("\xff", 16), std::vector<Glyph>{kPlaceholder});
  EXPECT_TRUE(label_glyphs("", 16).empty());
  // Cut to the maximum with an ellipsis.
  const auto cut = label_glyphs("abcdefghij", 4);
  EXPECT_EQ(cut, (std::vector<Glyph>{a, 'b' - 32, 'c' - 32, kEllipsis}));
  EXPECT_EQ(label_glyphs("abcd", 4).size(), 4u);
}

TEST(Font, EveryVisibleGlyphHasInkAndTheyDiffer) {
  std::vector<std::string> bitmaps;
  for (int g = 0; g < kNumGlyphs; ++g) {
    std::string bits;
    for (int y = 0; y < kGlyphHeight; ++y)
      for (int x = 0; x < kGlyphWidth; ++x)
        bits += glyph_pixel(static_cast<Glyph>(g), x, y) ? '#' : '.';
    EXPECT_EQ(bits.find('#') == std::string::npos, g == 0) << "glyph " << g;
    bitmaps.push_back(bits);
  }
  std::sort(bitmaps.begin(), bitmaps.end());
  EXPECT_EQ(std::unique(bitmaps.begin(), bitmaps.end()), bitmaps.end()) << "two glyphs look alike";
}

TEST(Raster, ColourScaleRunsFromWhiteToDarkBlue) {
  EXPECT_EQ(weight_colour(0.0f), (Rgb{255, 255, 255}));
  EXPECT_EQ(weight_colour(0.5f), (Rgb{107, 174, 214}));
  EXPECT_EQ(weight_colour(1.0f), (Rgb{8, 48, 107}));
  EXPECT_EQ(weight_colour(2.0f), weight_colour(1.0f));
  EXPECT_EQ(weight_colour(-1.0f), weight_colour(0.0f));
  int previous = 3 * 255 + 1;
  for (int i = 0; i <= 100; ++i) {
    const Rgb c = weight_colour(static_cast<float>(i) / 100);
    const int brightness = c.r + c.g + c.b;
    EXPECT_LT(brightness, previous) << i;
    previous = brightness;
  }
}

// ---- PNGs ----

TEST(HeadPng, SizeFollowsTheCellAndEveryWeightOneCellIsDark) {
  TempDir dir;
  const int64_t t = 16;
  std::vector<std::string> tokens;
  for (int64_t i = 0; i < t; ++i) tokens.push_back("tok" + std::to_string(i));
  // Head 0: every query on key 0 (16 cells of weight 1); head 1: uniform.
  AttentionView view{.tokens = tokens, .layers = {Map(2, t, [&](int64_t h, int64_t, int64_t k) {
                                         return h == 0 ? (k == 0 ? 1.0 : 0.0) : 1.0 / t;
                                       })}};
  const Rgb dark = weight_colour(1.0f);
  for (const int64_t cell : {10, 12}) {
    write_head_png(dir.file("h0.png"), view, 0, 0, {.cell = cell, .labels = false});
    write_head_png(dir.file("h1.png"), view, 0, 1, {.cell = cell, .labels = false});
    const Png h0 = ReadPng(dir.file("h0.png")), h1 = ReadPng(dir.file("h1.png"));
    EXPECT_EQ(h0.width, h1.width);
    EXPECT_EQ(h0.height, h1.height);
    EXPECT_EQ(h0.count(dark) - h1.count(dark), t * cell * cell) << "cell " << cell;
    EXPECT_EQ(h1.count(weight_colour(1.0f / t)), t * t * cell * cell) << "cell " << cell;
  }
  // Without labels the image grows by exactly the heatmap's growth.
  write_head_png(dir.file("a.png"), view, 0, 0, {.cell = 10, .labels = false});
  write_head_png(dir.file("b.png"), view, 0, 0, {.cell = 12, .labels = false});
  const Png a = ReadPng(dir.file("a.png")), b = ReadPng(dir.file("b.png"));
  EXPECT_EQ(b.width - a.width, 2 * t);
  EXPECT_EQ(b.height - a.height, 2 * t);
  // Labels add room on the left and the top, and ink.
  write_head_png(dir.file("c.png"), view, 0, 0, {.cell = 10, .labels = true});
  const Png c = ReadPng(dir.file("c.png"));
  EXPECT_GT(c.width, a.width);
  EXPECT_GT(c.height, a.height);
  EXPECT_GT(c.count(kInk), a.count(kInk) + 2 * 16 * 10);  // 16 labels twice, >= 10 ink pixels each
  // The default cell gives every token a line of its own.
  write_head_png(dir.file("d.png"), view, 0, 1);
  EXPECT_GE(ReadPng(dir.file("d.png")).count(weight_colour(1.0f / t)),
            t * t * kLineHeight * kLineHeight);
}

TEST(HeadPng, RejectsLayersHeadsAndCellsOutOfRange) {
  TempDir dir;
  const AttentionView view = CausalView(2, 3, {"a", "b"});
  const std::string path = dir.file("x.png");
  EXPECT_EQ(ErrorOf([&] { write_head_png(path, view, 2, 0); }),
            "viz: layer 2 out of range (the view has 2 layers)");
  EXPECT_EQ(ErrorOf([&] { write_head_png(path, view, 0, -1); }),
            "viz: head -1 out of range (the view has 3 heads)");
  EXPECT_EQ(ErrorOf([&] { write_head_png(path, view, 0, 0, {.cell = -1}); }),
            "write_head_png: cell size -1 is out of range (0 to choose, or 1 to 256 pixels)");
  EXPECT_EQ(ErrorOf([&] { write_grid_png(path, view, {.cell = 1000}); }),
            "write_grid_png: cell size 1000 is out of range (0 to choose, or 1 to 256 pixels)");
  EXPECT_TRUE(dir.entries().empty());
}

TEST(GridPng, HoldsEveryHeadOfEveryLayer) {
  TempDir dir;
  const int64_t layers = 2, heads = 3, t = 5, cell = 6;
  // Head (l, h) puts weight 1 on key (l + h) % t for each query: t dark cells each.
  AttentionView view{.tokens = {"a", "b", "c", "d", "e"}};
  for (int64_t l = 0; l < layers; ++l) {
    view.layers.push_back(
        Map(heads, t, [&](int64_t h, int64_t, int64_t k) { return k == (l + h) % t ? 1.0 : 0.0; }));
  }
  write_grid_png(dir.file("grid.png"), view, {.cell = cell});
  AttentionView empty = view;
  for (auto& layer : empty.layers) layer = Tensor::full(layer.shape(), 0.2);
  write_grid_png(dir.file("empty.png"), empty, {.cell = cell});
  const Png grid = ReadPng(dir.file("grid.png")), none = ReadPng(dir.file("empty.png"));
  EXPECT_EQ(grid.width, none.width);
  EXPECT_EQ(grid.height, none.height);
  EXPECT_GE(grid.width, heads * t * cell);
  EXPECT_GE(grid.height, layers * t * cell);
  const Rgb dark = weight_colour(1.0f);
  EXPECT_EQ(grid.count(dark) - none.count(dark), layers * heads * t * cell * cell);
  // The colour bar may hold a row of that colour too.
  constexpr int kBarRow = 12;
  EXPECT_NEAR(none.count(weight_colour(0.2f)), layers * heads * t * t * cell * cell, kBarRow);
  // Default cells (160 / t pixels, at most 16), labelled: still every head.
  write_grid_png(dir.file("default.png"), empty);
  const Png d = ReadPng(dir.file("default.png"));
  const int64_t default_cell = 16;
  EXPECT_NEAR(d.count(weight_colour(0.2f)), layers * heads * t * t * default_cell * default_cell,
              kBarRow);
}

// ---- HTML ----

TEST(Html, EmbedsTheDataAndEscapesTokens) {
  TempDir dir;
  const std::string hostile = "</script><script>alert(1)</script>";
  AttentionView view =
      CausalView(2, 2, {"<b>", hostile, "a&b", "\"q\"", "\u00e9\U0001F600", "\xff"});
  view.title = "x</title><script>alert(2)</script>";
  write_html(dir.file("a.html"), view);
  const std::string page = ReadFile(dir.file("a.html"));

  EXPECT_EQ(page.rfind("<!DOCTYPE html>", 0), 0u);
  // The only script elements are the page's own two.
  size_t closes = 0;
  for (size_t at = page.find("</script>"); at != std::string::npos;
       at = page.find("</script>", at + 1)) {
    ++closes;
  }
  EXPECT_EQ(closes, 2u);
  EXPECT_EQ(page.find("alert(1)</"), std::string::npos);
  EXPECT_NE(page.find("\"\\u003c/script\\u003e\\u003cscript\\u003ealert(1)\\u003c/script\\u003e\""),
            std::string::npos);
  EXPECT_NE(page.find("\"\\u003cb\\u003e\""), std::string::npos);
  EXPECT_NE(page.find("\"a\\u0026b\""), std::string::npos);
  EXPECT_NE(page.find("\"\\\"q\\\"\""), std::string::npos);
  EXPECT_NE(page.find("\"\u00e9\U0001F600\""), std::string::npos);
  EXPECT_NE(page.find("\"\xef\xbf\xbd\""), std::string::npos) << "malformed UTF-8 as U+FFFD";
  EXPECT_NE(page.find("<title>x&lt;/title&gt;&lt;script&gt;alert(2)&lt;/script&gt;</title>"),
            std::string::npos);

  // The weights: layer 1 head 0 row 2 of the causal pattern, rounded to 4 decimals.
  const std::string data = page.substr(page.find("id=\"qkv-data\">"));
  const auto json = nlohmann::json::parse(
      data.substr(data.find('>') + 1, data.find("</script>") - data.find('>') - 1));
  EXPECT_EQ(json["heads"], 2);
  ASSERT_EQ(json["attention"].size(), 2u);
  ASSERT_EQ(json["attention"][1].size(), 2u);
  const auto& head = json["attention"][1][0];
  ASSERT_EQ(head.size(), 36u);
  const float* expected = view.layers[1].data<float>();
  for (size_t i = 0; i < 36; ++i) EXPECT_NEAR(head[i].get<double>(), expected[i], 5e-5) << i;
  EXPECT_EQ(json["tokens"][1], hostile);
  EXPECT_EQ(json["title"], view.title);
  // No network: nothing is fetched or linked.
  for (const char* needle : {"http://", "https://", "src=", "<link", "import("}) {
    EXPECT_EQ(page.find(needle), std::string::npos) << needle;
  }
}

// ---- bertviz JSON ----

TEST(BertvizJson, RoundTripsTokensAndExactWeights) {
  TempDir dir;
  AttentionView view = CausalView(3, 2, {" The", "\n", "\u00e9", "</script>", "\x80"});
  // Weights that need every digit of a float.
  view.layers[2] = view.layers[2].clone();
  view.layers[2].data<float>()[0] = 0.99999994f;
  view.layers[2].data<float>()[1] = 1e-7f;
  write_bertviz_json(dir.file("a.json"), view);
  const std::string text = ReadFile(dir.file("a.json"));
  EXPECT_EQ(text, bertviz_json(view));
  const auto json = nlohmann::json::parse(text);
  EXPECT_EQ(json.size(), 2u);
  EXPECT_EQ(json["tokens"],
            (std::vector<std::string>{" The", "\n", "\u00e9", "</script>", "\xef\xbf\xbd"}));
  const auto& attention = json["attention"];
  ASSERT_EQ(attention.size(), 3u);
  for (int64_t l = 0; l < 3; ++l) {
    ASSERT_EQ(attention[l].size(), 1u) << "batch";
    ASSERT_EQ(attention[l][0].size(), 2u) << "heads";
    const float* w = view.layers[static_cast<size_t>(l)].data<float>();
    for (int64_t h = 0; h < 2; ++h) {
      ASSERT_EQ(attention[l][0][h].size(), 5u);
      for (int64_t q = 0; q < 5; ++q) {
        ASSERT_EQ(attention[l][0][h][q].size(), 5u);
        for (int64_t k = 0; k < 5; ++k) {
          EXPECT_EQ(attention[l][0][h][q][k].get<float>(), w[(h * 5 + q) * 5 + k])
              << l << " " << h << " " << q << " " << k;
        }
      }
    }
  }
}

// ---- atomic writes ----

TEST(Writes, FailuresLeaveNoFileBehind) {
  TempDir dir;
  const AttentionView view = CausalView(1, 2, {"a", "b", "c"});
  const std::string missing = dir.file("no/such/dir/out");
  for (const auto& write : std::vector<std::function<void(const std::string&)>>{
           [&](const std::string& p) { write_head_png(p + ".png", view, 0, 1); },
           [&](const std::string& p) { write_grid_png(p + ".png", view); },
           [&](const std::string& p) { write_html(p + ".html", view); },
           [&](const std::string& p) { write_bertviz_json(p + ".json", view); }}) {
    // A directory that does not exist.
    const std::string error = ErrorOf([&] { write(missing); });
    EXPECT_NE(error.find("cannot create"), std::string::npos) << error;
    EXPECT_NE(error.find("no/such/dir/out"), std::string::npos) << error;
    // A target that is a directory: the rename fails after the bytes are
    // written, and the temporary file goes.
    fs::create_directories(dir.file("taken.png/x"));
    fs::create_directories(dir.file("taken.html/x"));
    fs::create_directories(dir.file("taken.json/x"));
    EXPECT_NE(ErrorOf([&] { write(dir.file("taken")); }).find("renaming"), std::string::npos);
    // An invalid view: nothing is opened, the old file stays.
    std::ofstream(dir.file("old.html")) << "old";
    AttentionView bad = view;
    bad.tokens.pop_back();
    EXPECT_NE(
        ErrorOf([&] { write_html(dir.file("old.html"), bad); }).find("expected [heads, 2, 2]"),
        std::string::npos);
    EXPECT_EQ(ReadFile(dir.file("old.html")), "old");
    auto names = dir.entries();
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names,
              (std::vector<std::string>{"old.html", "taken.html", "taken.json", "taken.png"}));
  }
}

}  // namespace
}  // namespace qkv::viz
