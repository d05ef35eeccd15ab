// The qkv command: `qkv demo` (the main job for now), `qkv info`.
//
// Errors from the library or the command line print one line on stderr and
// exit non-zero; nothing is written on failure.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "demo.h"
#include "qkv/qkv.h"

namespace {

// `qkv info FILE`: the tensors and metadata of a safetensors file.
nlohmann::json run_info(const std::string& path, bool print) {
  const auto file = qkv::safetensors::File::open(path);
  nlohmann::json tensors = nlohmann::json::array();
  uint64_t bytes = 0;
  for (const auto& t : file.tensors()) {
    tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape},
                       {"bytes", t.end - t.begin}});
    bytes += t.end - t.begin;
    if (print)
      std::printf("%-40s %-5s %s\n", t.name.c_str(), t.dtype.c_str(),
                  qkv::shape_string(t.shape).c_str());
  }
  if (print) {
    for (const auto& [key, value] : file.metadata())
      std::printf("metadata %s = %s\n", key.c_str(), value.c_str());
    std::printf("%zu tensors, %llu bytes of data\n", file.tensors().size(),
                static_cast<unsigned long long>(bytes));
  }
  return {{"path", path}, {"tensors", tensors}, {"metadata", file.metadata()}, {"data_bytes", bytes}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qkv: an engine for self-attention and Transformer models"};
  app.set_version_flag("--version", QKV_VERSION_STRING);
  app.require_subcommand(1);
  int threads = 0;
  uint64_t seed = 0;
  bool json = false;
  app.add_option("--threads", threads, "Number of threads (default: QKV_NUM_THREADS or all cores)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "Random seed");
  app.add_flag("--json", json, "Print the results as JSON on stdout instead of text");

  qkv::cli::DemoOptions demo;
  demo.data_path = QKV_DEFAULT_DATA;
  auto* demo_cmd = app.add_subcommand(
      "demo", "Attention over the lines of Tiny Shakespeare, then an attention benchmark");
  demo_cmd->add_option("--data", demo.data_path, "Text file, one sequence per line")
      ->check(CLI::ExistingFile);
  demo_cmd->add_flag("--quick", demo.quick, "Smaller sizes (seconds instead of a minute)");

  std::string info_path;
  auto* info_cmd = app.add_subcommand("info", "List the tensors and metadata of a safetensors file");
  info_cmd->add_option("file", info_path, "A .safetensors file")->required()->check(CLI::ExistingFile);

  CLI11_PARSE(app, argc, argv);
  try {
    if (threads > 0) qkv::set_num_threads(threads);
    demo.seed = seed;
    nlohmann::json result;
    if (*demo_cmd) {
      // In JSON mode the human-readable report goes to stderr so stdout stays parseable.
      if (json) demo.log = stderr;
      result = qkv::cli::run_demo(demo);
    } else if (*info_cmd) {
      result = run_info(info_path, !json);
    }
    if (json) std::cout << result.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
