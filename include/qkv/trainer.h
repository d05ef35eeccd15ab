// A training step driver: micro-batches with gradient accumulation, clipping,
// a guard against non-finite losses and gradients, the learning-rate
// schedule, and checkpoints that resume exactly.
//
//   Generator dropout_gen(1);
//   auto model = std::make_shared<MyModel>(init_gen, dropout_gen);
//   AdamW optimizer(optimizer_parameters(*model), {.lr = 1e-3});
//   Trainer trainer(*model, optimizer, 1e-3, Schedule::cosine_with_warmup(100, 10000),
//                   {.grad_accumulation_steps = 4, .clip_norm = 1.0});
//   trainer.track_generator("dropout", dropout_gen);
//   for (...) {
//     double loss = trainer.step([&] { return model->loss(next_batch()); });
//     if (trainer.steps() % 1000 == 0) trainer.checkpoint("run.safetensors");
//   }
//
// A step is deterministic given the parameters, the optimizer state, the
// tracked generators and the thread count, so trainer.resume(path) in a new
// process continues with bitwise the same losses as a run that never stopped.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "qkv/autograd.h"
#include "qkv/checkpoint.h"
#include "qkv/module.h"
#include "qkv/optim.h"
#include "qkv/tensor.h"

namespace qkv {

// The module's parameters that require a gradient, by their torch names,
// for an optimizer's constructor (values share the module's storage).
std::vector<NamedParameter> optimizer_parameters(const nn::Module& model);

// A learning-rate multiplier of the step and the spec that rebuilds it
// (recorded in checkpoints; resume() checks that it matches).
struct Schedule {
  ScheduleSpec spec;
  std::function<double(int64_t)> multiplier;

  Schedule() : Schedule(constant()) {}
  Schedule(ScheduleSpec s, std::function<double(int64_t)> m)
      : spec(std::move(s)), multiplier(std::move(m)) {}
  // Any function of the step (a lambda too), recorded as "custom" (a
  // checkpoint cannot rebuild it).
  template <class F>
  requires(std::is_invocable_r_v<double, F, int64_t> && !std::is_same_v<std::decay_t<F>, Schedule>)
      Schedule(F m)  // NOLINT(google-explicit-constructor)
      : Schedule(ScheduleSpec{"custom", {}}, std::function<double(int64_t)>(std::move(m))) {}

  static Schedule constant();
  static Schedule transformer(int64_t d_model, int64_t warmup_steps, double factor = 1.0);
  static Schedule cosine_with_warmup(int64_t warmup_steps, int64_t total_steps,
                                     double min_lr_ratio = 0.0, double num_cycles = 0.5);
  static Schedule linear_with_warmup(int64_t warmup_steps, int64_t total_steps);
  // One of the four above from its spec (e.g. a checkpoint's); qkv::Error
  // for "custom" or unknown names and missing parameters.
  static Schedule from_spec(const ScheduleSpec& spec);
};

enum class NonFinitePolicy {
  stop,       // throw qkv::Error; the parameters and optimizer are not touched
  skip_step,  // drop the gradients, count the step as skipped, go on
};

struct TrainerOptions {
  int64_t grad_accumulation_steps = 1;  // micro-batches per optimizer step
  double clip_norm = 0.0;               // max global L2 norm of the gradients; 0 = off
  NonFinitePolicy on_nonfinite = NonFinitePolicy::stop;
};

class Trainer {
 public:
  // `model` and `optimizer` must outlive the trainer; the optimizer's
  // parameters are named as the model's (see optimizer_parameters).
  Trainer(nn::Module& model, Optimizer& optimizer, double base_lr, Schedule schedule = {},
          TrainerOptions options = {});

  // One optimizer step: for each of grad_accumulation_steps micro-batches,
  // loss_of_micro_batch() (a scalar Variable) and its backward, scaled by
  // 1 / grad_accumulation_steps; then the finiteness check of the losses
  // and gradients, clipping, lr = base_lr * schedule(step), the update,
  // zero_grad, ++step. Returns the mean of the micro-batch losses. With
  // NonFinitePolicy::stop a NaN / inf throws "non-finite loss at step N
  // (value)" (or "... gradient ...") before the parameters change.
  double step(const std::function<autograd::Variable()>& loss_of_micro_batch);

  int64_t steps() const { return step_; }
  int64_t skipped_steps() const { return skipped_; }
  double base_lr() const { return base_lr_; }
  const Schedule& schedule() const { return schedule_; }

  // A generator whose state is saved with checkpoints and restored by
  // resume() (dropout, data shuffling). It must outlive the trainer.
  void track_generator(const std::string& name, Generator& generator);

  TrainingState state() const;
  // save_checkpoint / load_checkpoint of the model, the optimizer and
  // state(). resume() checks that the checkpoint's schedule, base_lr and
  // generator names are the trainer's, then restores step, counts and
  // generator states.
  void checkpoint(const std::string& path) const;
  void resume(const std::string& path);

 private:
  nn::Module& model_;
  Optimizer& optimizer_;
  double base_lr_;
  Schedule schedule_;
  TrainerOptions options_;
  std::map<std::string, Generator*> generators_;
  int64_t step_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace qkv
