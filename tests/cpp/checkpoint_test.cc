// Checkpoints and the Trainer (qkv/checkpoint.h, qkv/trainer.h): a run that
// stops, checkpoints and resumes in a new process gives bitwise the losses
// of one that never stopped; a process killed in the middle of a checkpoint
// write leaves the previous checkpoint intact; NaN losses stop or skip
// without touching the parameters; strict loading names what does not fit.
//
// The new processes are this test binary again (/proc/self/exe) running
// CheckpointChild.Main, told what to do by environment variables.
#include "qkv/checkpoint.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "qkv/autograd.h"
#include "qkv/module.h"
#include "qkv/optim.h"
#include "qkv/safetensors.h"
#include "qkv/trainer.h"

extern char** environ;

namespace qkv {
namespace {

namespace fs = std::filesystem;
using autograd::Variable;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Tensor Normal(const Shape& shape, Generator& gen, double scale) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (double& x : v) x = scale * gen.normal();
  return Tensor::from_values(v, shape);
}

// torch.nn.Linear's parameters (weight [out, in], bias [out]).
class Dense : public nn::Module {
 public:
  Dense(int64_t in, int64_t out, Generator& gen) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    weight_ = register_parameter("weight", Normal({out, in}, gen, bound));
    bias_ = register_parameter("bias", Normal({out}, gen, bound));
  }
  Variable forward(const Variable& x) const { return autograd::linear(x, weight_, bias_); }
  const char* type_name() const override { return "Dense"; }

 private:
  Variable weight_, bias_;
};

struct MlpConfig {
  int64_t in = 6, hidden = 16, classes = 4;
  int64_t layers = 2;  // 2 or 3 (another architecture)
  double dropout = 0.25;
};

// Linear -> ReLU -> dropout -> Linear (-> ReLU -> Linear), cross-entropy loss.
class Mlp : public nn::Module {
 public:
  Mlp(const MlpConfig& c, Generator& init, Generator& dropout_gen)
      : config_(c), dropout_gen_(dropout_gen) {
    fc1_ = register_module("fc1", std::make_shared<Dense>(c.in, c.hidden, init));
    fc2_ = register_module(
        "fc2", std::make_shared<Dense>(c.hidden, c.layers == 2 ? c.classes : c.hidden, init));
    if (c.layers == 3)
      fc3_ = register_module("fc3", std::make_shared<Dense>(c.hidden, c.classes, init));
  }
  Variable loss(const Tensor& x, const Tensor& targets) const {
    Variable h = autograd::relu(fc1_->forward(Variable(x)));
    h = autograd::dropout(h, config_.dropout, dropout_gen_, training());
    h = fc2_->forward(h);
    if (fc3_) h = fc3_->forward(autograd::relu(h));
    return autograd::cross_entropy(h, targets);
  }
  const char* type_name() const override { return "Mlp"; }

 private:
  MlpConfig config_;
  Generator& dropout_gen_;
  std::shared_ptr<Dense> fc1_, fc2_, fc3_;
};

// A whole training setup: generators, model, optimizer, trainer, data.
struct TrainingRun {
  explicit TrainingRun(const MlpConfig& c = {},
                       TrainerOptions options = {.grad_accumulation_steps = 2, .clip_norm = 0.5})
      : config(c),
        init_gen(7),
        dropout_gen(11),
        data_gen(13),
        model(c, init_gen, dropout_gen),
        optimizer(optimizer_parameters(model), AdamOptions{.lr = 1e-2, .weight_decay = 0.01}),
        trainer(model, optimizer, 3e-2, Schedule::cosine_with_warmup(3, 40, 0.1), options) {
    trainer.track_generator("dropout", dropout_gen);
    trainer.track_generator("data", data_gen);
  }
  // A fresh batch from the data generator (so the data order is checkpointed too).
  Variable micro_batch_loss() {
    const Tensor x = Normal({5, config.in}, data_gen, 1.0);
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) t.push_back(static_cast<double>(data_gen.next_u64() % 4));
    return model.loss(x, Tensor::from_values(t, {5}, DType::i64));
  }
  std::vector<double> train(int64_t steps) {
    std::vector<double> losses;
    for (int64_t i = 0; i < steps; ++i)
      losses.push_back(trainer.step([&] { return micro_batch_loss(); }));
    return losses;
  }

  MlpConfig config;
  Generator init_gen, dropout_gen, data_gen;
  Mlp model;
  AdamW optimizer;
  Trainer trainer;
};

std::string Bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  std::ostringstream s;
  s << std::hex << u;
  return s.str();
}

std::vector<std::string> ReadLines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

template <class Fn>
std::string ErrorOf(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected qkv::Error";
  return "";
}

void ExpectContains(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
}

void ExpectSameState(const std::map<std::string, Tensor>& a,
                     const std::map<std::string, Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    const Tensor& u = b.at(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    ASSERT_EQ(t.dtype(), u.dtype()) << name;
    const Tensor x = t.contiguous(), y = u.contiguous();
    EXPECT_EQ(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()), 0) << name << " differs";
  }
}

std::map<std::string, Tensor> Cloned(const std::map<std::string, Tensor>& state) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : state) out.emplace(name, t.clone());
  return out;
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("qkv_checkpoint_test_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

// Starts this binary as CheckpointChild.Main with `env` added, its output
// appended to `log`; returns its pid.
pid_t SpawnChild(const std::map<std::string, std::string>& env, const fs::path& log) {
  std::vector<std::string> strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string key = entry.substr(0, entry.find('='));
    if (!env.count(key) && key.rfind("GTEST_", 0) != 0) strings.push_back(entry);
  }
  for (const auto& [key, value] : env) strings.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (std::string& s : strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = fs::read_symlink("/proc/self/exe").string();
  std::string filter = "--gtest_filter=CheckpointChild.Main";
  char* argv[] = {exe.data(), filter.data(), nullptr};
  // The child's output goes to a log beside the test's files, not into ours.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "posix_spawn: " << std::strerror(rc);
  return pid;
}

int WaitChild(pid_t pid) {
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  return status;
}

bool WaitForFile(const fs::path& path, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!fs::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

// The child's side. QKV_CKPT_CHILD names the task:
//   resume: resume from QKV_CKPT_PATH, train QKV_CKPT_STEPS steps, write the
//           losses' bits to QKV_CKPT_OUT and the weights to QKV_CKPT_OUT.model
//   save:   train QKV_CKPT_STEPS steps and checkpoint to QKV_CKPT_PATH (the
//           parent sets QKV_TEST_CHECKPOINT_PAUSE_FILE and kills it)
//   loop:   model weights all equal to i, checkpoint with step i, for i = 1, 2, ...
//           forever (killed at a random time)
TEST(CheckpointChild, Main) {
  const std::string task = Env("QKV_CKPT_CHILD");
  if (task.empty()) GTEST_SKIP() << "runs only as a child of the other tests";
  const std::string path = Env("QKV_CKPT_PATH");
  const int64_t steps = std::atoll(Env("QKV_CKPT_STEPS").c_str());
  TrainingRun run(task == "loop" ? MlpConfig{.hidden = 2048} : MlpConfig{});
  if (task == "resume") {
    run.trainer.resume(path);
    std::ofstream out(Env("QKV_CKPT_OUT"));
    for (double loss : run.train(steps)) out << Bits(loss) << "\n";
    save_model(Env("QKV_CKPT_OUT") + ".model", run.model);
  } else if (task == "save") {
    run.train(steps);
    run.trainer.checkpoint(path);
  } else if (task == "loop") {
    std::ofstream(Env("QKV_CKPT_READY")) << "ready\n";
    for (int64_t i = 1;; ++i) {
      for (auto& [name, t] : run.model.state_dict())
        t.copy_(Tensor::full({}, static_cast<double>(i)));
      TrainingState state;
      state.step = i;
      save_checkpoint(path, run.model, run.optimizer, state);
    }
  } else {
    FAIL() << "unknown child task " << task;
  }
}

// ---- exact resume ------------------------------------------------------------------

TEST(Checkpoint, ResumeInNewProcessGivesBitwiseEqualLosses) {
  constexpr int64_t kHalf = 6;
  TempDir dir;
  const fs::path checkpoint = dir / "run.safetensors";

  TrainingRun whole;
  const std::vector<double> uninterrupted = whole.train(2 * kHalf);
  {
    TrainingRun first;
    const std::vector<double> losses = first.train(kHalf);
    for (int64_t i = 0; i < kHalf; ++i) ASSERT_EQ(Bits(losses[i]), Bits(uninterrupted[i])) << i;
    first.trainer.checkpoint(checkpoint.string());
  }  // everything of the first half is gone

  const fs::path out = dir / "losses.txt";
  const pid_t pid = SpawnChild({{"QKV_CKPT_CHILD", "resume"},
                                {"QKV_CKPT_PATH", checkpoint.string()},
                                {"QKV_CKPT_STEPS", std::to_string(kHalf)},
                                {"QKV_CKPT_OUT", out.string()}},
                               dir / "child.log");
  const int status = WaitChild(pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status << ":\n"
                                                             << ReadBytes(dir / "child.log");
  const std::vector<std::string> resumed = ReadLines(out);
  ASSERT_EQ(resumed.size(), static_cast<size_t>(kHalf));
  for (int64_t i = 0; i < kHalf; ++i)
    EXPECT_EQ(resumed[i], Bits(uninterrupted[kHalf + i])) << "step " << kHalf + i;
  // The weights at the end are the same bits too.
  ExpectSameState(safetensors::load(out.string() + ".model"), whole.model.state_dict());
  // The losses did change over the run (the test would be vacuous otherwise).
  EXPECT_NE(uninterrupted.front(), uninterrupted.back());
}

TEST(Checkpoint, RoundTripsTrainingStateAndOptimizerExactly) {
  TempDir dir;
  const std::string path = (dir / "c.safetensors").string();
  TrainingRun a;
  a.train(3);
  TrainingState state = a.trainer.state();
  state.extra["note"] = "hello \"quoted\" \xc3\xa9";
  state.rng_states["max"] = std::numeric_limits<uint64_t>::max();
  state.base_lr = 0.1 + 0.2;  // not a short decimal
  save_checkpoint(path, a.model, a.optimizer, state);

  TrainingRun b;
  const TrainingState loaded = load_checkpoint(path, b.model, b.optimizer);
  EXPECT_EQ(loaded.step, 3);
  EXPECT_EQ(Bits(loaded.base_lr), Bits(0.1 + 0.2));
  EXPECT_EQ(Bits(loaded.lr), Bits(a.optimizer.lr()));
  EXPECT_EQ(Bits(b.optimizer.lr()), Bits(a.optimizer.lr()));
  EXPECT_EQ(loaded.schedule, a.trainer.schedule().spec);
  EXPECT_EQ(loaded.rng_states, state.rng_states);
  EXPECT_EQ(loaded.extra, state.extra);
  ExpectSameState(b.model.state_dict(), a.model.state_dict());
  ExpectSameState(b.optimizer.state_dict(), a.optimizer.state_dict());
  // The file's names: model.<torch name>, optimizer.<param>.<field>.
  const safetensors::File file = safetensors::File::open(path);
  EXPECT_TRUE(file.contains("model.fc1.weight"));
  EXPECT_TRUE(file.contains("optimizer.fc2.bias.exp_avg_sq"));
  EXPECT_TRUE(file.contains("optimizer.fc1.weight.step"));
  EXPECT_EQ(file.metadata().at("format"), "qkv-checkpoint");
  // The schedule is rebuilt from the checkpoint's spec.
  const Schedule rebuilt = Schedule::from_spec(loaded.schedule);
  for (int64_t s : {0, 2, 5, 39})
    EXPECT_EQ(rebuilt.multiplier(s), a.trainer.schedule().multiplier(s));
  EXPECT_THROW(Schedule::from_spec({"custom", {}}), Error);
}

// ---- strict loading -------------------------------------------------------------------

TEST(Checkpoint, AnotherArchitectureFailsWithTheListsOfNames) {
  TempDir dir;
  const std::string path = (dir / "c.safetensors").string();
  TrainingRun a;
  a.train(1);
  a.trainer.checkpoint(path);

  TrainingRun wider(MlpConfig{.hidden = 32});
  const auto before = Cloned(wider.model.state_dict());
  std::string message = ErrorOf([&] { wider.trainer.resume(path); });
  ExpectContains(message, {path, "size mismatch", "fc1.weight (checkpoint [16, 6], model [32, 6])",
                           "fc2.weight"});
  ExpectSameState(wider.model.state_dict(), before);

  TrainingRun deeper(MlpConfig{.layers = 3});
  message = ErrorOf([&] { load_checkpoint(path, deeper.model, deeper.optimizer); });
  ExpectContains(message, {path, "missing keys: fc3.bias fc3.weight", "unexpected keys: none"});

  TrainingRun shallow;
  TempDir dir3;
  const std::string deep_path = (dir3 / "deep.safetensors").string();
  save_checkpoint(deep_path, deeper.model, deeper.optimizer, {});
  message = ErrorOf([&] { load_checkpoint(deep_path, shallow.model, shallow.optimizer); });
  ExpectContains(message, {deep_path, "unexpected keys: fc3.bias fc3.weight", "size mismatch"});

  // The model fits but the optimizer does not (SGD with momentum vs AdamW's
  // state): nothing changes.
  TrainingRun other;
  SGD sgd(optimizer_parameters(other.model), {.lr = 0.1, .momentum = 0.9});
  const auto model_before = Cloned(other.model.state_dict());
  message = ErrorOf([&] { load_checkpoint(path, other.model, sgd); });
  ExpectContains(message, {path, "optimizer state", "exp_avg"});
  ExpectSameState(other.model.state_dict(), model_before);

  // Weights-only files are not checkpoints, and vice versa load_model reads both.
  const std::string weights = (dir / "w.safetensors").string();
  save_model(weights, a.model);
  ExpectContains(ErrorOf([&] { load_checkpoint(weights, other.model, other.optimizer); }),
                 {weights, "not a qkv checkpoint"});
  TrainingRun fresh;
  load_model(path, fresh.model);
  ExpectSameState(fresh.model.state_dict(), a.model.state_dict());
  ExpectContains(ErrorOf([&] { load_model(weights, deeper.model); }),
                 {"load_model", weights, "missing keys: fc3.bias fc3.weight"});
}

TEST(Checkpoint, ResumeChecksScheduleBaseLrAndGenerators) {
  TempDir dir;
  const std::string path = (dir / "c.safetensors").string();
  TrainingRun a;
  a.train(1);
  a.trainer.checkpoint(path);
  {
    TrainingRun b;
    Trainer t(b.model, b.optimizer, 3e-2, Schedule::linear_with_warmup(3, 40));
    t.track_generator("dropout", b.dropout_gen);
    t.track_generator("data", b.data_gen);
    ExpectContains(ErrorOf([&] { t.resume(path); }),
                   {path, "schedule cosine_with_warmup(min_lr_ratio=0.1", "linear_with_warmup("});
  }
  {
    TrainingRun b;
    Trainer t(b.model, b.optimizer, 1e-3, Schedule::cosine_with_warmup(3, 40, 0.1));
    ExpectContains(ErrorOf([&] { t.resume(path); }), {"base_lr is 0.03", "0.001"});
  }
  {
    TrainingRun b;
    Trainer t(b.model, b.optimizer, 3e-2, Schedule::cosine_with_warmup(3, 40, 0.1));
    t.track_generator("dropout", b.dropout_gen);
    t.track_generator("shuffle", b.data_gen);
    ExpectContains(ErrorOf([&] { t.resume(path); }),
                   {"missing in the checkpoint: shuffle", "not tracked: data"});
  }
}

// ---- crash safety ------------------------------------------------------------------------

TEST(Checkpoint, KilledDuringWriteLeavesPreviousCheckpointIntact) {
  TempDir dir;
  const fs::path path = dir / "run.safetensors";
  TrainingRun good;
  good.train(3);
  good.trainer.checkpoint(path.string());
  const std::string good_bytes = ReadBytes(path);

  const fs::path marker = dir / "paused";
  const pid_t pid = SpawnChild({{"QKV_CKPT_CHILD", "save"},
                                {"QKV_CKPT_PATH", path.string()},
                                {"QKV_CKPT_STEPS", "5"},
                                {"QKV_TEST_CHECKPOINT_PAUSE_FILE", marker.string()}},
                               dir / "child.log");
  const bool paused = WaitForFile(marker, 30.0);
  ::kill(pid, SIGKILL);
  const int status = WaitChild(pid);
  ASSERT_TRUE(paused) << "the child never reached the middle of its write:\n"
                      << ReadBytes(dir / "child.log");
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

  // The final name still holds the good checkpoint, byte for byte...
  EXPECT_EQ(ReadBytes(path), good_bytes);
  TrainingRun resumed;
  resumed.trainer.resume(path.string());
  EXPECT_EQ(resumed.trainer.steps(), 3);
  ExpectSameState(resumed.model.state_dict(), good.model.state_dict());
  // ...and the half-written bytes are only in the temporary file beside it.
  int partial = 0;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".run.safetensors.tmp.", 0) == 0) {
      ++partial;
      EXPECT_LT(fs::file_size(entry.path()), good_bytes.size());
      EXPECT_THROW(safetensors::File::open(entry.path().string()), Error);
    }
  }
  EXPECT_EQ(partial, 1);
}

TEST(Checkpoint, KilledAtRandomTimesAlwaysLeavesAWholeCheckpoint) {
  TempDir dir;
  const fs::path path = dir / "loop.safetensors";
  std::mt19937 rng(5);
  int loaded_new = 0;
  for (int attempt = 0; attempt < 8; ++attempt) {
    const fs::path ready = dir / ("ready" + std::to_string(attempt));
    const pid_t pid = SpawnChild({{"QKV_CKPT_CHILD", "loop"},
                                  {"QKV_CKPT_PATH", path.string()},
                                  {"QKV_CKPT_READY", ready.string()}},
                                 dir / "child.log");
    const bool started = WaitForFile(ready, 30.0);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    ::kill(pid, SIGKILL);
    WaitChild(pid);
    ASSERT_TRUE(started);
    if (!fs::exists(path)) continue;  // killed before its first rename
    TrainingRun r(MlpConfig{.hidden = 2048});
    const TrainingState state = load_checkpoint(path.string(), r.model, r.optimizer);
    ASSERT_GE(state.step, 1);
    for (const auto& [name, t] : r.model.state_dict())
      for (double v : t.to_values()) ASSERT_EQ(v, static_cast<double>(state.step)) << name;
    ++loaded_new;
  }
  EXPECT_GT(loaded_new, 0);
}

// ---- non-finite losses ------------------------------------------------------------------

// A loss whose value is `x`'s but whose gradient is NaN.
Variable PoisonGradient(const Variable& x) {
  return autograd::record("poison", x.value(), {x}, [](const Tensor& g) {
    return std::vector<Tensor>{Tensor::full(g.shape(), kNaN)};
  });
}

TEST(Trainer, NonFiniteLossStopsWithoutTouchingAnything) {
  TempDir dir;
  const std::string path = (dir / "c.safetensors").string();
  TrainingRun run;
  run.train(3);
  run.trainer.checkpoint(path);
  const std::string bytes = ReadBytes(path);
  const auto params = Cloned(run.model.state_dict());
  const auto optimizer_state = run.optimizer.state_dict();

  std::string message = ErrorOf(
      [&] { run.trainer.step([&] { return autograd::scale(run.micro_batch_loss(), kNaN); }); });
  ExpectContains(message, {"non-finite loss at step 3 (nan) in micro-batch 0 of 2"});
  message =
      ErrorOf([&] { run.trainer.step([&] { return PoisonGradient(run.micro_batch_loss()); }); });
  ExpectContains(message, {"non-finite gradient at step 3", "has nan"});
  EXPECT_EQ(run.trainer.steps(), 3);
  ExpectSameState(run.model.state_dict(), params);
  ExpectSameState(run.optimizer.state_dict(), optimizer_state);
  for (const auto& [name, v] : run.model.named_parameters()) EXPECT_FALSE(v.grad().defined());
  EXPECT_EQ(ReadBytes(path), bytes);
  TrainingRun resumed;
  resumed.trainer.resume(path);
  ExpectSameState(resumed.model.state_dict(), params);
}

TEST(Trainer, SkipStepDropsTheBadStepAndGoesOn) {
  TrainingRun run(
      MlpConfig{},
      {.grad_accumulation_steps = 2, .clip_norm = 0.5, .on_nonfinite = NonFinitePolicy::skip_step});
  run.train(2);
  const auto params = Cloned(run.model.state_dict());
  const auto optimizer_state = run.optimizer.state_dict();
  int calls = 0;
  const double loss = run.trainer.step([&] {
    return ++calls == 2 ? autograd::scale(run.micro_batch_loss(), kNaN) : run.micro_batch_loss();
  });
  EXPECT_TRUE(std::isnan(loss));
  EXPECT_EQ(calls, 2);  // every micro-batch still runs (the data order does not shift)
  run.trainer.step([&] { return PoisonGradient(run.micro_batch_loss()); });
  EXPECT_EQ(run.trainer.steps(), 4);
  EXPECT_EQ(run.trainer.skipped_steps(), 2);
  ExpectSameState(run.model.state_dict(), params);
  ExpectSameState(run.optimizer.state_dict(), optimizer_state);
  EXPECT_TRUE(std::isfinite(run.train(1)[0]));
  EXPECT_EQ(run.trainer.state().skipped_steps, 2);
}

TEST(Trainer, GradientAccumulationEqualsOneBigBatch) {
  // Two micro-batches of the same data, scaled by 1/2, give the gradient of
  // one: the update equals that of a single micro-batch (dropout off).
  MlpConfig c{.dropout = 0.0};
  TrainingRun one(c, {.grad_accumulation_steps = 1}), two(c, {.grad_accumulation_steps = 2});
  const Tensor x = Normal({5, c.in}, one.data_gen, 1.0);
  const Tensor t = Tensor::from_values({0, 1, 2, 3, 1}, {5}, DType::i64);
  const double a = one.trainer.step([&] { return one.model.loss(x, t); });
  const double b = two.trainer.step([&] { return two.model.loss(x, t); });
  EXPECT_EQ(a, b);
  const auto pa = one.model.state_dict(), pb = two.model.state_dict();
  for (const auto& [name, value] : pa) {
    const std::vector<double> u = value.to_values(), v = pb.at(name).to_values();
    for (size_t i = 0; i < u.size(); ++i) EXPECT_NEAR(u[i], v[i], 1e-6) << name;
  }
}

TEST(Trainer, RejectsBadOptionsAndForeignOptimizers) {
  TrainingRun run;
  Generator g(1);
  Mlp other(MlpConfig{}, g, g);
  EXPECT_THROW(Trainer(other, run.optimizer, 1e-3), Error);
  EXPECT_THROW(Trainer(run.model, run.optimizer, 1e-3, {}, {.grad_accumulation_steps = 0}), Error);
  EXPECT_THROW(Trainer(run.model, run.optimizer, -1.0), Error);
  EXPECT_THROW(run.trainer.track_generator("data", g), Error);
  // A lambda is a schedule ("custom"); its multiplier sets the lr.
  Trainer custom(run.model, run.optimizer, 0.5, [](int64_t step) { return 1.0 / (2.0 + step); });
  EXPECT_EQ(custom.schedule().spec.name, "custom");
  custom.step([&] { return run.micro_batch_loss(); });
  EXPECT_EQ(run.optimizer.lr(), 0.25);
  ExpectContains(ErrorOf([&] { run.trainer.step([&] { return Variable(Tensor::zeros({2})); }); }),
                 {"expected a scalar"});
}

}  // namespace
}  // namespace qkv
