// The thread count: the setter, QKV_NUM_THREADS, parallel_for, and the
// promise that n threads means at most n busy cores, oneDNN included.
#include <gtest/gtest.h>
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/parallel.h"
#include "qkv/qkv.h"

namespace qkv {
namespace {

// Restores the thread count a test changed.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(num_threads()) {}
  ~ThreadCountGuard() { set_num_threads(saved_); }

 private:
  int saved_;
};

TEST(Threads, SetAndGet) {
  ThreadCountGuard guard;
  EXPECT_GE(num_threads(), 1);
  set_num_threads(3);
  EXPECT_EQ(num_threads(), 3);
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  for (int bad : {0, -1, -100}) {
    try {
      set_num_threads(bad);
      ADD_FAILURE() << "set_num_threads(" << bad << ") did not throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("got " + std::to_string(bad)), std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(num_threads(), 1);  // a rejected value changes nothing
}

// QKV_NUM_THREADS is read once per process, so each case runs in a fresh
// process: the "threadsafe" death-test style re-executes this binary.
// Exit codes: the thread count it read; 200 + 1 for a qkv::Error whose
// message quotes the value; 250 when nothing was thrown.
[[noreturn]] void exit_with_env_threads(const char* value) {
  setenv("QKV_NUM_THREADS", value, 1);
  try {
    std::exit(num_threads());
  } catch (const Error& e) {
    const bool quoted = std::string(e.what()).find(std::string("'") + value + "'") !=
                        std::string::npos;
    std::exit(quoted ? 201 : 202);
  }
  std::exit(250);
}

TEST(Threads, EnvironmentVariable) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(exit_with_env_threads("3"), ::testing::ExitedWithCode(3), "");
  EXPECT_EXIT(exit_with_env_threads("1"), ::testing::ExitedWithCode(1), "");
  EXPECT_EXIT(exit_with_env_threads("17"), ::testing::ExitedWithCode(17), "");
  // Unset-like: empty means one per core.
  EXPECT_EXIT(exit_with_env_threads(""), ::testing::ExitedWithCode(omp_get_num_procs()), "");
  for (const char* bad : {"0", "-2", "abc", "2x", "1.5", " 2x", "99999"})
    EXPECT_EXIT(exit_with_env_threads(bad), ::testing::ExitedWithCode(201), "") << bad;
}

TEST(Threads, ParallelForCoversEveryIndexOnce) {
  ThreadCountGuard guard;
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    for (int64_t begin : {0, 5}) {
      for (int64_t count : {0, 1, 2, 7, 1000, 10007}) {
        for (int64_t grain : {1, 3, 64, 100000}) {
          std::vector<std::atomic<int>> hits(static_cast<size_t>(begin + count));
          std::atomic<int> calls{0};
          detail::parallel_for(begin, begin + count, grain, [&](int64_t lo, int64_t hi) {
            ++calls;
            EXPECT_LT(lo, hi);
            for (int64_t i = lo; i < hi; ++i) ++hits[static_cast<size_t>(i)];
          });
          for (int64_t i = 0; i < begin + count; ++i)
            ASSERT_EQ(hits[static_cast<size_t>(i)].load(), i >= begin ? 1 : 0)
                << "index " << i << " threads " << threads << " count " << count << " grain "
                << grain;
          const int64_t max_chunks = count == 0 ? 0 : (count + grain - 1) / grain;
          EXPECT_LE(calls.load(), std::min<int64_t>(threads, max_chunks));
          EXPECT_GE(calls.load(), count > 0 ? 1 : 0);
        }
      }
    }
  }
}

TEST(Threads, ParallelForRethrowsOnTheCaller) {
  ThreadCountGuard guard;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::atomic<int64_t> done{0};
    try {
      detail::parallel_for(0, 1000, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
          if (i == 700) throw Error("chunk failed at 700");
          ++done;
        }
      });
      ADD_FAILURE() << "no exception with " << threads << " threads";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "chunk failed at 700");
    }
    EXPECT_LT(done.load(), 1000);
    // The type of a non-qkv exception survives too.
    EXPECT_THROW(detail::parallel_for(0, 10, 1, [](int64_t, int64_t) {
                   throw std::out_of_range("x");
                 }),
                 std::out_of_range);
  }
}

double seconds(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Runs `work` until about `min_wall` seconds have passed; returns the
// process's CPU time over wall time: the number of cores it kept busy.
template <class Fn>
double busy_cores(Fn&& work, double min_wall = 0.4) {
  const double cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
  const double wall0 = seconds(CLOCK_MONOTONIC);
  double wall = 0;
  do {
    work();
    wall = seconds(CLOCK_MONOTONIC) - wall0;
  } while (wall < min_wall);
  return (seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / wall;
}

TEST(Threads, MatmulUsesAtMostTheThreadCount) {
  ThreadCountGuard guard;
  Generator gen(7);
  const Tensor a = randn({768, 768}, gen);
  const Tensor b = randn({768, 768}, gen);
  // Build the primitive for two threads first: a primitive built for two and
  // reused at one would still open two.
  for (int threads : {2, 1, 2}) {
    set_num_threads(threads);
    double checksum = 0;
    const double cores = busy_cores([&] { checksum += matmul(a, b).at({5, 7}); });
    EXPECT_LE(cores, threads + 0.5) << "set_num_threads(" << threads << ")";
    EXPECT_EQ(omp_get_max_threads(), threads);
    EXPECT_TRUE(std::isfinite(checksum));
  }
  // Someone else's omp_set_num_threads does not leak into qkv's calls.
  set_num_threads(1);
  omp_set_num_threads(4);
  const double cores = busy_cores([&] { matmul(a, b); });
  EXPECT_LE(cores, 1.5);
  EXPECT_EQ(omp_get_max_threads(), 1);
  // Nor does a new thread's default team size.
  double thread_cores = 0;
  int thread_max = 0;
  std::thread worker([&] {
    thread_cores = busy_cores([&] { matmul(a, b); });
    thread_max = omp_get_max_threads();
  });
  worker.join();
  EXPECT_LE(thread_cores, 1.5);
  EXPECT_EQ(thread_max, 1);
  // The result does not depend on the thread count.
  set_num_threads(2);
  const std::vector<double> two = matmul(a, b).to_values();
  set_num_threads(1);
  const std::vector<double> one = matmul(a, b).to_values();
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); i += 97) EXPECT_NEAR(one[i], two[i], 1e-3) << i;
}

TEST(Threads, ParallelForUsesAtMostTheThreadCount) {
  ThreadCountGuard guard;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::atomic<int> widest{0};
    std::atomic<int> inner_max{0};
    std::atomic<uint64_t> sink{0};
    const double cores = busy_cores([&] {
      detail::parallel_for(0, 64, 1, [&](int64_t lo, int64_t hi) {
        int team = omp_get_num_threads();
        int seen = widest.load();
        while (team > seen && !widest.compare_exchange_weak(seen, team)) {
        }
        inner_max = omp_get_max_threads();
        uint64_t x = static_cast<uint64_t>(lo);
        for (int64_t i = lo; i < hi; ++i)
          for (int j = 0; j < 200000; ++j) x = x * 6364136223846793005ull + 1442695040888963407ull;
        sink += x;
      });
    });
    EXPECT_LE(cores, threads + 0.5) << "set_num_threads(" << threads << ")";
    EXPECT_LE(widest.load(), threads);
    if (threads == 1) {
      EXPECT_EQ(inner_max.load(), 1);
    }
    EXPECT_NE(sink.load(), 0u);
  }
}

}  // namespace
}  // namespace qkv
