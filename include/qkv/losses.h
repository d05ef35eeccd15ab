// Loss functions with their backward passes, as plain functions over tensors
// (the autograd layer calls them). Each matches torch.nn.functional's loss of
// the same name in semantics; the losses are computed in f32 from inputs of
// any float dtype (with double accumulation of sums) and returned as f32.
//
// A backward takes the upstream gradient `grad_output` (a one-element tensor
// for reduction mean / sum / batchmean, a tensor of the loss's shape for
// reduction none) and returns d loss / d input in the input's dtype, as torch
// does. Arguments that only condition the loss (targets, teacher logits) get
// no gradient; for mse_loss d loss / d target is minus d loss / d input.
#pragma once

#include <cstdint>

#include "qkv/names.h"
#include "qkv/tensor.h"

namespace qkv {

// How the element losses are combined. batchmean (sum / size(0)) is only
// meaningful for the KL divergences, as in torch.
enum class Reduction { none, mean, sum, batchmean };

struct CrossEntropyOptions {
  int64_t ignore_index = -100;   // targets equal to it add nothing and are not counted
  double label_smoothing = 0.0;  // in [0, 1]
  Reduction reduction = Reduction::mean;
};

// logits: [N, C] or [N, C, d1, ...] (classes along dim 1, as torch), or [C];
// targets: i64 / i32 class indices, [N] or [N, d1, ...] (or [] for [C] logits).
// loss_i = (1 - eps) * -log p[i, t_i] + eps / C * sum_c -log p[i, c] for the
// non-ignored i, with log p the log-softmax over the classes (Szegedy et al.
// 2016, as torch defines label smoothing). mean divides by the number of
// non-ignored targets: NaN when every target is ignored, like torch.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets,
                     const CrossEntropyOptions& options = {});
// d loss / d logits = g_i * (softmax - (1 - eps) * onehot(t_i) - eps / C), zero
// on ignored positions; g_i is the upstream gradient of element i (divided by
// the non-ignored count for mean).
Tensor cross_entropy_backward(const Tensor& grad_output, const Tensor& logits,
                              const Tensor& targets, const CrossEntropyOptions& options = {});

// (input - target)^2, element-wise over two tensors of the same shape.
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean);
Tensor mse_loss_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                         Reduction reduction = Reduction::mean);

// torch.nn.functional.kl_div: element losses target * (log target - input)
// (0 where target == 0), or exp(target) * (target - input) with log_target.
// `input` holds log-probabilities. mean averages over every element;
// batchmean divides the sum by input.size(0), the KL divergence per sample.
Tensor kl_div(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean,
              bool log_target = false);
Tensor kl_div_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                       Reduction reduction = Reduction::mean, bool log_target = false);

// Knowledge distillation (Hinton, Vinyals & Dean 2015):
// T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the last dim,
// i.e. T^2 * kl_div(log_softmax(student / T), log_softmax(teacher / T),
// reduction, log_target = true). The T^2 keeps the gradient's scale
// independent of T. Student and teacher logits have the same shape.
Tensor kl_div_distillation(const Tensor& student_logits, const Tensor& teacher_logits,
                           double temperature, Reduction reduction = Reduction::batchmean);
// d loss / d student_logits: T * (p_s * sum_c w_c - w) with w = g * p_t per
// element (T * g * (p_s - p_t) for a uniform upstream gradient g).
Tensor kl_div_distillation_backward(const Tensor& grad_output, const Tensor& student_logits,
                                    const Tensor& teacher_logits, double temperature,
                                    Reduction reduction = Reduction::batchmean);

inline constexpr EnumNames<Reduction, 4> kReductionNames{{{Reduction::none, "none"},
                                                          {Reduction::mean, "mean"},
                                                          {Reduction::sum, "sum"},
                                                          {Reduction::batchmean, "batchmean"}}};
inline const char* reduction_name(Reduction r) { return name_of(kReductionNames, r).data(); }

}  // namespace qkv
