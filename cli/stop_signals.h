// Ctrl-C / SIGTERM during a training loop: the loop sees raised(), saves a
// checkpoint and stops. The first signal restores the default action, so a
// second Ctrl-C ends the process at once.
#pragma once

#include <csignal>

namespace qkv::cli {

namespace detail {
inline volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" inline void qkv_cli_stop_signal_handler(int signal) {
  g_stop_signal = signal;
  std::signal(signal, SIG_DFL);
}
}  // namespace detail

class StopSignals {
 public:
  StopSignals() {
    detail::g_stop_signal = 0;
    previous_int_ = std::signal(SIGINT, detail::qkv_cli_stop_signal_handler);
    previous_term_ = std::signal(SIGTERM, detail::qkv_cli_stop_signal_handler);
  }
  ~StopSignals() {
    std::signal(SIGINT, previous_int_);
    std::signal(SIGTERM, previous_term_);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  bool raised() const { return detail::g_stop_signal != 0; }

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

}  // namespace qkv::cli
