// Optimizers, learning-rate schedules and gradient clipping, as plain classes
// and functions over tensors (the autograd layer feeds them its gradients).
//
// The updates follow PyTorch's single-tensor implementations
// (torch/optim/sgd.py, adam.py) operation by operation: the same f32
// operations in the same order, fused multiply-adds where torch's CPU kernels
// fuse (add with alpha, lerp), and the bias corrections computed in double as
// torch's Python code does, so parameters agree with torch.optim to about an
// ulp after many steps. Parameters are f32, contiguous, updated in place;
// gradients may have any float dtype (converted to f32). Updates are
// element-wise, so they are deterministic for any thread count.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qkv/tensor.h"

namespace qkv {

struct NamedParameter {
  std::string name;  // unique; names the parameter's entries in state_dict()
  Tensor value;      // f32, contiguous; updated in place by step()
  Tensor grad;       // same shape, any float dtype; undefined: step() skips the parameter
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter whose grad is defined (like torch, a
  // parameter with grad None is left alone and its state does not advance).
  void step();
  // The same with the gradients given by parameter name (the parameters'
  // own grads are neither used nor changed); parameters not in `grads` are
  // skipped. A name that is no parameter is an error.
  void step(const std::map<std::string, Tensor>& grads);

  std::vector<NamedParameter>& parameters() { return parameters_; }
  const std::vector<NamedParameter>& parameters() const { return parameters_; }
  double lr() const { return lr_; }
  void set_lr(double lr);  // e.g. base_lr * a schedule's multiplier, before step()

  // The state of every parameter that has one, as "<param name>.<field>":
  // SGD: momentum_buffer (with momentum); Adam / AdamW: step (i64 scalar),
  // exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad). Copies, safe to keep.
  // Hyperparameters (lr, betas, ...) are not included: they are the
  // constructor's arguments and the schedule's.
  std::map<std::string, Tensor> state_dict() const;
  // Replaces the state with copies of `state`. Strict: every key must be
  // "<param name>.<field>" of this optimizer, a parameter's fields come all
  // together or not at all, and shapes must match; otherwise qkv::Error names
  // the key and the state is left unchanged. Parameters without entries
  // start afresh.
  void load_state_dict(const std::map<std::string, Tensor>& state);

 protected:
  Optimizer(std::vector<NamedParameter> parameters, double lr, const char* name);
  // Validates grads[i] (for parameter i; undefined: skipped), then updates.
  void apply(const std::vector<Tensor>& grads);
  // Updates parameter `index` with `grad` (contiguous f32 of its shape).
  virtual void update(size_t index, const Tensor& grad) = 0;
  // The fields of one parameter's state, in this configuration.
  virtual std::vector<std::string> state_fields() const = 0;

  const char* name_;
  std::vector<NamedParameter> parameters_;
  // Per parameter (same order): field -> tensor; empty until its first step.
  std::vector<std::map<std::string, Tensor>> state_;
  double lr_;
};

struct SgdOptions {
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;  // needs momentum > 0 and dampening 0, as in torch
  double weight_decay = 0.0;
  bool maximize = false;
};

// Stochastic gradient descent with heavy-ball or Nesterov momentum
// (Sutskever et al. 2013, in torch's formulation).
class SGD : public Optimizer {
 public:
  explicit SGD(std::vector<NamedParameter> parameters, const SgdOptions& options = {});
  const SgdOptions& options() const { return options_; }

 private:
  void update(size_t index, const Tensor& grad) override;
  std::vector<std::string> state_fields() const override;
  SgdOptions options_;
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;  // Reddi et al. 2018: the running maximum of exp_avg_sq
  bool maximize = false;
};

// Adam (Kingma & Ba 2015); weight decay is added to the gradient (L2).
class Adam : public Optimizer {
 public:
  explicit Adam(std::vector<NamedParameter> parameters, const AdamOptions& options = {});
  const AdamOptions& options() const { return options_; }

 protected:
  Adam(std::vector<NamedParameter> parameters, const AdamOptions& options, bool decoupled,
       const char* name);

 private:
  void update(size_t index, const Tensor& grad) override;
  std::vector<std::string> state_fields() const override;
  AdamOptions options_;
  bool decoupled_;
};

// AdamW (Loshchilov & Hutter 2019): weight decay applied to the parameter
// directly (p *= 1 - lr * weight_decay) instead of through the gradient.
// torch's default weight_decay for AdamW is 0.01.
class AdamW : public Adam {
 public:
  explicit AdamW(std::vector<NamedParameter> parameters,
                 const AdamOptions& options = AdamOptions{.weight_decay = 1e-2});
};

// ---- learning-rate schedules ---------------------------------------------------
// Multipliers of the base learning rate at `step` (0-based: the value
// torch.optim.lr_scheduler.LambdaLR applies after `step` scheduler steps).

double constant_schedule(int64_t step);
// Vaswani et al. 2017, eq. 3: factor * d_model^-0.5 * min(step^-0.5,
// step * warmup^-1.5), with step 0 taken as 1 (as the Annotated Transformer
// does) so that the first step does not have a zero rate. Meant for a base
// learning rate of 1.
double transformer_schedule(int64_t step, int64_t d_model, int64_t warmup_steps,
                            double factor = 1.0);
// Linear warm-up from 0 to 1 over warmup_steps, then a cosine from 1 down to
// min_lr_ratio at total_steps (num_cycles 0.5 is half a cosine period), as
// transformers' get_cosine_schedule_with_warmup (min_lr_ratio 0) and
// get_cosine_with_min_lr_schedule_with_warmup (min_lr_rate) compute it.
double cosine_schedule_with_warmup(int64_t step, int64_t warmup_steps, int64_t total_steps,
                                   double min_lr_ratio = 0.0, double num_cycles = 0.5);
// Linear warm-up, then linear decay to 0 at total_steps (transformers'
// get_linear_schedule_with_warmup).
double linear_schedule_with_warmup(int64_t step, int64_t warmup_steps, int64_t total_steps);

// ---- gradient clipping ---------------------------------------------------------

// torch.nn.utils.clip_grad_norm_: the norm_type-norm of all gradients taken
// together (norm_type may be +inf), then every gradient is multiplied in
// place by min(1, max_norm / (total + 1e-6)) (so a NaN or inf total makes
// them NaN or 0, as in torch). Returns the total norm. With
// error_if_nonfinite a NaN or inf total throws qkv::Error before anything is
// changed. Undefined gradients are skipped.
double clip_grad_norm(const std::vector<Tensor>& gradients, double max_norm, double norm_type = 2.0,
                      bool error_if_nonfinite = false);

}  // namespace qkv
