// The optimizers, schedules and gradient clipping of qkv/optim.h.
//
// Each update mirrors torch's single-tensor code one tensor operation at a
// time, in f32: `a.add(b, alpha=s)` and `a.lerp(b, w)` are fused
// multiply-adds in torch's vectorised CPU kernels (vec::fmadd), so they are
// fmas here; mul_, addcmul_, addcdiv_, sqrt and division round after each
// operation, as torch's kernels do. Python-side scalars (1 - beta1,
// lr / bias_correction1, ...) are computed in double and rounded to f32
// where torch passes them to an f32 kernel. The per-element loops are the
// Highway kernels of kernels/cpu/optim.h, run over chunks of each tensor on
// the thread team; on CPUs with fma (AVX2, AVX-512) they give the bits of
// their scalar twins (the plain std::fma loops), and only CPUs without fma
// (SSE4 and older) round the fused steps twice.
//
// One operation cannot be matched bit for bit: torch's f32 sqrt on x86 goes
// through MKL's vector math, which is within 1 ulp but not correctly rounded
// (ours is), so Adam's parameters can differ from torch's by an ulp or
// two where that sqrt rounds the other way; SGD matches exactly.
#include "qkv/optim.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "core/parallel.h"
#include "kernels/cpu/optim.h"

namespace qkv {
namespace {

constexpr int64_t kGrainElements = int64_t{1} << 14;

// Runs fn(begin, end) over [0, n) on the thread team. Updates are
// element-wise, so the split does not change any result.
template <class Fn>
void for_elements(int64_t n, Fn&& fn) {
  detail::parallel_for(0, n, kGrainElements, fn);
}

void check_hyper(bool ok, const char* op, const char* what, double value, const char* expected) {
  QKV_CHECK(ok, op, ": ", what, " is ", value, "; expected ", expected);
}

// "<name>.<field>" split at the last dot (fields have none).
std::pair<std::string, std::string> split_key(const std::string& key) {
  const size_t dot = key.rfind('.');
  if (dot == std::string::npos) return {key, ""};
  return {key.substr(0, dot), key.substr(dot + 1)};
}

}  // namespace

// ---- Optimizer --------------------------------------------------------------------

Optimizer::Optimizer(std::vector<NamedParameter> parameters, double lr, const char* name)
    : name_(name), parameters_(std::move(parameters)), state_(parameters_.size()), lr_(0.0) {
  set_lr(lr);
  std::set<std::string> names;
  for (const NamedParameter& p : parameters_) {
    QKV_CHECK(!p.name.empty(), name_, ": a parameter has an empty name");
    QKV_CHECK(names.insert(p.name).second, name_, ": parameter name '", p.name, "' appears twice");
    QKV_CHECK(p.value.defined(), name_, ": parameter '", p.name, "' is an undefined tensor");
    QKV_CHECK(p.value.device().type == DeviceType::cpu, name_, ": parameter '", p.name, "' is on ",
              to_string(p.value.device()), "; only cpu tensors are supported");
    QKV_CHECK(p.value.dtype() == DType::f32 && p.value.is_contiguous(), name_, ": parameter '",
              p.name, "' has dtype ", dtype_name(p.value.dtype()),
              p.value.is_contiguous() ? "" : " (non-contiguous)",
              "; expected a contiguous f32 tensor (updated in place)");
  }
}

void Optimizer::set_lr(double lr) {
  check_hyper(lr >= 0.0 && std::isfinite(lr), name_, "lr", lr, "a finite value >= 0");
  lr_ = lr;
}

void Optimizer::step() {
  std::vector<Tensor> grads;
  for (const NamedParameter& p : parameters_) grads.push_back(p.grad);
  apply(grads);
}

void Optimizer::step(const std::map<std::string, Tensor>& grads) {
  for (const auto& [name, grad] : grads) {
    const bool known = std::any_of(parameters_.begin(), parameters_.end(),
                                   [&](const NamedParameter& p) { return p.name == name; });
    QKV_CHECK(known, name_, ": step got a gradient for '", name, "', which is no parameter");
  }
  std::vector<Tensor> by_index;
  for (const NamedParameter& p : parameters_) {
    const auto it = grads.find(p.name);
    by_index.push_back(it == grads.end() ? Tensor() : it->second);
  }
  apply(by_index);
}

void Optimizer::apply(const std::vector<Tensor>& grads) {
  // Validate every gradient before changing anything.
  std::vector<Tensor> f32(parameters_.size());
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const NamedParameter& p = parameters_[i];
    const Tensor& g = grads[i];
    if (!g.defined()) continue;
    QKV_CHECK(is_floating(g.dtype()), name_, ": gradient of '", p.name, "' has dtype ",
              dtype_name(g.dtype()), "; expected a floating dtype");
    QKV_CHECK(g.shape() == p.value.shape(), name_, ": gradient of '", p.name, "' has shape ",
              shape_string(g.shape()), " but the parameter has shape ",
              shape_string(p.value.shape()));
    f32[i] = g.to(DType::f32).contiguous();
  }
  for (size_t i = 0; i < parameters_.size(); ++i)
    if (f32[i].defined()) update(i, f32[i]);
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < parameters_.size(); ++i)
    for (const auto& [field, value] : state_[i])
      out.emplace(parameters_[i].name + "." + field, value.clone());
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& state) {
  const std::vector<std::string> fields = state_fields();
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < parameters_.size(); ++i) index.emplace(parameters_[i].name, i);
  std::vector<std::map<std::string, Tensor>> loaded(parameters_.size());
  for (const auto& [key, value] : state) {
    const auto [name, field] = split_key(key);
    const auto it = index.find(name);
    QKV_CHECK(it != index.end(), name_, ".load_state_dict: key '", key,
              "' names no parameter of this optimizer");
    QKV_CHECK(std::find(fields.begin(), fields.end(), field) != fields.end(), name_,
              ".load_state_dict: key '", key, "' has field '", field,
              "', which this optimizer (in this configuration) does not keep");
    QKV_CHECK(value.defined(), name_, ".load_state_dict: '", key, "' is an undefined tensor");
    const Tensor& param = parameters_[it->second].value;
    if (field == "step") {
      QKV_CHECK(value.numel() == 1, name_, ".load_state_dict: '", key, "' has shape ",
                shape_string(value.shape()), "; expected one element");
      const double step = value.item();
      QKV_CHECK(step >= 0 && step == std::floor(step) && step < 9.0e15, name_,
                ".load_state_dict: '", key, "' is ", step, "; expected a step count >= 0");
      loaded[it->second][field] = Tensor::full({}, step, DType::i64);
    } else {
      QKV_CHECK(value.shape() == param.shape(), name_, ".load_state_dict: '", key, "' has shape ",
                shape_string(value.shape()), " but parameter '", name, "' has shape ",
                shape_string(param.shape()));
      QKV_CHECK(is_floating(value.dtype()), name_, ".load_state_dict: '", key, "' has dtype ",
                dtype_name(value.dtype()), "; expected a floating dtype");
      loaded[it->second][field] = value.to(DType::f32).contiguous().clone();
    }
  }
  for (size_t i = 0; i < parameters_.size(); ++i) {
    if (loaded[i].empty()) continue;
    for (const std::string& field : fields)
      QKV_CHECK(loaded[i].count(field), name_, ".load_state_dict: parameter '", parameters_[i].name,
                "' has some state but not '", parameters_[i].name, ".", field, "'");
  }
  state_ = std::move(loaded);
}

// ---- SGD ------------------------------------------------------------------------

SGD::SGD(std::vector<NamedParameter> parameters, const SgdOptions& options)
    : Optimizer(std::move(parameters), options.lr, "SGD"), options_(options) {
  check_hyper(options.momentum >= 0.0 && std::isfinite(options.momentum), "SGD", "momentum",
              options.momentum, "a finite value >= 0");
  check_hyper(std::isfinite(options.dampening), "SGD", "dampening", options.dampening,
              "a finite value");
  check_hyper(options.weight_decay >= 0.0 && std::isfinite(options.weight_decay), "SGD",
              "weight_decay", options.weight_decay, "a finite value >= 0");
  QKV_CHECK(!options.nesterov || (options.momentum > 0.0 && options.dampening == 0.0),
            "SGD: nesterov momentum requires momentum > 0 and dampening 0 (got momentum ",
            options.momentum, ", dampening ", options.dampening, ")");
}

std::vector<std::string> SGD::state_fields() const {
  if (options_.momentum == 0.0) return {};
  return {"momentum_buffer"};
}

void SGD::update(size_t index, const Tensor& grad) {
  // torch/optim/sgd.py, _single_tensor_sgd.
  const SgdOptions& o = options_;
  kernels::SgdStep k;
  k.decay = o.weight_decay != 0.0;
  k.weight_decay = static_cast<float>(o.weight_decay);
  k.momentum = static_cast<float>(o.momentum);
  k.keep = static_cast<float>(1.0 - o.dampening);
  k.neg_lr = static_cast<float>(-lr_);
  k.nesterov = o.nesterov;
  k.maximize = o.maximize;
  const bool momentum = o.momentum != 0.0;
  float* p = parameters_[index].value.data<float>();
  const float* g = grad.data<float>();
  std::map<std::string, Tensor>& state = state_[index];
  k.first = momentum && !state.count("momentum_buffer");
  if (k.first) state["momentum_buffer"] = Tensor::empty(grad.shape(), DType::f32);
  float* buf = momentum ? state["momentum_buffer"].data<float>() : nullptr;
  for_elements(grad.numel(), [&](int64_t begin, int64_t end) {
    kernels::SgdUpdate(p + begin, g + begin, buf ? buf + begin : nullptr,
                       static_cast<size_t>(end - begin), k);
  });
}

// ---- Adam / AdamW --------------------------------------------------------------------

Adam::Adam(std::vector<NamedParameter> parameters, const AdamOptions& options)
    : Adam(std::move(parameters), options, false, "Adam") {}

Adam::Adam(std::vector<NamedParameter> parameters, const AdamOptions& options, bool decoupled,
           const char* name)
    : Optimizer(std::move(parameters), options.lr, name), options_(options), decoupled_(decoupled) {
  check_hyper(options.beta1 >= 0.0 && options.beta1 < 1.0, name, "beta1", options.beta1,
              "a value in [0, 1)");
  check_hyper(options.beta2 >= 0.0 && options.beta2 < 1.0, name, "beta2", options.beta2,
              "a value in [0, 1)");
  check_hyper(options.eps >= 0.0 && std::isfinite(options.eps), name, "eps", options.eps,
              "a finite value >= 0");
  check_hyper(options.weight_decay >= 0.0 && std::isfinite(options.weight_decay), name,
              "weight_decay", options.weight_decay, "a finite value >= 0");
}

AdamW::AdamW(std::vector<NamedParameter> parameters, const AdamOptions& options)
    : Adam(std::move(parameters), options, true, "AdamW") {}

std::vector<std::string> Adam::state_fields() const {
  std::vector<std::string> fields{"step", "exp_avg", "exp_avg_sq"};
  if (options_.amsgrad) fields.push_back("max_exp_avg_sq");
  return fields;
}

void Adam::update(size_t index, const Tensor& grad) {
  // torch/optim/adam.py, _single_tensor_adam (capturable = differentiable = False).
  const AdamOptions& o = options_;
  std::map<std::string, Tensor>& state = state_[index];
  if (state.empty()) {
    state["step"] = Tensor::zeros({}, DType::i64);
    state["exp_avg"] = Tensor::zeros(grad.shape(), DType::f32);
    state["exp_avg_sq"] = Tensor::zeros(grad.shape(), DType::f32);
    if (o.amsgrad) state["max_exp_avg_sq"] = Tensor::zeros(grad.shape(), DType::f32);
  }
  int64_t& step_count = *state["step"].data<int64_t>();
  ++step_count;
  const double step = static_cast<double>(step_count);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
  const double step_size = lr_ / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);  // Python's ** 0.5

  kernels::AdamStep k;
  k.decay = o.weight_decay != 0.0;
  k.decoupled = decoupled_;
  k.maximize = o.maximize;
  k.weight_decay = static_cast<float>(o.weight_decay);
  k.shrink = static_cast<float>(1.0 - lr_ * o.weight_decay);
  k.w1 = static_cast<float>(1.0 - o.beta1);  // lerp weight
  k.beta2 = static_cast<float>(o.beta2);
  k.w2 = static_cast<float>(1.0 - o.beta2);
  k.bc2_sqrt = static_cast<float>(bias_correction2_sqrt);
  k.eps = static_cast<float>(o.eps);
  k.neg_step_size = static_cast<float>(-step_size);

  float* p = parameters_[index].value.data<float>();
  const float* g = grad.data<float>();
  float* m = state["exp_avg"].data<float>();
  float* v = state["exp_avg_sq"].data<float>();
  float* vmax = o.amsgrad ? state["max_exp_avg_sq"].data<float>() : nullptr;
  for_elements(grad.numel(), [&](int64_t begin, int64_t end) {
    kernels::AdamUpdate(p + begin, g + begin, m + begin, v + begin, vmax ? vmax + begin : nullptr,
                        static_cast<size_t>(end - begin), k);
  });
}

// ---- schedules ------------------------------------------------------------------------

double constant_schedule(int64_t /*step*/) {
  return 1.0;
}

double transformer_schedule(int64_t step, int64_t d_model, int64_t warmup_steps, double factor) {
  QKV_CHECK(d_model > 0, "transformer_schedule: d_model is ", d_model, "; expected > 0");
  QKV_CHECK(warmup_steps > 0, "transformer_schedule: warmup_steps is ", warmup_steps,
            "; expected > 0");
  QKV_CHECK(step >= 0, "transformer_schedule: step is ", step, "; expected >= 0");
  const double s = static_cast<double>(std::max<int64_t>(step, 1));
  return factor *
         (std::pow(static_cast<double>(d_model), -0.5) *
          std::min(std::pow(s, -0.5), s * std::pow(static_cast<double>(warmup_steps), -1.5)));
}

namespace {

void check_warmup(int64_t step, int64_t warmup_steps, int64_t total_steps, const char* op) {
  QKV_CHECK(step >= 0, op, ": step is ", step, "; expected >= 0");
  QKV_CHECK(warmup_steps >= 0 && total_steps >= 0, op, ": warmup_steps ", warmup_steps,
            " and total_steps ", total_steps, " must be >= 0");
}

}  // namespace

double cosine_schedule_with_warmup(int64_t step, int64_t warmup_steps, int64_t total_steps,
                                   double min_lr_ratio, double num_cycles) {
  check_warmup(step, warmup_steps, total_steps, "cosine_schedule_with_warmup");
  QKV_CHECK(min_lr_ratio >= 0.0 && min_lr_ratio <= 1.0,
            "cosine_schedule_with_warmup: min_lr_ratio is ", min_lr_ratio,
            "; expected a value in [0, 1]");
  if (step < warmup_steps)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  const double progress = static_cast<double>(step - warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  const double pi = 3.141592653589793;  // Python's math.pi
  double factor = 0.5 * (1.0 + std::cos(pi * num_cycles * 2.0 * progress));
  factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio;
  return std::max(0.0, factor);
}

double linear_schedule_with_warmup(int64_t step, int64_t warmup_steps, int64_t total_steps) {
  check_warmup(step, warmup_steps, total_steps, "linear_schedule_with_warmup");
  if (step < warmup_steps)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  return std::max(0.0, static_cast<double>(total_steps - step) /
                           static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps)));
}

// ---- clipping ---------------------------------------------------------------------------

double clip_grad_norm(const std::vector<Tensor>& gradients, double max_norm, double norm_type,
                      bool error_if_nonfinite) {
  const char* op = "clip_grad_norm";
  QKV_CHECK(norm_type > 0.0, op, ": norm_type is ", norm_type, "; expected a value > 0 or inf");
  QKV_CHECK(!std::isnan(max_norm), op, ": max_norm is NaN");
  const bool inf_norm = std::isinf(norm_type);
  std::vector<Tensor> grads;  // contiguous f32 (the caller's tensors when they already are)
  for (size_t k = 0; k < gradients.size(); ++k) {
    const Tensor& g = gradients[k];
    if (!g.defined()) continue;
    QKV_CHECK(is_floating(g.dtype()), op, ": gradient ", k, " has dtype ", dtype_name(g.dtype()),
              "; expected a floating dtype");
    grads.push_back(g.to(DType::f32).contiguous());
  }
  // Partial sums (or maxima) over fixed blocks, combined in order: the same
  // total for any thread count.
  double total = 0.0;
  for (const Tensor& g : grads) {
    const float* x = g.data<float>();
    const int64_t n = g.numel();
    const int64_t blocks = (n + kGrainElements - 1) / kGrainElements;
    std::vector<double> partial(static_cast<size_t>(blocks));
    detail::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        double acc = 0.0;
        for (int64_t i = b * kGrainElements; i < std::min(n, (b + 1) * kGrainElements); ++i) {
          const double a = std::abs(static_cast<double>(x[i]));
          if (inf_norm) {
            acc = std::isnan(a) || std::isnan(acc) ? a + acc : std::max(acc, a);
          } else {
            acc += norm_type == 2.0 ? a * a : norm_type == 1.0 ? a : std::pow(a, norm_type);
          }
        }
        partial[static_cast<size_t>(b)] = acc;
      }
    });
    for (double p : partial)
      total = inf_norm ? (std::isnan(p) ? p : std::max(total, p)) : total + p;
  }
  if (!inf_norm) total = norm_type == 1.0 ? total : std::pow(total, 1.0 / norm_type);
  QKV_CHECK(!error_if_nonfinite || std::isfinite(total), op, ": the total norm of order ",
            norm_type, " of the gradients is ", total,
            ", so they cannot be clipped (error_if_nonfinite is set)");
  // torch: clip_coef = max_norm / (total_norm + 1e-6) on an f32 tensor, which
  // is reciprocal(total_norm + 1e-6) * max_norm; clamped to at most 1.
  const float denom = static_cast<float>(total) + static_cast<float>(1e-6);
  float coef = (1.0f / denom) * static_cast<float>(max_norm);
  if (!std::isnan(coef)) coef = std::min(coef, 1.0f);
  size_t next = 0;
  for (const Tensor& original : gradients) {
    if (!original.defined()) continue;
    const Tensor& g = grads[next++];
    float* x = g.data<float>();
    for_elements(g.numel(), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) x[i] *= coef;
    });
    if (g.storage() != original.storage()) {
      Tensor target = original;  // a handle on the caller's storage
      target.copy_(g);
    }
  }
  return total;
}

}  // namespace qkv
