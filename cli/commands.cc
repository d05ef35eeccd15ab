#include "commands.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "codec.h"
#include "progress.h"
#include "qkv/file.h"
#include "qkv/qkv.h"
#include "qkv/visualize.h"
#include "run_dir.h"
#include "timing.h"
#include "train.h"

namespace qkv::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;


}  // namespace

std::string unescape(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\' || i + 1 == text.size()) {
      out += text[i];
      continue;
    }
    switch (text[++i]) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      default: out += '\\', out += text[i];
    }
  }
  return out;
}

// ---- qkv generate ---------------------------------------------------------

nlohmann::json run_generate(const GenerateOptions& options, std::FILE* log) {
  QKV_CHECK(!options.prompt.empty(), "the prompt is empty (give some text with --prompt)");
  for (const auto& stop : options.stop) QKV_CHECK(!stop.empty(), "a --stop string is empty");
  LoadedRun run = load_run(options.checkpoint);
  const std::vector<int32_t> prompt = run.codec.encode(options.prompt);
  std::string generated;
  std::string stopped_by;
  nn::GenerationOptions generation{.max_new_tokens = options.max_new_tokens,
                                   .temperature = options.temperature,
                                   .top_k = options.top_k,
                                   .top_p = options.top_p,
                                   .seed = options.seed,
                                   .use_cache = !options.no_cache};
  generation.on_token = [&](int32_t token) {
    const int32_t one[] = {token};
    const std::string piece = run.codec.decode(one);
    generated += piece;
    if (options.stream) {
      std::fputs(piece.c_str(), log);
      std::fflush(log);
    }
    for (const auto& stop : options.stop)
      if (generated.ends_with(stop)) {
        stopped_by = stop;
        return false;
      }
    return true;
  };
  if (options.stream) std::fputs(options.prompt.c_str(), log);
  const auto began = Clock::now();
  const std::vector<int32_t> tokens = run.model->generate(prompt, generation);
  const double seconds = std::chrono::duration<double>(Clock::now() - began).count();
  if (options.stream) std::fputc('\n', log);
  return {{"checkpoint", run.checkpoint},
          {"prompt", options.prompt},
          {"text", valid_utf8(generated)},
          {"tokens", tokens.size()},
          {"stopped_by", stopped_by.empty() ? nlohmann::json() : nlohmann::json(stopped_by)},
          {"seconds", seconds},
          {"tokens_per_s", seconds > 0 ? tokens.size() / seconds : 0.0}};
}

// ---- qkv eval -------------------------------------------------------------

nlohmann::json run_eval(const EvalOptions& options, std::FILE* log) {
  QKV_CHECK(options.batch > 0, "--batch must be positive, got ", options.batch);
  const std::string text = read_file(options.data, "data file");
  QKV_CHECK(!text.empty(), "data file '", options.data, "' is empty");
  LoadedRun run = load_run(options.checkpoint);
  const std::vector<int32_t> ids = run.codec.encode(text);
  QKV_CHECK(ids.size() >= 2, "data file '", options.data, "' has ", ids.size(),
            " token(s); evaluation needs at least 2");
  std::optional<Progress> progress;  // its total (windows) is known at the first batch
  const auto began = Clock::now();
  const EvalResult result =
      evaluate(*run.model, ids, options.batch, 0, [&](int64_t done, int64_t total) {
        if (!progress) progress.emplace("eval windows", total, 0, options.quiet);
        progress->update(done);
      });
  progress.reset();
  const double seconds = std::chrono::duration<double>(Clock::now() - began).count();
  std::fprintf(log, "%s: loss %.4f nats/token, perplexity %.3f, %.4f bits/token over %lld tokens (%.1f s)\n",
               options.data.c_str(), result.loss, std::exp(result.loss), result.loss / std::log(2.0),
               static_cast<long long>(result.tokens), seconds);
  return {{"checkpoint", run.checkpoint},  {"data", options.data},
          {"loss", result.loss},           {"perplexity", std::exp(result.loss)},
          {"bits_per_token", result.loss / std::log(2.0)},
          {"tokens", result.tokens},       {"seconds", seconds}};
}

// ---- qkv attend -----------------------------------------------------------

nlohmann::json run_attend(const AttendOptions& options, std::FILE* log) {
  QKV_CHECK(!options.text.empty(), "the text is empty (give some with --text)");
  QKV_CHECK(!options.out.empty(), "no output directory given (--out)");
  for (const auto& format : options.formats)
    QKV_CHECK(format == "png" || format == "html" || format == "json", "unknown format '", format,
              "' (expected png, html or json)");
  LoadedRun run = load_run(options.checkpoint);
  const std::vector<int32_t> ids = run.codec.encode(options.text);
  const int64_t context = run.model->config().context;
  QKV_CHECK(static_cast<int64_t>(ids.size()) <= context, "the text is ", ids.size(),
            " tokens long; the model's context is ", context);
  Tensor input = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::i32);
  std::copy(ids.begin(), ids.end(), input.data<int32_t>());
  viz::AttentionView view{.tokens = run.codec.labels(ids),
                          .layers = run.model->attention_maps(input),
                          .title = "qkv attend: " + run.checkpoint};
  view.validate();

  std::error_code ec;
  fs::create_directories(options.out, ec);
  QKV_CHECK(!ec, "cannot create the output directory '", options.out, "': ", ec.message());
  std::vector<std::string> written;
  auto path = [&](const std::string& name) {
    written.push_back((fs::path(options.out) / name).string());
    return written.back();
  };
  for (const auto& format : options.formats) {
    if (format == "png") {
      viz::write_grid_png(path("grid.png"), view);
      for (int64_t l = 0; l < view.num_layers(); ++l)
        for (int64_t h = 0; h < view.num_heads(); ++h)
          viz::write_head_png(path("layer" + std::to_string(l) + "_head" + std::to_string(h) + ".png"),
                              view, l, h);
    } else if (format == "html") {
      viz::write_html(path("attention.html"), view);
    } else {
      viz::write_bertviz_json(path("attention.json"), view);
    }
  }
  std::fprintf(log, "attention of %lld layers x %lld heads over %zu tokens: %zu files in '%s'\n",
               static_cast<long long>(view.num_layers()), static_cast<long long>(view.num_heads()),
               ids.size(), written.size(), options.out.c_str());
  return {{"checkpoint", run.checkpoint}, {"tokens", view.tokens},
          {"layers", view.num_layers()},  {"heads", view.num_heads()},
          {"files", written}};
}

// ---- qkv bench ------------------------------------------------------------

nlohmann::json run_bench(const BenchOptions& options, std::FILE* log) {
  QKV_CHECK(!options.lengths.empty(), "--lengths is empty");
  for (int64_t l : options.lengths) QKV_CHECK(l > 0, "--lengths: a length must be positive, got ", l);
  QKV_CHECK(options.batch > 0 && options.heads > 0 && options.dim > 0,
            "--batch, --heads and --dim must be positive");
  QKV_CHECK(options.reps > 0, "--reps must be positive, got ", options.reps);
  QKV_CHECK(options.dtype == "f32" || options.dtype == "bf16", "--dtype must be f32 or bf16, got '",
            options.dtype, "'");
  const DType dtype = options.dtype == "bf16" ? DType::bf16 : DType::f32;
  const int64_t B = options.batch, H = options.heads, D = options.dim;
  Generator gen(options.seed);
  AttentionOptions attn{.causal = options.causal ? Causal::top_left : Causal::none,
                        .return_lse = options.backward};

  std::fprintf(log, "attention %s, B=%lld H=%lld D=%lld, %s%s, %d threads, median of %d\n",
               options.causal ? "causal" : "non-causal", static_cast<long long>(B),
               static_cast<long long>(H), static_cast<long long>(D), options.dtype.c_str(),
               options.backward ? ", forward + backward" : ", forward", num_threads(), options.reps);
  std::fprintf(log, "%8s %12s %10s %12s %14s %10s\n", "L", "fused ms", "GFLOP/s", "unfused ms",
               "vs matmul rate", "speed-up");
  nlohmann::json rows = nlohmann::json::array();
  Progress progress("bench", static_cast<int64_t>(options.lengths.size()), 0, options.quiet);
  for (size_t i = 0; i < options.lengths.size(); ++i) {
    const int64_t L = options.lengths[i];
    const Tensor q = randn({B, H, L, D}, gen, dtype), k = randn({B, H, L, D}, gen, dtype),
                 v = randn({B, H, L, D}, gen, dtype);
    const Tensor dout = randn({B, H, L, D}, gen);
    const double fused_s = median_seconds(options.reps, [&] {
      AttentionResult out = attention(q, k, v, attn);
      if (options.backward) attention_backward(dout, q, k, v, out, attn);
    });
    // The unfused form keeps B*H*L*L scores: only where they fit in 1 GiB.
    double unfused_s = NAN;
    if (!options.backward && !options.causal && B * H * L * L * 4 <= (int64_t{1} << 30))
      unfused_s = median_seconds(options.reps, [&] {
        unfused_attention(q, k, v, 1.0 / std::sqrt(static_cast<double>(D)));
      });
    const double gemm_s = median_seconds(options.reps, [&] { matmul(q, k, {.transpose_b = true}); });
    const double causal_factor = options.causal ? 0.5 : 1.0;
    const double flops = 4.0 * B * H * L * L * D * causal_factor * (options.backward ? 3.5 : 1.0);
    const double gflops = flops / fused_s / 1e9;
    const double gemm_gflops = 2.0 * B * H * L * L * D / gemm_s / 1e9;
    std::fprintf(log, "%8lld %12.2f %10.1f %12s %13.0f%% %10s\n", static_cast<long long>(L),
                 fused_s * 1e3, gflops,
                 std::isnan(unfused_s) ? "-" : std::to_string(unfused_s * 1e3).substr(0, 8).c_str(),
                 100 * gflops / gemm_gflops,
                 std::isnan(unfused_s) ? "-" : (std::to_string(unfused_s / fused_s).substr(0, 4) + "x").c_str());
    rows.push_back({{"L", L},
                    {"fused_ms", fused_s * 1e3},
                    {"gflops", gflops},
                    {"unfused_ms", std::isnan(unfused_s) ? nlohmann::json() : nlohmann::json(unfused_s * 1e3)},
                    {"matmul_gflops", gemm_gflops},
                    {"fraction_of_matmul_rate", gflops / gemm_gflops}});
    progress.update(static_cast<int64_t>(i + 1));
  }
  progress.finish();
  return {{"batch", B},          {"heads", H},   {"dim", D},
          {"causal", options.causal}, {"backward", options.backward},
          {"dtype", options.dtype}, {"threads", num_threads()}, {"results", rows}};
}

// ---- qkv info -------------------------------------------------------------

namespace {

nlohmann::json safetensors_info(const std::string& path, std::FILE* log, bool list) {
  const auto file = safetensors::File::open(path);
  nlohmann::json tensors = nlohmann::json::array();
  uint64_t bytes = 0, elements = 0;
  for (const auto& t : file.tensors()) {
    tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape},
                       {"bytes", t.end - t.begin}});
    bytes += t.end - t.begin;
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    elements += n;
    if (list)
      std::fprintf(log, "%-48s %-5s %s\n", t.name.c_str(), t.dtype.c_str(),
                   shape_string(t.shape).c_str());
  }
  std::fprintf(log, "%s: %zu tensors, %llu elements, %llu bytes of data\n", path.c_str(),
               file.tensors().size(), static_cast<unsigned long long>(elements),
               static_cast<unsigned long long>(bytes));
  return {{"path", path},
          {"tensors", tensors},
          {"metadata", file.metadata()},
          {"elements", elements},
          {"data_bytes", bytes}};
}

nlohmann::json checkpoint_info(const std::string& path, std::FILE* log) {
  nlohmann::json out = safetensors_info(path, log, false);
  const TrainingState state = read_training_state(path);
  std::fprintf(log, "qkv checkpoint: step %lld (%lld skipped), lr %.4g of base %.4g, schedule %s\n",
               static_cast<long long>(state.step), static_cast<long long>(state.skipped_steps),
               state.lr, state.base_lr, state.schedule.name.c_str());
  out["training_state"] = {{"step", state.step},
                           {"skipped_steps", state.skipped_steps},
                           {"lr", state.lr},
                           {"base_lr", state.base_lr},
                           {"schedule", state.schedule.name},
                           {"extra", state.extra}};
  if (auto it = state.extra.find("model_config"); it != state.extra.end()) {
    const nn::GPTConfig config = nn::GPTConfig::from_json(it->second);
    std::fprintf(log, "model: GPT, %lld layers, d_model %lld, %lld heads, context %lld, vocabulary %lld\n",
                 static_cast<long long>(config.n_layer), static_cast<long long>(config.d_model),
                 static_cast<long long>(config.n_head), static_cast<long long>(config.context),
                 static_cast<long long>(config.vocab_size));
    out["model"] = nlohmann::json::parse(config.to_json());
  }
  return out;
}

}  // namespace

nlohmann::json run_info(const std::string& path, std::FILE* log) {
  std::error_code ec;
  QKV_CHECK(fs::exists(path, ec), "'", path, "' does not exist");
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    if (fs::exists(dir / kCheckpointFile, ec)) {  // a training run
      nlohmann::json out = checkpoint_info((dir / kCheckpointFile).string(), log);
      out["run"] = path;
      if (fs::exists(dir / kConfigFile, ec))
        out["config"] = nlohmann::json::parse(read_file((dir / kConfigFile).string(), "config"));
      out["tokenizer"] = TextCodec::load(path).kind();
      return out;
    }
    QKV_CHECK(fs::exists(dir / "config.json", ec), "'", path,
              "' is neither a qkv run (no ", kCheckpointFile,
              ") nor a model directory (no config.json)");
    nlohmann::json config;
    try {
      config = nlohmann::json::parse(read_file((dir / "config.json").string(), "config"));
    } catch (const nlohmann::json::exception& e) {
      throw Error(detail::str("'", (dir / "config.json").string(), "' is not valid JSON: ", e.what()));
    }
    std::fprintf(log, "model directory %s: model_type %s\n", path.c_str(),
                 config.value("model_type", std::string("?")).c_str());
    nlohmann::json out = {{"path", path}, {"config", config}};
    if (fs::exists(dir / "model.safetensors", ec))
      out["weights"] = safetensors_info((dir / "model.safetensors").string(), log, false);
    return out;
  }
  const auto file = safetensors::File::open(path);
  const auto format = file.metadata().find("format");
  if (format != file.metadata().end() && format->second == "qkv-checkpoint")
    return checkpoint_info(path, log);
  return safetensors_info(path, log, true);
}

}  // namespace qkv::cli
