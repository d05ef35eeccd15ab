// The qkv subcommands other than `train` and `demo`. Each prints its report
// on `log` (stdout, or stderr under --json) and returns its results as JSON.
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qkv::cli {

struct GenerateOptions {
  std::string checkpoint;
  std::string prompt;
  int64_t max_new_tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 0;
  double top_p = 1.0;
  std::vector<std::string> stop;  // generation ends once the text ends with one
  uint64_t seed = 0;
  bool no_cache = false;
  bool stream = true;             // print tokens as they come
};
nlohmann::json run_generate(const GenerateOptions& options, std::FILE* log);

struct EvalOptions {
  std::string checkpoint;
  std::string data;
  int64_t batch = 32;
  bool quiet = false;
};
nlohmann::json run_eval(const EvalOptions& options, std::FILE* log);

struct AttendOptions {
  std::string checkpoint;
  std::string text;
  std::string out;  // directory for the files
  std::vector<std::string> formats = {"png", "html", "json"};
};
nlohmann::json run_attend(const AttendOptions& options, std::FILE* log);

struct BenchOptions {
  std::vector<int64_t> lengths = {512, 1024, 2048, 4096};
  int64_t batch = 1, heads = 8, dim = 64;
  bool causal = false;
  bool backward = false;
  std::string dtype = "f32";
  int reps = 5;
  uint64_t seed = 0;
  bool quiet = false;
};
nlohmann::json run_bench(const BenchOptions& options, std::FILE* log);

// A safetensors file (a qkv checkpoint shows its training state and model),
// a training run's directory, or a Hugging Face model directory.
nlohmann::json run_info(const std::string& path, std::FILE* log);

// C-style escapes in command-line text: \n, \t, \r, \\.
std::string unescape(const std::string& text);

}  // namespace qkv::cli
