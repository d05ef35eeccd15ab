// The training step driver of qkv/trainer.h.
#include "qkv/trainer.h"

#include <cmath>
#include <set>
#include <utility>

namespace qkv {
namespace {

double parameter_of(const ScheduleSpec& spec, const char* name) {
  const auto it = spec.parameters.find(name);
  QKV_CHECK(it != spec.parameters.end(), "Schedule '", spec.name, "': parameter '", name,
            "' is missing");
  return it->second;
}

int64_t integer_parameter_of(const ScheduleSpec& spec, const char* name) {
  const double value = parameter_of(spec, name);
  QKV_CHECK(value == std::floor(value) && std::abs(value) < 9.0e15, "Schedule '", spec.name,
            "': parameter '", name, "' is ", value, "; expected an integer");
  return static_cast<int64_t>(value);
}

std::string spec_string(const ScheduleSpec& spec) {
  std::string s = spec.name + "(";
  for (const auto& [name, value] : spec.parameters)
    s += detail::str(s.back() == '(' ? "" : ", ", name, "=", value);
  return s + ")";
}

// The first element of `t` that is NaN or inf, if any.
bool first_nonfinite(const Tensor& t, double& value) {
  const Tensor f = t.to(DType::f32).contiguous();
  const float* x = f.data<float>();
  for (int64_t i = 0; i < f.numel(); ++i) {
    if (!std::isfinite(x[i])) {
      value = x[i];
      return true;
    }
  }
  return false;
}

}  // namespace

std::vector<NamedParameter> optimizer_parameters(const nn::Module& model) {
  std::vector<NamedParameter> out;
  for (const auto& [name, v] : model.named_parameters())
    if (v.requires_grad()) out.push_back({name, v.value(), Tensor()});
  return out;
}

// ---- Schedule -----------------------------------------------------------------------

Schedule Schedule::constant() {
  return {ScheduleSpec{"constant", {}}, constant_schedule};
}

Schedule Schedule::transformer(int64_t d_model, int64_t warmup_steps, double factor) {
  transformer_schedule(0, d_model, warmup_steps, factor);  // validates
  return {ScheduleSpec{"transformer",
                       {{"d_model", static_cast<double>(d_model)},
                        {"warmup_steps", static_cast<double>(warmup_steps)},
                        {"factor", factor}}},
          [=](int64_t step) { return transformer_schedule(step, d_model, warmup_steps, factor); }};
}

Schedule Schedule::cosine_with_warmup(int64_t warmup_steps, int64_t total_steps,
                                      double min_lr_ratio, double num_cycles) {
  cosine_schedule_with_warmup(0, warmup_steps, total_steps, min_lr_ratio, num_cycles);
  return {ScheduleSpec{"cosine_with_warmup",
                       {{"warmup_steps", static_cast<double>(warmup_steps)},
                        {"total_steps", static_cast<double>(total_steps)},
                        {"min_lr_ratio", min_lr_ratio},
                        {"num_cycles", num_cycles}}},
          [=](int64_t step) {
            return cosine_schedule_with_warmup(step, warmup_steps, total_steps, min_lr_ratio,
                                               num_cycles);
          }};
}

Schedule Schedule::linear_with_warmup(int64_t warmup_steps, int64_t total_steps) {
  linear_schedule_with_warmup(0, warmup_steps, total_steps);
  return {
      ScheduleSpec{"linear_with_warmup",
                   {{"warmup_steps", static_cast<double>(warmup_steps)},
                    {"total_steps", static_cast<double>(total_steps)}}},
      [=](int64_t step) { return linear_schedule_with_warmup(step, warmup_steps, total_steps); }};
}

Schedule Schedule::from_spec(const ScheduleSpec& spec) {
  Schedule s;
  if (spec.name == "constant") {
    s = constant();
  } else if (spec.name == "transformer") {
    s = transformer(integer_parameter_of(spec, "d_model"),
                    integer_parameter_of(spec, "warmup_steps"), parameter_of(spec, "factor"));
  } else if (spec.name == "cosine_with_warmup") {
    s = cosine_with_warmup(integer_parameter_of(spec, "warmup_steps"),
                           integer_parameter_of(spec, "total_steps"),
                           parameter_of(spec, "min_lr_ratio"), parameter_of(spec, "num_cycles"));
  } else if (spec.name == "linear_with_warmup") {
    s = linear_with_warmup(integer_parameter_of(spec, "warmup_steps"),
                           integer_parameter_of(spec, "total_steps"));
  } else {
    throw Error(detail::str("Schedule::from_spec: cannot rebuild schedule '", spec.name,
                            "' (known: constant, transformer, cosine_with_warmup, "
                            "linear_with_warmup)"));
  }
  QKV_CHECK(s.spec == spec, "Schedule::from_spec: ", spec_string(spec),
            " has parameters the schedule does not take; expected those of ", spec_string(s.spec));
  return s;
}

// ---- Trainer --------------------------------------------------------------------------

Trainer::Trainer(nn::Module& model, Optimizer& optimizer, double base_lr, Schedule schedule,
                 TrainerOptions options)
    : model_(model),
      optimizer_(optimizer),
      base_lr_(base_lr),
      schedule_(std::move(schedule)),
      options_(options) {
  QKV_CHECK(std::isfinite(base_lr) && base_lr >= 0.0, "Trainer: base_lr is ", base_lr,
            "; expected a finite value >= 0");
  QKV_CHECK(static_cast<bool>(schedule_.multiplier), "Trainer: the schedule has no function");
  QKV_CHECK(options.grad_accumulation_steps >= 1, "Trainer: grad_accumulation_steps is ",
            options.grad_accumulation_steps, "; expected >= 1");
  QKV_CHECK(std::isfinite(options.clip_norm) && options.clip_norm >= 0.0, "Trainer: clip_norm is ",
            options.clip_norm, "; expected a finite value >= 0 (0: off)");
  std::map<std::string, autograd::Variable> by_name;
  for (const auto& [name, v] : model.named_parameters()) by_name.emplace(name, v);
  for (const NamedParameter& p : optimizer.parameters()) {
    const auto it = by_name.find(p.name);
    QKV_CHECK(it != by_name.end() && it->second.value().storage() == p.value.storage() &&
                  it->second.value().offset() == p.value.offset(),
              "Trainer: optimizer parameter '", p.name, "' is not the ", model.type_name(),
              "'s parameter of that name (build the optimizer from optimizer_parameters(model))");
  }
}

void Trainer::track_generator(const std::string& name, Generator& generator) {
  QKV_CHECK(!name.empty(), "Trainer::track_generator: the name is empty");
  QKV_CHECK(generators_.emplace(name, &generator).second, "Trainer::track_generator: '", name,
            "' is tracked already");
}

double Trainer::step(const std::function<autograd::Variable()>& loss_of_micro_batch) {
  const int64_t micro = options_.grad_accumulation_steps;
  model_.zero_grad();
  double total = 0.0;
  bool finite = true;
  for (int64_t k = 0; k < micro; ++k) {
    autograd::Variable loss = loss_of_micro_batch();
    QKV_CHECK(loss.defined() && loss.value().numel() == 1,
              "Trainer::step: the loss of micro-batch ", k, " has shape ",
              loss.defined() ? shape_string(loss.shape()) : "(undefined)", "; expected a scalar");
    const double value = loss.value().item();
    total += value;
    if (!std::isfinite(value)) {
      finite = false;
      if (options_.on_nonfinite == NonFinitePolicy::stop) {
        model_.zero_grad();
        throw Error(
            detail::str("non-finite loss at step ", step_, " (", value, ")",
                        micro > 1 ? detail::str(" in micro-batch ", k, " of ", micro) : ""));
      }
    }
    // Scaling the loss (not the gradients) keeps one backward per micro-batch.
    (micro > 1 ? autograd::scale(loss, 1.0 / static_cast<double>(micro)) : loss).backward();
  }
  const double mean_loss = total / static_cast<double>(micro);

  std::map<std::string, Tensor> grads;
  std::vector<Tensor> grad_list;
  std::map<std::string, autograd::Variable> by_name;
  for (const auto& [name, v] : model_.named_parameters()) by_name.emplace(name, v);
  for (const NamedParameter& p : optimizer_.parameters()) {
    const Tensor& g = by_name.at(p.name).grad();
    if (!g.defined()) continue;
    grads.emplace(p.name, g);
    grad_list.push_back(g);
    double bad = 0.0;
    if (finite && first_nonfinite(g, bad)) {
      finite = false;
      if (options_.on_nonfinite == NonFinitePolicy::stop) {
        model_.zero_grad();
        throw Error(detail::str("non-finite gradient at step ", step_, " (parameter '", p.name,
                                "' has ", bad, "; loss ", mean_loss, ")"));
      }
    }
  }
  if (!finite) {  // NonFinitePolicy::skip_step
    model_.zero_grad();
    ++skipped_;
    ++step_;
    return mean_loss;
  }
  if (options_.clip_norm > 0.0) clip_grad_norm(grad_list, options_.clip_norm);
  const double multiplier = schedule_.multiplier(step_);
  QKV_CHECK(std::isfinite(multiplier) && multiplier >= 0.0, "Trainer::step: schedule '",
            schedule_.spec.name, "' gave ", multiplier, " at step ", step_,
            "; expected a finite value >= 0");
  optimizer_.set_lr(base_lr_ * multiplier);
  optimizer_.step(grads);
  model_.zero_grad();
  ++step_;
  return mean_loss;
}

TrainingState Trainer::state() const {
  TrainingState s;
  s.step = step_;
  s.skipped_steps = skipped_;
  s.base_lr = base_lr_;
  s.lr = optimizer_.lr();
  s.schedule = schedule_.spec;
  for (const auto& [name, gen] : generators_) s.rng_states[name] = gen->seed_state();
  s.extra["grad_accumulation_steps"] = std::to_string(options_.grad_accumulation_steps);
  s.extra["clip_norm"] = detail::str(options_.clip_norm);
  return s;
}

void Trainer::checkpoint(const std::string& path) const {
  save_checkpoint(path, model_, optimizer_, state());
}

void Trainer::resume(const std::string& path) {
  // Everything is checked before anything is loaded.
  const TrainingState saved = read_training_state(path);
  QKV_CHECK(saved.schedule == schedule_.spec, "Trainer::resume '", path,
            "': the checkpoint was trained with schedule ", spec_string(saved.schedule),
            ", this trainer has ", spec_string(schedule_.spec));
  QKV_CHECK(saved.base_lr == base_lr_, "Trainer::resume '", path, "': the checkpoint's base_lr is ",
            saved.base_lr, ", this trainer's ", base_lr_);
  std::string missing, unexpected;
  for (const auto& [name, gen] : generators_)
    if (!saved.rng_states.count(name)) missing += " " + name;
  for (const auto& [name, state] : saved.rng_states)
    if (!generators_.count(name)) unexpected += " " + name;
  QKV_CHECK(missing.empty() && unexpected.empty(), "Trainer::resume '", path,
            "': tracked generators differ; missing in the checkpoint:",
            missing.empty() ? " none" : missing,
            "; in the checkpoint but not tracked:", unexpected.empty() ? " none" : unexpected);
  const TrainingState loaded = load_checkpoint(path, model_, optimizer_);
  for (const auto& [name, gen] : generators_) *gen = Generator(loaded.rng_states.at(name));
  step_ = loaded.step;
  skipped_ = loaded.skipped_steps;
}

}  // namespace qkv
