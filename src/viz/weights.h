// The attention weights of a validated AttentionView as contiguous f32, and
// the formatting and file writing the JSON and HTML writers share.
// Internal to src/viz.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "qkv/visualize.h"

namespace qkv::viz {

class Weights {
 public:
  // Validates `view` (AttentionView::validate) and gathers its layers.
  explicit Weights(const AttentionView& view);

  int64_t layers() const { return static_cast<int64_t>(maps_.size()); }
  int64_t heads() const { return heads_; }
  int64_t tokens() const { return tokens_; }
  // head(l, h)[q * tokens() + k]: how much query q attends to key k.
  const float* head(int64_t layer, int64_t head) const;

 private:
  std::vector<Tensor> maps_;  // contiguous f32 [H, T, T], one per layer
  int64_t heads_ = 0, tokens_ = 0;
};

// The shortest decimal that reads back as exactly `v` ("0.25", "1e-07").
void append_float(std::string& out, float v);
// `v` rounded to 4 decimals, trailing zeros dropped ("0.1235", "0", "1"):
// enough for opacities and colours, a third the size of append_float.
void append_rounded(std::string& out, float v);

// `s` as a JSON string literal. Malformed UTF-8 becomes U+FFFD; '<', '>'
// and '&' are written \u003c, \u003e and \u0026, so the literal can sit
// inside a <script> element without ending it.
std::string json_string(std::string_view s);

// Writes `text` to `path` atomically (io::write_file_atomically).
void write_text_file(const std::string& path, std::string_view text);

}  // namespace qkv::viz
