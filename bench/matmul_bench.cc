// qkv::matmul against a bare oneDNN matmul primitive, side by side in one run.
//
//   matmul_bench [--threads 1,2] [--dtypes f32,bf16] [--reps N] [--warmup N]
//                [--json PATH] [--md PATH]
//
// For each shape, dtype and thread count three things are timed in rotation,
// after warm-up, and the medians compared: qkv::matmul (allocates its result),
// qkv::matmul_into (writes into a buffer reused across runs) and a bare oneDNN
// primitive created once on plain row-major operands, writing into a buffer it
// owns. into/bare is what the front door costs (validation, the cache lookup,
// memory objects); matmul/bare adds the fresh result's page faults. GFLOP/s are
// also given as a fraction of the FMA peak measured in the same run.
#include <immintrin.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "qkv/qkv.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Shape3 {
  int64_t M, K, N;
  const char* note;
};

struct Options {
  std::vector<int> threads{1, 2};
  std::vector<qkv::DType> dtypes{qkv::DType::f32, qkv::DType::bf16};
  int reps = 10;
  int warmup = 2;
  std::string json_path, md_path;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');)
    if (!part.empty()) parts.push_back(part);
  return parts;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw qkv::Error("matmul_bench: " + arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--threads") {
      o.threads.clear();
      for (const auto& t : split(value())) o.threads.push_back(std::stoi(t));
    } else if (arg == "--dtypes") {
      o.dtypes.clear();
      for (const auto& d : split(value())) o.dtypes.push_back(qkv::dtype_from_name(d));
    } else if (arg == "--reps") {
      o.reps = std::stoi(value());
    } else if (arg == "--warmup") {
      o.warmup = std::stoi(value());
    } else if (arg == "--json") {
      o.json_path = value();
    } else if (arg == "--md") {
      o.md_path = value();
    } else {
      throw qkv::Error("matmul_bench: unknown argument '" + arg +
                       "' (see --threads --dtypes --reps --warmup --json --md)");
    }
  }
  if (o.reps < 1 || o.warmup < 0) throw qkv::Error("matmul_bench: --reps must be >= 1");
  return o;
}

std::string cpu_field(const std::string& name) {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name, 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? "" : line.substr(colon + 2);
    }
  return "";
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The peer: one oneDNN primitive on plain row-major operands, created once.
class BareMatmul {
 public:
  BareMatmul(const qkv::Tensor& a, const qkv::Tensor& b, int64_t M, int64_t K, int64_t N)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    const dt in = a.dtype() == qkv::DType::bf16 ? dt::bf16 : dt::f32;
    const dnnl::memory::desc a_md({M, K}, in, tag::ab), b_md({K, N}, in, tag::ab),
        c_md({M, N}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), engine_);
    impl_ = pd.impl_info_str();
    primitive_ = dnnl::matmul(pd);
    a_ = dnnl::memory(a_md, engine_, a.raw_data());
    b_ = dnnl::memory(b_md, engine_, b.raw_data());
    c_ = dnnl::memory(c_md, engine_);  // allocated once, written every run
  }
  void run() {
    primitive_.execute(stream_, {{DNNL_ARG_SRC, a_}, {DNNL_ARG_WEIGHTS, b_}, {DNNL_ARG_DST, c_}});
    stream_.wait();
  }
  float first() const { return static_cast<float*>(c_.get_data_handle())[0]; }
  const std::string& impl() const { return impl_; }

 private:
  dnnl::engine engine_;
  dnnl::stream stream_;
  dnnl::matmul primitive_;
  dnnl::memory a_, b_, c_;
  std::string impl_;
};

// f32 FMA throughput of `threads` threads: 16 independent accumulators per
// thread hide the FMA latency, so this is the issue-rate limit at the clock
// the cores actually run at (the nominal MHz in /proc/cpuinfo is not it).
// The best of several trials: on a shared machine a trial can only lose time.
__attribute__((target("avx512f"))) double measure_fma_peak_gflops(int threads) {
  constexpr int64_t kIters = 10'000'000;
  double best = 0;
  for (int trial = 0; trial < 7; ++trial) {
    const auto t0 = Clock::now();
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
      const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
      for (int64_t it = 0; it < kIters; ++it)
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, c);
      __m512 total = acc[0];
      for (int i = 1; i < 16; ++i) total = _mm512_add_ps(total, acc[i]);
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, total);
      for (float lane : lanes) sink += lane;
    }
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (sink == 12345.0f) std::cerr << "";  // keeps the loop alive
    best = std::max(best, threads * kIters * 16.0 * 16 * 2 / s * 1e-9);
  }
  return best;
}

template <class Fn>
double time_ms(Fn&& fn) {
  const auto t0 = Clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options opt = parse(argc, argv);
    std::string command = argv[0];
    for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
    const std::vector<Shape3> shapes = {{1024, 1024, 1024, "square"},
                                        {4096, 4096, 4096, "square, large"},
                                        {4096, 64, 4096, "attention scores Q K^T (D = 64)"}};
    const double mhz = std::atof(cpu_field("cpu MHz").c_str());
    const dnnl_version_t* v = dnnl_version();
    const std::string onednn = std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                               std::to_string(v->patch);
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M", std::localtime(&now));
    const std::string load_before = load_average();

    nlohmann::json peaks = nlohmann::json::object();
    nlohmann::json results = nlohmann::json::array();
    qkv::Generator gen(2026);
    for (int threads : opt.threads) {
      peaks[std::to_string(threads)] = measure_fma_peak_gflops(threads);
      std::cerr << "f32 FMA peak, " << threads << " threads: "
                << fixed(peaks[std::to_string(threads)].get<double>(), 1) << " GFLOP/s\n";
    }
    for (const Shape3& s : shapes) {
      const double flops = 2.0 * s.M * s.K * s.N;
      // Fewer runs where one run takes a second.
      const int reps = flops > 1e11 ? std::max(3, opt.reps / 3) : opt.reps;
      for (qkv::DType dtype : opt.dtypes) {
        const qkv::Tensor a = qkv::randn({s.M, s.K}, gen).to(dtype);
        const qkv::Tensor b = qkv::randn({s.K, s.N}, gen).to(dtype);
        const qkv::Tensor reused = qkv::Tensor::zeros({s.M, s.N});
        for (int threads : opt.threads) {
          qkv::set_num_threads(threads);  // also sets this thread's OpenMP team
          BareMatmul bare(a, b, s.M, s.K, s.N);
          float first_alloc = 0;
          std::vector<std::function<void()>> runs = {
              [&] { first_alloc = qkv::matmul(a, b).data<float>()[0]; },
              [&] { qkv::matmul_into(a, b, reused); }, [&] { bare.run(); }};
          for (int w = 0; w < opt.warmup; ++w)
            for (auto& run : runs) run();
          for (float got : {first_alloc, reused.data<float>()[0]})
            if (std::abs(got - bare.first()) > 1e-3f * (1.0f + std::abs(bare.first())))
              throw qkv::Error("matmul_bench: qkv and oneDNN disagree: " + std::to_string(got) +
                               " vs " + std::to_string(bare.first()));
          std::vector<double> times[3];
          for (int r = 0; r < reps; ++r)
            // Rotate the order so no variant always runs on caches another warmed.
            for (int i = 0; i < 3; ++i) {
              const int which = (r + i) % 3;
              times[which].push_back(time_ms(runs[which]));
            }
          const double m_alloc = median(times[0]), m_into = median(times[1]),
                       m_bare = median(times[2]);
          auto gflops = [&](double ms) { return flops / ms * 1e-6; };
          const double peak = peaks[std::to_string(threads)].get<double>();
          nlohmann::json row = {
              {"M", s.M}, {"K", s.K}, {"N", s.N}, {"shape", s.note},
              {"dtype", qkv::dtype_name(dtype)}, {"threads", threads}, {"reps", reps},
              {"qkv_matmul_ms", m_alloc}, {"qkv_matmul_into_ms", m_into},
              {"onednn_ms", m_bare}, {"qkv_matmul_gflops", gflops(m_alloc)},
              {"qkv_matmul_into_gflops", gflops(m_into)}, {"onednn_gflops", gflops(m_bare)},
              {"ratio_matmul_over_onednn", m_bare / m_alloc},
              {"ratio_matmul_into_over_onednn", m_bare / m_into},
              {"matmul_into_fraction_of_fma_peak", gflops(m_into) / peak},
              {"onednn_fraction_of_fma_peak", gflops(m_bare) / peak},
              {"qkv_matmul_min_ms", *std::min_element(times[0].begin(), times[0].end())},
              {"qkv_matmul_into_min_ms", *std::min_element(times[1].begin(), times[1].end())},
              {"onednn_min_ms", *std::min_element(times[2].begin(), times[2].end())},
              {"onednn_impl", bare.impl()}, {"qkv_matmul_times_ms", times[0]},
              {"qkv_matmul_into_times_ms", times[1]}, {"onednn_times_ms", times[2]}};
          std::cerr << s.M << "x" << s.K << "x" << s.N << " " << qkv::dtype_name(dtype) << " t"
                    << threads << ": matmul " << fixed(m_alloc, 2) << " ms, into "
                    << fixed(m_into, 2) << " ms, oneDNN " << fixed(m_bare, 2) << " ms ("
                    << fixed(gflops(m_bare), 1) << " GFLOP/s); ratios "
                    << fixed(m_bare / m_alloc, 3) << " / " << fixed(m_bare / m_into, 3) << "\n";
          results.push_back(row);
        }
      }
    }

    const std::string load_after = load_average();
    nlohmann::json doc = {
        {"benchmark", "matmul"},
        {"date", date},
        {"command", command},
        {"machine",
         {{"cpu", cpu_field("model name")}, {"cpu_mhz_nominal", mhz},
          {"cores", omp_get_num_procs()}, {"fma_peak_gflops_measured", peaks},
          {"onednn", onednn},
          {"onednn_cpu_runtime", v->cpu_runtime == DNNL_RUNTIME_OMP ? "omp" : "other"},
          {"load_average_before", load_before}, {"load_average_after", load_after}}},
        {"config",
         {{"reps", opt.reps}, {"reps_over_1e11_flop", std::max(3, opt.reps / 3)},
          {"warmup", opt.warmup}, {"threads", opt.threads},
          {"note", "qkv::matmul allocates its f32 result each call; qkv::matmul_into and the "
                   "bare oneDNN primitive write into buffers allocated once. The three run in "
                   "rotation; medians reported. ratio = oneDNN time / qkv time."}}},
        {"results", results}};
    if (!opt.json_path.empty()) std::ofstream(opt.json_path) << doc.dump(2) << "\n";

    std::ostringstream md;
    md << "# qkv::matmul vs bare oneDNN matmul\n\n"
       << "Command: `" << command << "`  \n"
       << "Date: " << date << "  \n"
       << "Machine: " << cpu_field("model name") << ", " << omp_get_num_procs()
       << " cores, oneDNN " << onednn << " (OpenMP runtime); measured f32 FMA peak:";
    for (int threads : opt.threads)
      md << " " << fixed(peaks[std::to_string(threads)].get<double>(), 0) << " GFLOP/s on "
         << threads << (threads == 1 ? " thread;" : " threads;");
    md << "  \nLoad average before / after: " << load_before << " / " << load_after << "\n\n"
       << "Medians after " << opt.warmup << " warm-up runs; qkv::matmul, qkv::matmul_into and "
       << "the bare primitive run in rotation. ratio = oneDNN ms / qkv ms (1.0: qkv adds "
          "nothing). `matmul` allocates its result every call, `into` and oneDNN reuse one "
          "buffer. peak = GFLOP/s over the f32 FMA peak measured for the thread count (bf16 "
          "rows too, for comparison).\n\n"
       << "| M×K×N | dtype | threads | reps | matmul ms | into ms | oneDNN ms | oneDNN GFLOP/s "
          "| ratio matmul | ratio into | into peak | oneDNN peak |\n"
       << "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& r : results)
      md << "| " << r["M"].get<int64_t>() << "×" << r["K"].get<int64_t>() << "×"
         << r["N"].get<int64_t>() << " | " << r["dtype"].get<std::string>() << " | "
         << r["threads"].get<int>() << " | " << r["reps"].get<int>() << " | "
         << fixed(r["qkv_matmul_ms"], 2) << " | " << fixed(r["qkv_matmul_into_ms"], 2) << " | "
         << fixed(r["onednn_ms"], 2) << " | " << fixed(r["onednn_gflops"], 1) << " | "
         << fixed(r["ratio_matmul_over_onednn"], 3) << " | "
         << fixed(r["ratio_matmul_into_over_onednn"], 3) << " | "
         << fixed(r["matmul_into_fraction_of_fma_peak"], 2) << " | "
         << fixed(r["onednn_fraction_of_fma_peak"], 2) << " |\n";
    if (!opt.md_path.empty()) std::ofstream(opt.md_path) << md.str();
    std::cout << md.str();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
