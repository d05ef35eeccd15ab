// parallel_for over the library's one OpenMP thread team (see qkv/threads.h).
// Internal: kernels include it; the public API does not.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>

#include "qkv/threads.h"

namespace qkv::detail {

// Makes the calling thread's OpenMP team size equal qkv::num_threads(), so
// that oneDNN calls made from this thread use the same count.
void sync_openmp_threads();

// Splits [begin, end) into chunks of at least `grain` items and runs
// fn(chunk_begin, chunk_end) on the thread team. An exception thrown by fn is
// rethrown on the calling thread once every chunk has finished.
template <class Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, Fn&& fn) {
  const int64_t count = end - begin;
  if (count <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (count + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), max_chunks));
  if (threads <= 1 || omp_in_parallel()) {
    fn(begin, end);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num();
    const int64_t n = omp_get_num_threads();
    const int64_t chunk_begin = begin + count * t / n;
    const int64_t chunk_end = begin + count * (t + 1) / n;
    try {
      if (chunk_begin < chunk_end) fn(chunk_begin, chunk_end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace qkv::detail
