// The losses, optimizers, schedules and clipping of qkv/losses.h and
// qkv/optim.h. Reductions are named by string, as in torch.nn.functional;
// an upstream gradient may be a float or a tensor. Optimizers take their
// parameters as a dict name -> Tensor (NumPy float32 arrays are wrapped
// without a copy, so they are updated in place too) or as a module's
// named_parameters() (those that require a gradient).
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "bindings.h"
#include "qkv/autograd.h"
#include "qkv/error.h"
#include "qkv/losses.h"
#include "qkv/metrics.h"
#include "qkv/optim.h"

namespace qkv::python {
namespace {

using Release = nb::call_guard<nb::gil_scoped_release>;
using Upstream = std::variant<double, Tensor>;
using TensorDict = std::map<std::string, Tensor>;
// A dict name -> Tensor, or (name, Variable) pairs as nn.Module.named_parameters() gives.
using Params = std::variant<TensorDict, std::vector<std::pair<std::string, autograd::Variable>>>;

Reduction parse_reduction(const std::string& name) {
  return from_name(kReductionNames, name, "reduction");
}

Tensor upstream_tensor(const Upstream& g) {
  if (const double* value = std::get_if<double>(&g)) return Tensor::full({}, *value);
  return std::get<Tensor>(g);
}

CrossEntropyOptions ce_options(int64_t ignore_index, double label_smoothing,
                               const std::string& reduction) {
  return CrossEntropyOptions{ignore_index, label_smoothing, parse_reduction(reduction)};
}

std::vector<NamedParameter> named(const Params& params) {
  std::vector<NamedParameter> out;
  if (const TensorDict* dict = std::get_if<TensorDict>(&params)) {
    for (const auto& [name, value] : *dict) out.push_back({name, value, Tensor()});
    return out;
  }
  for (const auto& [name, variable] :
       std::get<std::vector<std::pair<std::string, autograd::Variable>>>(params))
    if (variable.requires_grad()) out.push_back({name, variable.value(), Tensor()});
  return out;
}

TensorDict parameter_dict(const Optimizer& opt) {
  TensorDict out;
  for (const NamedParameter& p : opt.parameters()) out.emplace(p.name, p.value);
  return out;
}

}  // namespace

void bind_train(nb::module_& m) {
  // ---- losses ----
  m.def(
      "cross_entropy",
      [](const Tensor& logits, const Tensor& targets, int64_t ignore_index, double label_smoothing,
         const std::string& reduction) {
        return qkv::cross_entropy(logits, targets,
                                  ce_options(ignore_index, label_smoothing, reduction));
      },
      nb::arg("logits"), nb::arg("targets"), nb::arg("ignore_index") = -100,
      nb::arg("label_smoothing") = 0.0, nb::arg("reduction") = "mean", Release(),
      "torch.nn.functional.cross_entropy with class-index targets; logits [N, C, ...] or [C]; "
      "f32 result.");
  m.def(
      "cross_entropy_backward",
      [](const Upstream& grad_output, const Tensor& logits, const Tensor& targets,
         int64_t ignore_index, double label_smoothing, const std::string& reduction) {
        return qkv::cross_entropy_backward(upstream_tensor(grad_output), logits, targets,
                                           ce_options(ignore_index, label_smoothing, reduction));
      },
      nb::arg("grad_output"), nb::arg("logits"), nb::arg("targets"), nb::arg("ignore_index") = -100,
      nb::arg("label_smoothing") = 0.0, nb::arg("reduction") = "mean", Release(),
      "d loss / d logits, in the logits' dtype.");
  m.def(
      "mse_loss",
      [](const Tensor& input, const Tensor& target, const std::string& reduction) {
        return qkv::mse_loss(input, target, parse_reduction(reduction));
      },
      nb::arg("input"), nb::arg("target"), nb::arg("reduction") = "mean", Release());
  m.def(
      "mse_loss_backward",
      [](const Upstream& grad_output, const Tensor& input, const Tensor& target,
         const std::string& reduction) {
        return qkv::mse_loss_backward(upstream_tensor(grad_output), input, target,
                                      parse_reduction(reduction));
      },
      nb::arg("grad_output"), nb::arg("input"), nb::arg("target"), nb::arg("reduction") = "mean",
      Release(), "d loss / d input (d loss / d target is its negative).");
  m.def(
      "kl_div",
      [](const Tensor& input, const Tensor& target, const std::string& reduction, bool log_target) {
        return qkv::kl_div(input, target, parse_reduction(reduction), log_target);
      },
      nb::arg("input"), nb::arg("target"), nb::arg("reduction") = "mean",
      nb::arg("log_target") = false, Release(),
      "torch.nn.functional.kl_div: input holds log-probabilities.");
  m.def(
      "kl_div_backward",
      [](const Upstream& grad_output, const Tensor& input, const Tensor& target,
         const std::string& reduction, bool log_target) {
        return qkv::kl_div_backward(upstream_tensor(grad_output), input, target,
                                    parse_reduction(reduction), log_target);
      },
      nb::arg("grad_output"), nb::arg("input"), nb::arg("target"), nb::arg("reduction") = "mean",
      nb::arg("log_target") = false, Release());
  m.def(
      "kl_div_distillation",
      [](const Tensor& student, const Tensor& teacher, double temperature,
         const std::string& reduction) {
        return qkv::kl_div_distillation(student, teacher, temperature, parse_reduction(reduction));
      },
      nb::arg("student_logits"), nb::arg("teacher_logits"), nb::arg("temperature"),
      nb::arg("reduction") = "batchmean", Release(),
      "T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the last dim (Hinton et al.).");
  m.def(
      "kl_div_distillation_backward",
      [](const Upstream& grad_output, const Tensor& student, const Tensor& teacher,
         double temperature, const std::string& reduction) {
        return qkv::kl_div_distillation_backward(upstream_tensor(grad_output), student, teacher,
                                                 temperature, parse_reduction(reduction));
      },
      nb::arg("grad_output"), nb::arg("student_logits"), nb::arg("teacher_logits"),
      nb::arg("temperature"), nb::arg("reduction") = "batchmean", Release(),
      "d loss / d student_logits.");

  // ---- optimizers ----
  nb::class_<Optimizer>(m, "Optimizer",
                        "Base of SGD, Adam and AdamW: parameters updated in place by step().")
      .def(
          "step", [](Optimizer& opt, const TensorDict& grads) { opt.step(grads); },
          nb::arg("grads"), Release(),
          "One update with the gradients by parameter name; parameters without one are "
          "skipped.")
      .def_prop_rw("lr", &Optimizer::lr, &Optimizer::set_lr)
      .def_prop_ro("params", &parameter_dict, "The parameters by name (the same memory).")
      .def("state_dict", &Optimizer::state_dict, "Copies of the state as '<param>.<field>'.")
      .def("load_state_dict", &Optimizer::load_state_dict, nb::arg("state"),
           "Strict: unknown, partial or mis-shaped entries raise QkvError.");

  nb::class_<SGD, Optimizer>(m, "SGD", "torch.optim.SGD's update (single-tensor path).")
      .def(
          "__init__",
          [](SGD* self, const Params& params, double lr, double momentum, double dampening,
             bool nesterov, double weight_decay, bool maximize) {
            new (self) SGD(named(params),
                           SgdOptions{lr, momentum, dampening, nesterov, weight_decay, maximize});
          },
          nb::arg("params"), nb::arg("lr") = 1e-3, nb::arg("momentum") = 0.0,
          nb::arg("dampening") = 0.0, nb::arg("nesterov") = false, nb::arg("weight_decay") = 0.0,
          nb::arg("maximize") = false);

  const auto adam_init = [](auto* self, const Params& params, double lr,
                            std::pair<double, double> betas, double eps, double weight_decay,
                            bool amsgrad, bool maximize) {
    using Class = std::remove_pointer_t<decltype(self)>;
    new (self) Class(named(params), AdamOptions{lr, betas.first, betas.second, eps, weight_decay,
                                                amsgrad, maximize});
  };
  nb::class_<Adam, Optimizer>(m, "Adam", "torch.optim.Adam's update (single-tensor path).")
      .def(
          "__init__",
          [adam_init](Adam* self, const Params& params, double lr, std::pair<double, double> betas,
                      double eps, double weight_decay, bool amsgrad, bool maximize) {
            adam_init(self, params, lr, betas, eps, weight_decay, amsgrad, maximize);
          },
          nb::arg("params"), nb::arg("lr") = 1e-3,
          nb::arg("betas") = std::pair<double, double>(0.9, 0.999), nb::arg("eps") = 1e-8,
          nb::arg("weight_decay") = 0.0, nb::arg("amsgrad") = false, nb::arg("maximize") = false);
  nb::class_<AdamW, Adam>(m, "AdamW", "torch.optim.AdamW's update (decoupled weight decay).")
      .def(
          "__init__",
          [adam_init](AdamW* self, const Params& params, double lr, std::pair<double, double> betas,
                      double eps, double weight_decay, bool amsgrad, bool maximize) {
            adam_init(self, params, lr, betas, eps, weight_decay, amsgrad, maximize);
          },
          nb::arg("params"), nb::arg("lr") = 1e-3,
          nb::arg("betas") = std::pair<double, double>(0.9, 0.999), nb::arg("eps") = 1e-8,
          nb::arg("weight_decay") = 1e-2, nb::arg("amsgrad") = false, nb::arg("maximize") = false);

  // ---- schedules and clipping ----
  m.def("constant_schedule", &qkv::constant_schedule, nb::arg("step"));
  m.def(
      "transformer_schedule", &qkv::transformer_schedule, nb::arg("step"), nb::arg("d_model"),
      nb::arg("warmup_steps"), nb::arg("factor") = 1.0,
      "factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (Vaswani et al.); step 0 as 1.");
  m.def("cosine_schedule_with_warmup", &qkv::cosine_schedule_with_warmup, nb::arg("step"),
        nb::arg("warmup_steps"), nb::arg("total_steps"), nb::arg("min_lr_ratio") = 0.0,
        nb::arg("num_cycles") = 0.5, "Linear warm-up, then cosine decay to min_lr_ratio.");
  m.def("linear_schedule_with_warmup", &qkv::linear_schedule_with_warmup, nb::arg("step"),
        nb::arg("warmup_steps"), nb::arg("total_steps"));
  m.def("clip_grad_norm", &qkv::clip_grad_norm, nb::arg("grads"), nb::arg("max_norm"),
        nb::arg("norm_type") = 2.0, nb::arg("error_if_nonfinite") = false, Release(),
        "torch.nn.utils.clip_grad_norm_ over a list of gradients (in place); returns the total "
        "norm.");
  m.def(
      "clip_grad_norm",
      [](const TensorDict& grads, double max_norm, double norm_type, bool error_if_nonfinite) {
        std::vector<Tensor> list;
        for (const auto& [name, g] : grads) list.push_back(g);
        return qkv::clip_grad_norm(list, max_norm, norm_type, error_if_nonfinite);
      },
      nb::arg("grads"), nb::arg("max_norm"), nb::arg("norm_type") = 2.0,
      nb::arg("error_if_nonfinite") = false, Release(), "The same over a dict name -> gradient.");

  // BLEU, with sacreBLEU's names: qkv.corpus_bleu(hyps, [refs]).score.
  nb::class_<BleuScore>(m, "BleuScore", "A corpus BLEU score and its statistics (sacreBLEU's).")
      .def_ro("score", &BleuScore::score, "0..100")
      .def_ro("counts", &BleuScore::correct, "matched n-grams per order")
      .def_ro("totals", &BleuScore::total, "hypothesis n-grams per order")
      .def_ro("precisions", &BleuScore::precisions, "per order, percent")
      .def_ro("bp", &BleuScore::brevity_penalty, "the brevity penalty")
      .def_ro("sys_len", &BleuScore::hypothesis_length)
      .def_ro("ref_len", &BleuScore::reference_length)
      .def("__repr__", [](const BleuScore& b) {
        return detail::str("BLEU = ", b.score, " (bp ", b.brevity_penalty, ", sys_len ",
                           b.hypothesis_length, ", ref_len ", b.reference_length, ")");
      });
  m.def(
      "corpus_bleu",
      [](const std::vector<std::string>& hypotheses,
         const std::vector<std::vector<std::string>>& references, bool lowercase,
         const std::string& tokenize, const std::string& smooth_method,
         std::optional<double> smooth_value, int max_ngram_order) {
        BleuOptions o{.lowercase = lowercase, .max_ngram_order = max_ngram_order};
        if (tokenize == "none")
          o.tokenize = BleuTokenize::none;
        else
          QKV_CHECK(tokenize == "13a", "corpus_bleu: tokenize must be '13a' or 'none', got '",
                    tokenize, "'");
        const std::map<std::string, BleuSmooth> smooth{{"exp", BleuSmooth::exp},
                                                       {"none", BleuSmooth::none},
                                                       {"floor", BleuSmooth::floor},
                                                       {"add-k", BleuSmooth::add_k}};
        const auto it = smooth.find(smooth_method);
        QKV_CHECK(it != smooth.end(),
                  "corpus_bleu: smooth_method must be 'exp', 'none', 'floor' or 'add-k', got '",
                  smooth_method, "'");
        o.smooth = it->second;
        o.smooth_value = smooth_value.value_or(-1);
        nb::gil_scoped_release release;
        return corpus_bleu(hypotheses, references, o);
      },
      nb::arg("hypotheses"), nb::arg("references"), nb::arg("lowercase") = false,
      nb::arg("tokenize") = "13a", nb::arg("smooth_method") = "exp",
      nb::arg("smooth_value") = nb::none(), nb::arg("max_ngram_order") = 4,
      "Corpus BLEU as sacrebleu.corpus_bleu computes it: hypotheses[i] against "
      "references[r][i] for every reference stream r.");
  m.def(
      "tokenize_13a", [](const std::string& line) { return tokenize_13a(line); }, nb::arg("line"),
        "sacreBLEU's default (mteval-v13a) tokenisation of one line.");
}

}  // namespace qkv::python
