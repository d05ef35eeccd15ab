// The qkv command: train, generate, eval, attend, bench, info, demo, embed,
// classify.
//
// Errors from the library or the command line print one line on stderr
// ("qkv: error: ...") and exit non-zero (2 for usage errors, 1 for the rest,
// 130 when training was interrupted); nothing is written on failure.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "classify.h"
#include "commands.h"
#include "demo.h"
#include "qkv/qkv.h"
#include "train.h"

namespace {

namespace fs = std::filesystem;

// Binds every setting of a config (TrainConfig, ClassifyConfig) as a --flag
// (underscores become dashes).
template <class Config>
void add_config_options(CLI::App& cmd, Config& config) {
  config.fields([&](const char* name, auto& field, const char* help) {
    std::string flag = std::string("--") + name;
    std::replace(flag.begin(), flag.end(), '_', '-');
    if constexpr (std::is_same_v<std::decay_t<decltype(field)>, bool>)
      cmd.add_flag(flag, field, help);
    else
      cmd.add_option(flag, field, help)->capture_default_str();
  });
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw qkv::Error("cannot open config file '" + path + "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw qkv::Error("config file '" + path + "' is not valid JSON: " + e.what());
  }
}

// The settings of a run: `defaults`, then a config file (--config, or the
// run's own config.json when resuming), then the flags given on the command
// line, which win. A file's "task": "lm" is the GPT trainer's own (its
// TrainConfig has no task field).
template <class Config>
Config resolve_config(CLI::App& cmd, const Config& defaults, const Config& flags,
                      const std::string& config_path, const std::string& resume_dir) {
  Config config = defaults;
  auto update = [&](nlohmann::json j, const std::string& source) {
    if constexpr (std::is_same_v<Config, qkv::cli::TrainConfig>)
      if (j.is_object() && j.value("task", nlohmann::json()) == "lm") j.erase("task");
    config.update_from_json(j, source);
  };
  if (!resume_dir.empty()) {
    const std::string run_config = (fs::path(resume_dir) / "config.json").string();
    if (!fs::exists(run_config))
      throw qkv::Error("--resume: '" + resume_dir + "' holds no config.json (not a qkv run)");
    update(read_json_file(run_config), run_config);
  }
  if (!config_path.empty()) update(read_json_file(config_path), config_path);
  // Copy over every flag that was given explicitly.
  Config given = flags;
  config.fields([&](const char* name, auto& field, const char*) {
    std::string flag = std::string("--") + name;
    std::replace(flag.begin(), flag.end(), '_', '-');
    if (cmd.get_option(flag)->count() == 0) return;
    given.fields([&](const char* other, auto& value, const char*) {
      if constexpr (std::is_same_v<std::decay_t<decltype(value)>, std::decay_t<decltype(field)>>)
        if (std::string(other) == name) field = value;
    });
  });
  return config;
}

// Which trainer `qkv train` runs, known before its flags are declared (each
// task has its own): --task, else the "task" of the --config file or of the
// --resume run's config.json, else "lm". Unreadable files are left to the
// real parse to report.
std::string train_task(int argc, char** argv) {
  int train = 1;
  while (train < argc && std::string(argv[train]) != "train") ++train;
  if (train == argc) return "lm";
  std::string task, config, resume;
  for (int i = train + 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag, std::string& out) {
      const std::string f = flag;
      if (arg == f && i + 1 < argc) out = argv[i + 1];
      if (arg.rfind(f + "=", 0) == 0) out = arg.substr(f.size() + 1);
    };
    value("--task", task);
    value("--config", config);
    value("--resume", resume);
  }
  if (!task.empty()) return task;
  for (const std::string& path :
       {config, resume.empty() ? std::string() : (fs::path(resume) / "config.json").string()}) {
    if (path.empty()) continue;
    std::ifstream in(path);
    const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("task") && j["task"].is_string()) return j["task"];
  }
  return "lm";
}

// Indented JSON; text that is not valid UTF-8 (it never should be) is
// replaced rather than failing the command at its very end.
std::string dump(const nlohmann::json& result) {
  return result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qkv: an engine for self-attention and Transformer models"};
  app.set_version_flag("--version", QKV_VERSION_STRING);
  app.require_subcommand(1);
  app.fallthrough();  // --threads / --json also after the subcommand
  int threads = 0;
  bool json = false;
  app.add_option("--threads", threads, "Number of threads (default: QKV_NUM_THREADS or all cores)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", json, "Print the results as JSON on stdout (the report goes to stderr)");

  // ---- train ----
  // --task lm (the default): a GPT on a text file; classify / mlm: BERT-family
  // encoders and the attention-pooling classifier on sentences (classify.h).
  const std::string task = train_task(argc, argv);
  const bool encoder_task = task == "classify" || task == "mlm";
  qkv::cli::TrainConfig train_defaults, train_flags;
  train_defaults.data = train_flags.data = QKV_DEFAULT_DATA;
  qkv::cli::ClassifyConfig classify_flags;
  qkv::cli::TrainRun train_run{.out = encoder_task ? "runs/" + task : "runs/shakespeare"};
  std::string train_config_path, resume_dir, lm_task = "lm";
  auto* train_cmd = app.add_subcommand(
      "train", encoder_task
                   ? "Fine-tune a BERT classifier, train the attention-pooling classifier "
                     "(--task classify) or pretrain a BERT encoder (--task mlm) on sentences"
                   : "Train a GPT language model on a text file (default: Tiny Shakespeare, "
                     "characters); --task classify / mlm: BERT-family encoders (see qkv train "
                     "--task classify --help)");
  train_cmd->add_option("--config", train_config_path,
                        "JSON file of settings (keys as the flags, with underscores)")
      ->check(CLI::ExistingFile);
  train_cmd->add_option("--out", train_run.out, "Run directory (checkpoint, config, loss curve)")
      ->capture_default_str();
  train_cmd->add_option("--resume", resume_dir, "Continue the run in this directory")
      ->check(CLI::ExistingDirectory);
  train_cmd->add_flag("--overwrite", train_run.overwrite, "Replace a run already in --out");
  train_cmd->add_flag("--quiet", train_run.quiet, "No progress bar");
  if (encoder_task) {
    add_config_options(*train_cmd, classify_flags);
  } else {
    train_cmd->add_option("--task", lm_task, "lm (a GPT), classify or mlm (BERT-family encoders)")
        ->capture_default_str();
    add_config_options(*train_cmd, train_flags);
  }

  // ---- generate ----
  qkv::cli::GenerateOptions gen;
  auto* gen_cmd = app.add_subcommand("generate", "Generate text from a trained checkpoint");
  gen_cmd->add_option("checkpoint", gen.checkpoint, "Run directory or checkpoint file")->required();
  gen_cmd->add_option("--prompt", gen.prompt, "Text to continue (\\n, \\t escapes)")->required();
  gen_cmd->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  gen_cmd->add_option("--temperature", gen.temperature, "0: greedy")->capture_default_str();
  gen_cmd->add_option("--top-k", gen.top_k, "Sample among the k most likely (0: all)")
      ->capture_default_str();
  gen_cmd->add_option("--top-p", gen.top_p, "Nucleus sampling threshold")->capture_default_str();
  gen_cmd->add_option("--stop", gen.stop, "Stop once the text ends with this (repeatable; escapes)");
  gen_cmd->add_option("--seed", gen.seed, "Sampling seed")->capture_default_str();
  gen_cmd->add_flag("--no-cache", gen.no_cache, "Recompute every step instead of the KV cache");

  // ---- eval ----
  qkv::cli::EvalOptions eval;
  auto* eval_cmd = app.add_subcommand("eval", "Loss and perplexity of a checkpoint on a text file");
  eval_cmd->add_option("checkpoint", eval.checkpoint, "Run directory or checkpoint file")->required();
  eval_cmd->add_option("--data", eval.data, "Text file")->required();
  eval_cmd->add_option("--batch", eval.batch, "Windows per batch")->capture_default_str();
  eval_cmd->add_flag("--quiet", eval.quiet, "No progress bar");

  // ---- attend ----
  qkv::cli::AttendOptions attend;
  auto* attend_cmd = app.add_subcommand(
      "attend", "Show a model's attention on a text: PNG heatmaps, an HTML head view, bertviz JSON");
  attend_cmd->add_option("checkpoint", attend.checkpoint, "Run directory or checkpoint file")
      ->required();
  attend_cmd->add_option("--text", attend.text, "Input text (\\n, \\t escapes)")->required();
  attend_cmd->add_option("--out", attend.out, "Directory for the files")->required();
  attend_cmd->add_option("--formats", attend.formats, "png, html, json (default: all)")
      ->delimiter(',');

  // ---- bench ----
  qkv::cli::BenchOptions bench;
  auto* bench_cmd = app.add_subcommand(
      "bench", "Time the fused attention kernel against the unfused form and the matmul rate");
  bench_cmd->add_option("--lengths", bench.lengths, "Sequence lengths")->delimiter(',')
      ->capture_default_str();
  bench_cmd->add_option("--batch", bench.batch, "Batch")->capture_default_str();
  bench_cmd->add_option("--heads", bench.heads, "Heads")->capture_default_str();
  bench_cmd->add_option("--dim", bench.dim, "Head dimension")->capture_default_str();
  bench_cmd->add_flag("--causal", bench.causal, "Causal attention");
  bench_cmd->add_flag("--backward", bench.backward, "Time forward + backward");
  bench_cmd->add_option("--dtype", bench.dtype, "f32 or bf16")->capture_default_str();
  bench_cmd->add_option("--reps", bench.reps, "Timed repetitions (median)")->capture_default_str();
  bench_cmd->add_option("--seed", bench.seed, "Seed of the inputs");
  bench_cmd->add_flag("--quiet", bench.quiet, "No progress bar");

  // ---- info ----
  std::string info_path;
  auto* info_cmd = app.add_subcommand(
      "info", "Inspect a safetensors file, a qkv checkpoint or run, or a model directory");
  info_cmd->add_option("path", info_path, "File or directory")->required();

  // ---- embed ----
  qkv::cli::EmbedOptions embed;
  auto* embed_cmd = app.add_subcommand(
      "embed", "Sentence embeddings from a sentence-transformers or BERT model directory");
  embed_cmd->add_option("model", embed.model, "Model directory (e.g. all-MiniLM-L6-v2)")->required();
  embed_cmd->add_option("--text", embed.texts, "A sentence (repeatable)");
  embed_cmd->add_option("--input", embed.input, "A file of sentences, one a line");
  embed_cmd->add_option("--out", embed.out, "Write the embeddings to a .safetensors, .npy or .tsv file");
  embed_cmd->add_option("--batch", embed.batch, "Sentences per batch")->capture_default_str();
  embed_cmd->add_flag("--bf16", embed.bf16, "bf16 matrix products and attention");

  // ---- classify ----
  qkv::cli::ClassifyOptions classify;
  auto* classify_cmd = app.add_subcommand(
      "classify", "Labels and probabilities of texts from a trained classifier directory");
  classify_cmd->add_option("model", classify.model, "Model directory, or a qkv train run")
      ->required();
  classify_cmd->add_option("--text", classify.texts, "A text (repeatable)");
  classify_cmd->add_option("--input", classify.input, "A file of texts, one a line");
  classify_cmd->add_option("--batch", classify.batch, "Texts per batch")->capture_default_str();

  // ---- demo ----
  qkv::cli::DemoOptions demo;
  demo.data_path = QKV_DEFAULT_DATA;
  auto* demo_cmd = app.add_subcommand(
      "demo", "Attention over the lines of Tiny Shakespeare, then an attention benchmark");
  demo_cmd->add_option("--data", demo.data_path, "Text file, one sequence per line")
      ->check(CLI::ExistingFile);
  demo_cmd->add_flag("--quick", demo.quick, "Smaller sizes (seconds instead of a minute)");
  demo_cmd->add_option("--seed", demo.seed, "Seed of the benchmark inputs");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "qkv: error: %s (see qkv --help)\n", e.what());
    return 2;
  }

  std::FILE* log = json ? stderr : stdout;  // stdout stays parseable JSON
  try {
    if (threads > 0) qkv::set_num_threads(threads);
    nlohmann::json result;
    if (*train_cmd) {
      if (!resume_dir.empty()) {
        train_run.out = resume_dir;
        train_run.resume = true;
      }
      if (encoder_task) {
        const auto config = resolve_config(*train_cmd, qkv::cli::ClassifyConfig{}, classify_flags,
                                           train_config_path, resume_dir);
        result = qkv::cli::run_classify_train(
            config, {.out = train_run.out,
                     .resume = train_run.resume,
                     .overwrite = train_run.overwrite,
                     .quiet = train_run.quiet,
                     .log = log});
      } else {
        if (task != "lm")
          throw qkv::Error("--task must be lm, classify or mlm, got '" + task + "'");
        const auto config = resolve_config(*train_cmd, train_defaults, train_flags,
                                           train_config_path, resume_dir);
        train_run.log = log;
        result = qkv::cli::run_train(config, train_run);
      }
      if (json) std::cout << dump(result) << "\n";
      return result.value("interrupted", false) ? 130 : 0;
    }
    if (*gen_cmd) {
      gen.prompt = qkv::cli::unescape(gen.prompt);
      for (auto& stop : gen.stop) stop = qkv::cli::unescape(stop);
      gen.stream = !json;
      result = qkv::cli::run_generate(gen, log);
    } else if (*eval_cmd) {
      result = qkv::cli::run_eval(eval, log);
    } else if (*attend_cmd) {
      attend.text = qkv::cli::unescape(attend.text);
      result = qkv::cli::run_attend(attend, log);
    } else if (*bench_cmd) {
      result = qkv::cli::run_bench(bench, log);
    } else if (*info_cmd) {
      auto encoder_run = qkv::cli::encoder_run_info(info_path, log);
      result = encoder_run ? *encoder_run : qkv::cli::run_info(info_path, log);
    } else if (*embed_cmd) {
      embed.json = json;
      result = qkv::cli::run_embed(embed, log);
    } else if (*classify_cmd) {
      result = qkv::cli::run_classify(classify, log);
    } else if (*demo_cmd) {
      demo.log = log;
      result = qkv::cli::run_demo(demo);
    }
    if (json) std::cout << dump(result) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
