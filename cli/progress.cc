#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace qkv::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  char buffer[32];
  if (s < 60)
    std::snprintf(buffer, sizeof buffer, "%llds", static_cast<long long>(s));
  else if (s < 3600)
    std::snprintf(buffer, sizeof buffer, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buffer, sizeof buffer, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  return buffer;
}

std::string format_count(double value) {
  char buffer[32];
  if (value >= 1e6)
    std::snprintf(buffer, sizeof buffer, "%.2fM", value / 1e6);
  else if (value >= 1e4)
    std::snprintf(buffer, sizeof buffer, "%.1fk", value / 1e3);
  else
    std::snprintf(buffer, sizeof buffer, "%.0f", value);
  return buffer;
}

Progress::Progress(std::string label, int64_t total, int64_t start, bool quiet, std::FILE* out)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      start_(start),
      quiet_(quiet),
      terminal_(isatty(fileno(out)) != 0),
      out_(out),
      began_(Clock::now()),
      last_draw_(began_) {}

Progress::~Progress() { finish(); }

std::string Progress::render(int64_t done, const Fields& fields, bool bar) const {
  std::string line = label_ + " ";
  if (bar) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * std::clamp<double>(double(done) / total_, 0, 1));
    line.append("[").append(filled, '#').append(kWidth - filled, '.').append("] ");
  }
  line += std::to_string(done) + "/" + std::to_string(total_);
  for (const auto& [name, value] : fields) line += "  " + name + " " + value;
  const double elapsed = seconds_between(began_, Clock::now());
  const int64_t progressed = done - start_;
  if (progressed > 0 && done < total_)
    line += "  left " + format_duration(elapsed / progressed * (total_ - done));
  line += "  elapsed " + format_duration(elapsed);
  return line;
}

void Progress::clear_line() {
  if (open_) std::fputs("\r\033[K", out_);
}

void Progress::update(int64_t done, const Fields& fields) {
  if (quiet_) return;
  const auto now = Clock::now();
  last_done_ = done;
  last_fields_ = fields;
  const bool last = done >= total_;
  if (terminal_) {
    if (!last && seconds_between(last_draw_, now) < 0.1 && open_) return;
    clear_line();
    std::fputs(render(done, fields, true).c_str(), out_);
    open_ = true;
  } else {
    if (!last && seconds_between(last_draw_, now) < plain_interval_s) return;
    std::fprintf(out_, "%s\n", render(done, fields, false).c_str());
  }
  std::fflush(out_);
  last_draw_ = now;
}

void Progress::message(const std::string& line) {
  if (quiet_) return;
  clear_line();
  std::fprintf(out_, "%s\n", line.c_str());
  if (open_ && last_done_ >= 0) std::fputs(render(last_done_, last_fields_, true).c_str(), out_);
  std::fflush(out_);
}

void Progress::finish() {
  if (quiet_ || !open_) return;
  std::fputc('\n', out_);
  std::fflush(out_);
  open_ = false;
}

}  // namespace qkv::cli
