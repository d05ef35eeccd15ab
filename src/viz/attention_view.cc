// AttentionView's checks, the gathered weights, and bertviz's JSON.
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>

#include "io/file.h"
#include "qkv/error.h"
#include "qkv/visualize.h"
#include "viz/weights.h"

namespace qkv::viz {
namespace {

// Softmax rounding can put a weight a few ulp past 1; anything further is
// not a probability.
constexpr float kSlack = 1e-3f;

void check_finite_probabilities(const Tensor& map, int64_t layer) {
  const int64_t t = map.size(1);
  const float* w = map.data<float>();
  for (int64_t i = 0; i < map.numel(); ++i) {
    QKV_CHECK(std::isfinite(w[i]) && w[i] >= -kSlack && w[i] <= 1.0f + kSlack,
              "AttentionView: layer ", layer, " head ", i / (t * t), " query ", i / t % t, " key ",
              i % t, " has weight ", w[i], "; attention weights are probabilities in [0, 1]");
  }
}

// layers[l] as contiguous f32, after checking its shape against the view.
Tensor gather_layer(const AttentionView& view, int64_t l, int64_t heads) {
  const Tensor& map = view.layers[static_cast<size_t>(l)];
  const auto t = static_cast<int64_t>(view.tokens.size());
  QKV_CHECK(map.defined(), "AttentionView: layer ", l, " is an undefined tensor");
  QKV_CHECK(map.dtype() == DType::f32 || map.dtype() == DType::bf16 || map.dtype() == DType::f16,
            "AttentionView: layer ", l, " has dtype ", dtype_name(map.dtype()),
            "; attention weights are f32 (or bf16 / f16)");
  QKV_CHECK(map.dim() == 3 && map.size(1) == t && map.size(2) == t, "AttentionView: layer ", l,
            " has shape ", shape_string(map.shape()), "; expected [heads, ", t, ", ", t, "] for ",
            t, " tokens");
  QKV_CHECK(map.size(0) == heads, "AttentionView: layer ", l, " has ", map.size(0),
            " heads but layer 0 has ", heads);
  Tensor f32 = map.to(DType::f32).contiguous();
  check_finite_probabilities(f32, l);
  return f32;
}

}  // namespace

int64_t AttentionView::num_heads() const {
  return layers.empty() || !layers[0].defined() || layers[0].dim() < 1 ? 0 : layers[0].size(0);
}

void AttentionView::validate() const {
  Weights{*this};
}

Weights::Weights(const AttentionView& view) {
  QKV_CHECK(!view.tokens.empty(), "AttentionView: no tokens");
  QKV_CHECK(!view.layers.empty(), "AttentionView: no layers");
  tokens_ = static_cast<int64_t>(view.tokens.size());
  heads_ = view.num_heads();
  QKV_CHECK(heads_ > 0, "AttentionView: layer 0 has no heads (shape ",
            view.layers[0].defined() ? shape_string(view.layers[0].shape()) : "undefined", ")");
  for (int64_t l = 0; l < view.num_layers(); ++l) maps_.push_back(gather_layer(view, l, heads_));
}

const float* Weights::head(int64_t layer, int64_t head) const {
  QKV_CHECK(layer >= 0 && layer < layers(), "viz: layer ", layer, " out of range (the view has ",
            layers(), " layers)");
  QKV_CHECK(head >= 0 && head < heads_, "viz: head ", head, " out of range (the view has ", heads_,
            " heads)");
  return maps_[static_cast<size_t>(layer)].data<float>() + head * tokens_ * tokens_;
}

void append_float(std::string& out, float v) {
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof buf, v).ptr;
  out.append(buf, end);
}

void append_rounded(std::string& out, float v) {
  char buf[32];
  const auto end =
      std::to_chars(buf, buf + sizeof buf, std::round(v * 1e4f) / 1e4f, std::chars_format::fixed, 4)
          .ptr;
  std::string_view s(buf, static_cast<size_t>(end - buf));
  while (s.back() == '0') s.remove_suffix(1);
  if (s.back() == '.') s.remove_suffix(1);
  if (s == "-0") s = "0";
  out.append(s);
}

std::string json_string(std::string_view s) {
  const std::string dumped =
      nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out;
  out.reserve(dumped.size());
  for (const char c : dumped) {
    if (c == '<') {
      out += "\\u003c";
    } else if (c == '>') {
      out += "\\u003e";
    } else if (c == '&') {
      out += "\\u0026";
    } else {
      out += c;
    }
  }
  return out;
}

std::string bertviz_json(const AttentionView& view) {
  const Weights weights(view);
  const int64_t t = weights.tokens();
  std::string out = "{\"tokens\": [";
  for (size_t i = 0; i < view.tokens.size(); ++i) {
    if (i > 0) out += ", ";
    out += json_string(view.tokens[i]);
  }
  out += "],\n\"attention\": [";
  for (int64_t l = 0; l < weights.layers(); ++l) {
    out += l > 0 ? ",\n [[" : "\n [[";  // [layer][batch = 1]
    for (int64_t h = 0; h < weights.heads(); ++h) {
      out += h > 0 ? ",\n   [" : "\n   [";
      const float* w = weights.head(l, h);
      for (int64_t q = 0; q < t; ++q) {
        out += q > 0 ? ", [" : "[";
        for (int64_t k = 0; k < t; ++k) {
          if (k > 0) out += ", ";
          append_float(out, w[q * t + k]);
        }
        out += ']';
      }
      out += ']';
    }
    out += "]]";
  }
  out += "\n]}\n";
  return out;
}

void write_text_file(const std::string& path, std::string_view text) {
  io::write_file_atomically(path,
                            std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

void write_bertviz_json(const std::string& path, const AttentionView& view) {
  write_text_file(path, bertviz_json(view));
}

}  // namespace qkv::viz
