#include "train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "codec.h"
#include "config_fields.h"
#include "metrics_log.h"
#include "progress.h"
#include "qkv/autograd.h"
#include "qkv/checkpoint.h"
#include "qkv/error.h"
#include "qkv/file.h"
#include "qkv/optim.h"
#include "qkv/threads.h"
#include "qkv/trainer.h"
#include "run_dir.h"
#include "stop_signals.h"

namespace qkv::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string read_text_file(const std::string& path) {
  QKV_CHECK(!path.empty(), "no data file given (--data)");
  return read_file(path, "data file");
}

// B windows of context + 1 tokens at random starts: inputs and next-token targets.
std::pair<Tensor, Tensor> random_batch(const std::vector<int32_t>& ids, int64_t batch,
                                       int64_t context, Generator& generator) {
  Tensor inputs = Tensor::empty({batch, context}, DType::i32);
  Tensor targets = Tensor::empty({batch, context}, DType::i32);
  const auto starts = static_cast<uint64_t>(ids.size()) - static_cast<uint64_t>(context);
  for (int64_t b = 0; b < batch; ++b) {
    const auto start = static_cast<int64_t>(generator.next_u64() % starts);
    std::copy_n(ids.begin() + start, context, inputs.data<int32_t>() + b * context);
    std::copy_n(ids.begin() + start + 1, context, targets.data<int32_t>() + b * context);
  }
  return {inputs, targets};
}


Schedule make_schedule(const TrainConfig& c) {
  if (c.schedule == "cosine") return Schedule::cosine_with_warmup(c.warmup, c.steps, c.min_lr_ratio);
  if (c.schedule == "linear") return Schedule::linear_with_warmup(c.warmup, c.steps);
  return Schedule::constant();
}

}  // namespace

nlohmann::json TrainConfig::to_json() const { return fields_to_json(*this); }

void TrainConfig::update_from_json(const nlohmann::json& json, const std::string& source) {
  update_fields_from_json(*this, json, source);
}

void TrainConfig::validate() const {
  QKV_CHECK(tokenizer == "char" || tokenizer == "bpe", "--tokenizer must be char or bpe, got '",
            tokenizer, "'");
  QKV_CHECK(val_fraction > 0 && val_fraction < 1, "--val-fraction must be in (0, 1), got ",
            val_fraction);
  QKV_CHECK(steps > 0, "--steps must be positive, got ", steps);
  QKV_CHECK(batch > 0, "--batch must be positive, got ", batch);
  QKV_CHECK(grad_accum > 0, "--grad-accum must be positive, got ", grad_accum);
  QKV_CHECK(lr > 0 && std::isfinite(lr), "--lr must be positive, got ", lr);
  QKV_CHECK(min_lr_ratio >= 0 && min_lr_ratio <= 1, "--min-lr-ratio must be in [0, 1], got ",
            min_lr_ratio);
  QKV_CHECK(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  QKV_CHECK(schedule == "cosine" || schedule == "linear" || schedule == "constant",
            "--schedule must be cosine, linear or constant, got '", schedule, "'");
  QKV_CHECK(weight_decay >= 0, "--weight-decay must be >= 0, got ", weight_decay);
  QKV_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
            "--beta1 and --beta2 must be in [0, 1), got ", beta1, " and ", beta2);
  QKV_CHECK(clip >= 0, "--clip must be >= 0 (0: off), got ", clip);
  QKV_CHECK(eval_interval > 0, "--eval-interval must be positive, got ", eval_interval);
  QKV_CHECK(eval_windows >= 0, "--eval-windows must be >= 0, got ", eval_windows);
  QKV_CHECK(checkpoint_interval > 0, "--checkpoint-interval must be positive, got ",
            checkpoint_interval);
  QKV_CHECK(time_limit >= 0, "--time-limit must be >= 0, got ", time_limit);
  QKV_CHECK(sample_tokens >= 0, "--sample-tokens must be >= 0, got ", sample_tokens);
  QKV_CHECK(temperature >= 0, "--temperature must be >= 0, got ", temperature);
  model_config(2).validate();
}

nn::GPTConfig TrainConfig::model_config(int64_t vocab_size) const {
  const nn::GPTPositions p = from_name(nn::kGPTPositionNames, positions, "--positions");
  return {.vocab_size = vocab_size,
          .context = context,
          .n_layer = layers,
          .n_head = heads,
          .d_model = d_model,
          .dropout = dropout,
          .tied_embeddings = !untied,
          .positions = p};
}

EvalResult evaluate(nn::GPT& model, const std::vector<int32_t>& ids, int64_t batch,
                    int64_t max_windows, const std::function<void(int64_t, int64_t)>& on_batch) {
  const int64_t context = model.config().context;
  const int64_t n = static_cast<int64_t>(ids.size()) - 1;  // tokens with a next token
  QKV_CHECK(n >= 1, "evaluation needs at least 2 tokens, got ", ids.size());
  std::vector<int64_t> starts;
  for (int64_t s = 0; s < n; s += context) starts.push_back(s);
  if (max_windows > 0 && static_cast<int64_t>(starts.size()) > max_windows) {
    std::vector<int64_t> kept;
    for (int64_t i = 0; i < max_windows; ++i)
      kept.push_back(starts[i * static_cast<int64_t>(starts.size()) / max_windows]);
    starts = std::move(kept);
  }
  const bool was_training = model.training();
  model.eval();
  autograd::NoGradGuard no_grad;
  double total = 0;
  int64_t tokens = 0;
  for (size_t first = 0; first < starts.size(); first += batch) {
    const size_t count = std::min<size_t>(batch, starts.size() - first);
    // Windows in one batch share a length; the last, shorter window is padded
    // with ignored targets.
    Tensor inputs = Tensor::zeros({static_cast<int64_t>(count), context}, DType::i32);
    Tensor targets = Tensor::full({static_cast<int64_t>(count), context}, -1, DType::i32);
    int64_t batch_tokens = 0;
    for (size_t w = 0; w < count; ++w) {
      const int64_t start = starts[first + w];
      const int64_t length = std::min(context, n - start);
      std::copy_n(ids.begin() + start, length, inputs.data<int32_t>() + w * context);
      std::copy_n(ids.begin() + start + 1, length, targets.data<int32_t>() + w * context);
      batch_tokens += length;
    }
    const double loss = model.loss(inputs, targets).value().item();
    total += loss * batch_tokens;
    tokens += batch_tokens;
    if (on_batch)
      on_batch(static_cast<int64_t>(first + count), static_cast<int64_t>(starts.size()));
  }
  model.train(was_training);
  return {total / tokens, tokens};
}

nlohmann::json run_train(const TrainConfig& config, const TrainRun& run) {
  std::FILE* log = run.log;
  config.validate();
  QKV_CHECK(!run.out.empty(), "no run directory given (--out)");
  const std::string checkpoint_path = (fs::path(run.out) / kCheckpointFile).string();
  std::error_code ec;
  if (run.resume) {
    QKV_CHECK(fs::is_regular_file(checkpoint_path, ec), "--resume: '", run.out,
              "' holds no checkpoint (", kCheckpointFile, ")");
  } else if (!run.overwrite) {
    QKV_CHECK(!fs::exists(checkpoint_path, ec), "'", run.out,
              "' already holds a run; pass --resume to continue it or --overwrite to start over");
  }

  // ---- data and tokenizer (everything is checked before the run directory is touched) ----
  const std::string corpus = read_text_file(config.data);
  QKV_CHECK(!corpus.empty(), "data file '", config.data, "' is empty");
  const size_t split = static_cast<size_t>(static_cast<double>(corpus.size()) * (1 - config.val_fraction));
  const TextCodec codec = run.resume ? TextCodec::load(run.out)
                                     : TextCodec::train(config.tokenizer,
                                                        config.tokenizer == "char"
                                                            ? std::string_view(corpus)
                                                            : std::string_view(corpus).substr(0, split),
                                                        config.bpe_vocab);
  std::vector<int32_t> ids = codec.encode(corpus);
  const auto train_tokens = static_cast<int64_t>(
      static_cast<double>(ids.size()) * (1 - config.val_fraction));
  std::vector<int32_t> val_ids(ids.begin() + train_tokens, ids.end());
  ids.resize(train_tokens);
  QKV_CHECK(static_cast<int64_t>(ids.size()) > config.context + 1 &&
                static_cast<int64_t>(val_ids.size()) > 1,
            "the corpus '", config.data, "' is too short: ", ids.size(), " training tokens and ",
            val_ids.size(), " validation tokens for a context of ", config.context,
            " (need more than context + 1 training tokens)");

  // ---- model, optimizer, trainer ----
  Generator init(config.seed);
  nn::GPT model(config.model_config(codec.vocab_size()), init);
  AdamW optimizer(optimizer_parameters(model), {.lr = config.lr,
                                                .beta1 = config.beta1,
                                                .beta2 = config.beta2,
                                                .weight_decay = config.weight_decay});
  Trainer trainer(model, optimizer, config.lr, make_schedule(config),
                  {.grad_accumulation_steps = config.grad_accum, .clip_norm = config.clip});
  Generator data_generator(config.seed + 1);
  trainer.track_generator("data", data_generator);
  trainer.track_generator("dropout", model.dropout_generator());

  double elapsed_before = 0;
  MetricsLog rows({"train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"});
  if (run.resume) {
    const TrainingState state = read_training_state(checkpoint_path);
    trainer.resume(checkpoint_path);
    if (auto it = state.extra.find("elapsed_s"); it != state.extra.end())
      elapsed_before = std::stod(it->second);
    rows.load((fs::path(run.out) / kLossFile).string(), trainer.steps());
    std::fprintf(log, "resuming '%s' at step %lld of %lld\n", run.out.c_str(),
                 static_cast<long long>(trainer.steps()), static_cast<long long>(config.steps));
  } else {
    fs::create_directories(run.out, ec);
    QKV_CHECK(!ec, "cannot create the run directory '", run.out, "': ", ec.message());
    codec.save(run.out);
  }
  write_file_atomically((fs::path(run.out) / kConfigFile).string(), config.to_json().dump(2) + "\n");

  std::fprintf(log,
               "training a %lld-layer GPT (d_model %lld, %lld heads, context %lld, %s positions; "
               "%s parameters) on '%s': %s tokenizer, vocabulary %lld, %zu training and %zu "
               "validation tokens; batch %lld; threads: %d%s\n",
               static_cast<long long>(config.layers), static_cast<long long>(config.d_model),
               static_cast<long long>(config.heads), static_cast<long long>(config.context),
               config.positions.c_str(), format_count(static_cast<double>(model.num_parameters())).c_str(),
               config.data.c_str(),
               codec.kind(), static_cast<long long>(codec.vocab_size()), ids.size(), val_ids.size(),
               static_cast<long long>(config.batch * config.grad_accum), num_threads(),
               config.bf16 ? ", bf16 autocast" : "");
  std::fflush(log);

  // ---- the loop ----
  auto save = [&](double elapsed) {
    TrainingState state = trainer.state();
    state.extra["elapsed_s"] = std::to_string(elapsed);
    state.extra["model_config"] = model.config().to_json();
    state.extra["tokenizer"] = codec.kind();
    save_checkpoint(checkpoint_path, model, optimizer, state);
    write_file_atomically((fs::path(run.out) / kLossFile).string(), rows.csv());
  };
  StopSignals signals;
  Progress progress("train", config.steps, trainer.steps(), run.quiet);
  const auto began = Clock::now();
  auto elapsed = [&] {
    return elapsed_before + std::chrono::duration<double>(Clock::now() - began).count();
  };
  const int64_t tokens_per_step = config.batch * config.grad_accum * config.context;
  int64_t steps_this_run = 0;
  double train_loss_sum = 0, last_train_loss = NAN, last_val_loss = NAN;
  int64_t train_loss_count = 0;
  bool interrupted = false, timed_out = false;
  double loop_seconds = 0;
  while (trainer.steps() < config.steps) {
    if (signals.raised()) {
      interrupted = true;
      break;
    }
    if (config.time_limit > 0 && elapsed() >= config.time_limit) {
      timed_out = true;
      break;
    }
    const auto step_began = Clock::now();
    const double loss = trainer.step([&] {
      auto [inputs, targets] = random_batch(ids, config.batch, config.context, data_generator);
      autograd::AutocastGuard autocast(config.bf16);
      return model.loss(inputs, targets);
    });
    loop_seconds += std::chrono::duration<double>(Clock::now() - step_began).count();
    ++steps_this_run;
    train_loss_sum += loss;
    ++train_loss_count;
    const double tokens_per_s = steps_this_run * tokens_per_step / loop_seconds;
    const int64_t step = trainer.steps();
    char loss_text[32];
    std::snprintf(loss_text, sizeof loss_text, "%.4f", loss);
    progress.update(step, {{"loss", loss_text}, {"tok/s", format_count(tokens_per_s)}});
    const bool last = step == config.steps;
    if (step % config.eval_interval == 0 || last) {
      last_train_loss = train_loss_sum / train_loss_count;
      train_loss_sum = 0;
      train_loss_count = 0;
      last_val_loss = evaluate(model, val_ids, config.batch, config.eval_windows).loss;
      rows.add(step, {last_train_loss, last_val_loss, optimizer.lr(), tokens_per_s, elapsed()});
      char line[160];
      std::snprintf(line, sizeof line, "step %lld: train loss %.4f, val loss %.4f, lr %.3g, %s",
                    static_cast<long long>(step), last_train_loss, last_val_loss, optimizer.lr(),
                    format_duration(elapsed()).c_str());
      progress.message(line);
    }
    if (step % config.checkpoint_interval == 0 || last) save(elapsed());
  }
  progress.finish();
  if (interrupted || timed_out) {
    save(elapsed());
    std::fprintf(log, "%s at step %lld; checkpoint saved in '%s' (qkv train --resume %s continues)\n",
                 interrupted ? "interrupted" : "time limit reached",
                 static_cast<long long>(trainer.steps()), run.out.c_str(), run.out.c_str());
  }

  nlohmann::json result = {{"run", run.out},
                           {"steps", trainer.steps()},
                           {"interrupted", interrupted},
                           {"time_limit_reached", timed_out},
                           {"elapsed_s", elapsed()},
                           {"tokens_per_s", loop_seconds > 0 ? steps_this_run * tokens_per_step / loop_seconds : 0.0},
                           {"parameters", model.num_parameters()},
                           {"config", config.to_json()}};
  if (interrupted) return result;

  // ---- the final validation loss over the whole split, and a sample ----
  if (timed_out || rows.last_step() != trainer.steps() || config.eval_windows > 0)
    last_val_loss = evaluate(model, val_ids, config.batch).loss;
  std::fprintf(log, "\nvalidation loss %.4f nats/token (perplexity %.2f) after %lld steps, %s\n",
               last_val_loss, std::exp(last_val_loss), static_cast<long long>(trainer.steps()),
               format_duration(elapsed()).c_str());
  result["val_loss"] = last_val_loss;
  result["val_perplexity"] = std::exp(last_val_loss);
  result["train_loss"] = last_train_loss;
  if (config.sample_tokens > 0) {
    std::vector<int32_t> prompt = codec.encode(config.sample_prompt);
    QKV_CHECK(!prompt.empty(), "--sample-prompt is empty");
    model.eval();
    const auto sample = model.generate(prompt, {.max_new_tokens = config.sample_tokens,
                                                .temperature = config.temperature,
                                                .top_k = config.top_k,
                                                .seed = config.seed});
    const std::string text = valid_utf8(codec.decode(sample));
    std::fprintf(log, "\n---- sample (temperature %g) ----\n%s%s\n----\n", config.temperature,
                 config.sample_prompt.c_str(), text.c_str());
    result["sample"] = config.sample_prompt + text;
  }
  return result;
}

}  // namespace qkv::cli
