// What attention() and attention_reference() share: the checked and resolved
// form of one call (views in [B, H, L, D] order, the scale, the masks), so the
// fused kernel and the oracle read the same arguments the same way.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "kernels/cpu/attention.h"
#include "qkv/attention.h"

namespace qkv::detail {

// The modifiers of AttentionOptions as the kernels' per-block hooks.
class ModifierHooks : public kernels::AttentionHooks {
 public:
  // gradients (may be null) gathers the score modifier's learned gradients in
  // a backward; grad_probability_term (may be null) adds its scores to dP.
  ModifierHooks(MaskModPtr mask, ScoreModPtr score, ScoreModGradients* gradients = nullptr,
                ScoreModPtr grad_probability_term = nullptr)
      : mask_(std::move(mask)),
        score_(std::move(score)),
        gradients_(gradients),
        grad_probability_term_(std::move(grad_probability_term)) {}
  Visibility visibility(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0,
                        int64_t k1) const override;
  bool has_score_mod() const override { return score_ != nullptr; }
  bool needs_raw_scores() const override { return score_ && score_->needs_raw_scores(); }
  void modify_scores(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1, float* s,
                     int64_t ld) const override;
  void mask_scores(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1, float* s,
                   int64_t ld) const override;
  void score_backward(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1,
                      const float* raw, float* grad, int64_t ld) const override;
  bool has_grad_probability_term() const override { return grad_probability_term_ != nullptr; }
  void add_grad_probability_term(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0,
                                 int64_t k1, float* dp, int64_t ld) const override;
  bool allowed(int64_t b, int64_t h, int64_t q, int64_t k) const override;
  double score(double s, int64_t b, int64_t h, int64_t q, int64_t k) const override;
  double derivative(double s, int64_t b, int64_t h, int64_t q, int64_t k) const override;

 private:
  MaskModPtr mask_;
  ScoreModPtr score_;
  ScoreModGradients* gradients_;
  ScoreModPtr grad_probability_term_;
};

struct AttentionPlan {
  // q, k, v and the masks as [B, H, L, D] / [B, Hq, Lq, Lk] views (no copies,
  // except a head dim that was not contiguous).
  Tensor q, k, v;
  Tensor allowed;      // bool, or undefined
  Tensor bias;         // f32, or undefined
  Tensor key_padding;  // bool [B, Lk], or undefined
  AttentionLayout layout = AttentionLayout::bhld;
  int64_t batch = 0, heads = 0, kv_heads = 0, lq = 0, lk = 0, d = 0, dv = 0;
  float scale = 1.0f;
  double scale_f64 = 1.0;  // unrounded, for f64
  int64_t causal_diagonal = kernels::kNoCausal;
  float dropout = 0.0f;
  uint64_t dropout_seed = 0;
  std::vector<int64_t> weights_heads;
  std::shared_ptr<const ModifierHooks> hooks;  // null without modifiers

  // The dtype of the results and gradients: f64 on the f64 path, else f32.
  DType result_dtype() const { return q.dtype() == DType::f64 ? DType::f64 : DType::f32; }
  // Zero-filled output in q's layout, log-sum-exp [B, Hq, Lq] if asked, and
  // the weights of weights_heads.
  AttentionResult make_result(bool with_lse) const;
  // The output viewed as [B, H, L, Dv].
  static Tensor output_bhld(const AttentionResult& result, AttentionLayout layout);
  // Pointers and strides of head h of batch b.
  kernels::AttentionSlice slice(int64_t b, int64_t h, const AttentionResult& result) const;
};

// Helpers shared by the fused and the reference backward (backward.cc). The
// gradients are zeros of plan.result_dtype().
Tensor like_bhld(const Tensor& t, AttentionLayout layout);
AttentionGradients allocate_gradients(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const AttentionPlan& plan, bool mask_grad);
Tensor reduce_to_shape(const Tensor& full, const Shape& shape);
void check_backward_args(const Tensor& grad_output, const AttentionPlan& plan,
                         const AttentionOptions& options, bool mask_requires_grad, const char* op);

// attention_backward() with an extra additive term of dP, the scores of
// grad_probability_term (Shaw's relative values, relative.cc); errors name op.
AttentionGradients attention_backward_with(const Tensor& grad_output, const Tensor& q,
                                           const Tensor& k, const Tensor& v,
                                           const AttentionResult& forward,
                                           const AttentionOptions& options, bool mask_requires_grad,
                                           ScoreModPtr grad_probability_term, const char* op);

// The backward oracle with the same extra dP term; the f64 path of
// attention_backward_with.
AttentionGradients attention_backward_reference_with(const Tensor& grad_output, const Tensor& q,
                                                     const Tensor& k, const Tensor& v,
                                                     const AttentionOptions& options,
                                                     bool mask_requires_grad,
                                                     const ScoreMod* grad_probability_term,
                                                     const char* op);

// Validates the arguments; errors name `op`, the argument and the values.
AttentionPlan plan_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const AttentionOptions& options, const char* op);

}  // namespace qkv::detail
