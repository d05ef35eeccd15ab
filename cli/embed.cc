// `qkv embed`: sentence embeddings of a model directory (SentenceEncoder),
// printed with their cosine similarities or written as .safetensors, .npy or
// .tsv.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "classify.h"
#include "codec.h"
#include "qkv/bert.h"
#include "qkv/error.h"
#include "qkv/file.h"
#include "qkv/safetensors.h"

namespace qkv::cli {

using json = nlohmann::json;

namespace {

// A .npy file (format 1.0) of f32 [N, H], little-endian.
std::string npy_bytes(const Tensor& e) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(e.size(0)) + ", " + std::to_string(e.size(1)) + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(e.data<float>()), e.numel() * sizeof(float));
  return out;
}

std::string tsv_bytes(const Tensor& e) {
  std::string out;
  char value[32];
  for (int64_t i = 0; i < e.size(0); ++i) {
    for (int64_t j = 0; j < e.size(1); ++j) {
      std::snprintf(value, sizeof value, "%s%.9g", j ? "\t" : "",
                    e.data<float>()[i * e.size(1) + j]);
      out += value;
    }
    out += '\n';
  }
  return out;
}

}  // namespace

json run_embed(const EmbedOptions& options, std::FILE* log) {
  QKV_CHECK(options.batch > 0, "--batch must be positive, got ", options.batch);
  const bool to_safetensors = options.out.ends_with(".safetensors");
  QKV_CHECK(options.out.empty() || to_safetensors || options.out.ends_with(".npy") ||
                options.out.ends_with(".tsv"),
            "--out '", options.out, "' must end in .safetensors, .npy or .tsv");
  const std::vector<std::string> texts = gather_texts(options.texts, options.input);
  std::error_code ec;
  QKV_CHECK(std::filesystem::is_directory(options.model, ec), "model directory '", options.model,
            "' does not exist or is not a directory");
  const SentenceEncoder encoder =
      SentenceEncoder::load(options.model, {.dtype = options.bf16 ? DType::bf16 : DType::f32});
  using Clock = std::chrono::steady_clock;
  const auto began = Clock::now();
  const Tensor e = encoder.embed(texts, options.batch).to(DType::f32).contiguous();
  const double seconds = std::chrono::duration<double>(Clock::now() - began).count();
  const int64_t n = e.size(0), h = e.size(1);
  std::fprintf(log, "%lld embedding%s of dimension %lld (%s pooling%s%s) in %.3f s\n",
               static_cast<long long>(n), n == 1 ? "" : "s", static_cast<long long>(h),
               sentence_pooling_name(encoder.pooling()), encoder.normalize() ? ", normalised" : "",
               options.bf16 ? ", bf16" : "", seconds);
  json result = {{"model", options.model},
                 {"count", n},
                 {"dimension", h},
                 {"pooling", sentence_pooling_name(encoder.pooling())},
                 {"normalized", encoder.normalize()},
                 {"dtype", options.bf16 ? "bf16" : "f32"},
                 {"seconds", seconds}};
  if (!options.out.empty()) {
    if (to_safetensors)
      safetensors::save(options.out, {{"embeddings", e}});
    else
      write_file_atomically(options.out,
                            options.out.ends_with(".npy") ? npy_bytes(e) : tsv_bytes(e));
    std::fprintf(log, "wrote '%s'\n", options.out.c_str());
    result["out"] = options.out;
    return result;
  }
  const float* v = e.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    std::string head;
    char value[24];
    for (int64_t k = 0; k < std::min<int64_t>(h, 4); ++k) {
      std::snprintf(value, sizeof value, "%s%+.4f", k ? " " : "", v[i * h + k]);
      head += value;
    }
    std::fprintf(log, "[%s%s]  %s\n", head.c_str(), h > 4 ? " ..." : "",
                 valid_utf8(texts[i]).c_str());
  }
  // Cosine similarities of a few texts, the usual first look at embeddings.
  if (n >= 2 && n <= 8) {
    std::fprintf(log, "cosine similarities:\n");
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0, a = 0, b = 0;
        for (int64_t k = 0; k < h; ++k) {
          dot += static_cast<double>(v[i * h + k]) * v[j * h + k];
          a += static_cast<double>(v[i * h + k]) * v[i * h + k];
          b += static_cast<double>(v[j * h + k]) * v[j * h + k];
        }
        std::fprintf(log, "%s%6.3f", j ? " " : "  ", dot / std::max(std::sqrt(a * b), 1e-12));
      }
      std::fprintf(log, "\n");
    }
  }
  if (options.json) {
    json rows = json::array();
    for (int64_t i = 0; i < n; ++i) rows.push_back(std::vector<float>(v + i * h, v + (i + 1) * h));
    result["embeddings"] = rows;
  }
  return result;
}

}  // namespace qkv::cli
