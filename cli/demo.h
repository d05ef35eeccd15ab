#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace qkv::cli {

struct DemoOptions {
  std::string data_path;
  bool quick = false;  // smaller sizes: for tests and CI
  uint64_t seed = 0;
  std::FILE* log = stdout;  // where the human-readable report goes
};

// Runs the demo, printing as it goes; returns the figures for --json.
nlohmann::json run_demo(const DemoOptions& options);

}  // namespace qkv::cli
