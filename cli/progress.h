// Progress of long work (training, evaluation, benchmarks) on stderr: a live
// bar redrawn in place on a terminal, plain periodic lines otherwise (CI logs).
//
//   Progress progress("train", total_steps);
//   for (...) progress.update(step, {{"loss", "1.93"}, {"tok/s", "12.1k"}});
//   progress.finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace qkv::cli {

class Progress {
 public:
  using Fields = std::vector<std::pair<std::string, std::string>>;

  // total: the count update() reaches at the end (steps, batches); `start` is
  // where a resumed run begins, so the time left is estimated from the rate
  // of this run only. quiet: print nothing.
  Progress(std::string label, int64_t total, int64_t start = 0, bool quiet = false,
           std::FILE* out = stderr);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // On a terminal the bar is redrawn at most 10 times a second; otherwise a
  // line is printed every `plain_interval_s` seconds and at the end.
  void update(int64_t done, const Fields& fields = {});
  // A line of its own (an evaluation result) that does not break the bar.
  void message(const std::string& line);
  // Ends the bar's line (called by the destructor too).
  void finish();

  double plain_interval_s = 10.0;

 private:
  std::string render(int64_t done, const Fields& fields, bool bar) const;
  void clear_line();

  std::string label_;
  int64_t total_, start_;
  bool quiet_, terminal_, open_ = false;
  std::FILE* out_;
  std::chrono::steady_clock::time_point began_, last_draw_;
  int64_t last_done_ = -1;
  Fields last_fields_;
};

// "3m12s", "1h04m", "45s".
std::string format_duration(double seconds);
// "12.3k", "1.20M", "950".
std::string format_count(double value);

}  // namespace qkv::cli
