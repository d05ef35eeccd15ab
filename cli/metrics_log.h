// A training run's metrics, one row per evaluation (step first), kept in
// memory and written as CSV (loss.csv, log.csv) after each evaluation. A
// resumed run reloads the rows up to its checkpoint's step and drops the rest.
#pragma once

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace qkv::cli {

class MetricsLog {
 public:
  // The columns after "step".
  explicit MetricsLog(std::vector<std::string> columns) : columns_(std::move(columns)) {}

  void add(int64_t step, std::vector<double> values) {
    rows_.push_back({step, std::move(values)});
  }
  bool empty() const { return rows_.empty(); }
  int64_t last_step() const { return rows_.empty() ? -1 : rows_.back().first; }

  std::string csv() const {
    std::string out = "step";
    for (const auto& c : columns_) out.append(",").append(c);
    out += "\n";
    char number[32];
    for (const auto& [step, values] : rows_) {
      out += std::to_string(step);
      for (double v : values) {
        std::snprintf(number, sizeof number, ",%.7g", v);
        out += number;
      }
      out += "\n";
    }
    return out;
  }

  // The rows of an earlier file with this log's columns, up to `last_step`;
  // a missing file or malformed lines give no rows.
  void load(const std::string& path, int64_t last_step) {
    rows_.clear();
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string field;
      std::vector<double> values;
      int64_t step = 0;
      bool ok = static_cast<bool>(std::getline(fields, field, ','));
      try {
        if (ok) step = std::stoll(field);
        while (ok && std::getline(fields, field, ',')) values.push_back(std::stod(field));
      } catch (const std::exception&) {
        ok = false;
      }
      if (ok && values.size() == columns_.size() && step <= last_step) add(step, std::move(values));
    }
  }

 private:
  std::vector<std::string> columns_;
  std::vector<std::pair<int64_t, std::vector<double>>> rows_;
};

}  // namespace qkv::cli
