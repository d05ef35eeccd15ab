#include "qkv/threads.h"

#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/parallel.h"
#include "qkv/error.h"

namespace qkv {
namespace {

int parse_env_threads() {
  const char* env = std::getenv("QKV_NUM_THREADS");
  if (env == nullptr || *env == '\0') return omp_get_num_procs();
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  QKV_CHECK(*end == '\0' && n >= 1 && n <= 4096,
            "QKV_NUM_THREADS must be a whole number >= 1, got '", env, "'");
  return static_cast<int>(n);
}

std::atomic<int>& thread_count() {
  static std::atomic<int> count{parse_env_threads()};
  return count;
}

}  // namespace

void set_num_threads(int n) {
  QKV_CHECK(n >= 1, "set_num_threads: n must be >= 1, got ", n);
  thread_count().store(n);
  omp_set_num_threads(n);
}

int num_threads() { return thread_count().load(); }

namespace detail {

void sync_openmp_threads() {
  const int n = num_threads();
  if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

}  // namespace detail
}  // namespace qkv
