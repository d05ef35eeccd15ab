// Reverse-mode automatic differentiation over qkv tensors (SPEC §5).
//
// A Variable is a tensor on the tape. Ops on Variables (qkv::autograd::matmul,
// add, layer_norm, attention, cross_entropy, ...) compute their value with the
// library's kernels and, when an input requires a gradient and recording is
// on, record a Node: the op's backward with exactly the tensors it needs, and
// edges to the nodes (or leaves) that made its inputs. The graph holds no
// other intermediate values. backward() walks the nodes in reverse
// topological order and accumulates gradients into the leaves (parameters),
// as torch.autograd does:
//
//   autograd::Variable w(randn({4, 3}, gen), /*requires_grad=*/true);
//   autograd::Variable x(input);
//   autograd::Variable loss = autograd::mean(autograd::matmul(x, w));
//   loss.backward();          // w.grad() = d loss / d w
//
// Gradients are f32 whatever the value's dtype (bf16 activations under
// autocast keep f32 gradients), except that f64 values get f64 gradients
// (gradcheck differentiates whole models in f64). Recording is per thread; a graph is used from
// one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qkv/attention.h"
#include "qkv/linear_attention.h"
#include "qkv/losses.h"
#include "qkv/matmul.h"
#include "qkv/ops.h"
#include "qkv/positions.h"
#include "qkv/tensor.h"

namespace qkv::autograd {

namespace detail {
struct VariableImpl;
}  // namespace detail
class Node;

// The dtype of the gradient of a value of `value` dtype: f64 for f64, else f32.
inline DType gradient_dtype(DType value) {
  return value == DType::f64 ? DType::f64 : DType::f32;
}

class Variable {
 public:
  Variable() = default;
  // A leaf: an input, or a parameter when requires_grad.
  explicit Variable(Tensor value, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const;
  const Shape& shape() const { return value().shape(); }
  int64_t size(int64_t d) const { return value().size(d); }
  int64_t dim() const { return value().dim(); }
  DType dtype() const { return value().dtype(); }

  bool requires_grad() const;
  // Leaves only: a parameter starts or stops collecting gradients.
  void set_requires_grad(bool on);
  bool is_leaf() const;
  // The op that made this variable (null for a leaf).
  const std::shared_ptr<Node>& grad_fn() const;

  // The gradient accumulated by backward(): kept for leaves that require a
  // gradient, and for other variables after retain_grad(); undefined until a
  // backward reaches it.
  const Tensor& grad() const;
  void set_grad(Tensor grad);
  void zero_grad();  // drops the gradient (torch's set_to_none)
  void retain_grad();

  // Leaves only: replaces the value with one of the same shape (any float
  // dtype, e.g. Module::to(DType::f64)) and drops the gradient.
  void set_value(Tensor value);

  // The same value, off the tape (no gradient flows through it).
  Variable detach() const;

  // Differentiates this variable: a scalar needs no `grad` (d self = 1),
  // otherwise pass d loss / d self of its shape. Gradients add to what the
  // leaves hold (accumulation over micro-batches); the graph's saved tensors
  // are released unless retain_graph.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;

  // Internal: the shared state (ops and the tape use it).
  const std::shared_ptr<detail::VariableImpl>& impl() const { return impl_; }
  explicit Variable(std::shared_ptr<detail::VariableImpl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<detail::VariableImpl> impl_;
};

// Whether ops record onto the tape (per thread; on by default).
bool grad_enabled();
void set_grad_enabled(bool on);
// Turns recording off for its scope: inference, optimizer updates, metrics.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Mixed precision (bf16 autocast with f32 master weights): inside the scope,
// matmul, linear and attention run on bf16 copies of their inputs
// (AVX512-BF16 / AMX through oneDNN, f32 accumulation and results);
// normalisation, softmax, losses and the rest stay f32, as under
// torch.autocast. The casts are recorded, so parameters stay f32 and their
// gradients arrive in f32. Per thread, nestable.
class AutocastGuard {
 public:
  explicit AutocastGuard(bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool previous_;
};
bool autocast_enabled();
void set_autocast_enabled(bool on);

// d loss / d input for each input of an op, given d loss / d output. An entry
// may be undefined when that input gets no gradient.
using BackwardFunction = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

// A recorded op: its name, its backward (owning the tensors it saved) and
// one edge per input.
class Node {
 public:
  Node(std::string name, BackwardFunction backward, std::vector<Variable> inputs);
  const std::string& name() const { return name_; }

 private:
  friend class Variable;
  friend struct Tape;
  std::string name_;
  BackwardFunction backward_;
  // Per input: the node that made it, or the leaf that collects its gradient
  // (both null when that input needs no gradient).
  struct Edge {
    std::shared_ptr<Node> node;
    std::shared_ptr<detail::VariableImpl> leaf;
    Shape shape;
    DType grad_dtype = DType::f32;
  };
  std::vector<Edge> edges_;
  std::weak_ptr<detail::VariableImpl> output_;  // for retain_grad
};

// The op-writer's entry: wraps `output` as a Variable and, when recording is
// on and an input requires a gradient, records `backward` for it. `name`
// appears in errors ("backward of layer_norm: ...").
Variable record(const char* name, Tensor output, std::vector<Variable> inputs,
                BackwardFunction backward);

}  // namespace qkv::autograd

// ---- Ops on Variables ------------------------------------------------------
// Each computes its value with the op of the same name (qkv/ops.h,
// qkv/matmul.h, qkv/attention.h, qkv/losses.h) and records its backward,
// written beside it in src/autograd/functions.cc. Tensor-only arguments
// (targets, ids, masks) get no gradient.
namespace qkv::autograd {

// A dtype conversion; its gradient is converted back (to gradient_dtype(x)).
Variable to(const Variable& x, DType dtype);

// Broadcasting element-wise arithmetic (gradients summed back to each shape).
Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable scale(const Variable& x, double factor);

Variable matmul(const Variable& a, const Variable& b, const MatmulOptions& options = {});
// x [..., in] W^T + b with W [out, in], b [out] (may be undefined): torch.nn.functional.linear.
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = Variable());

Variable relu(const Variable& x);
Variable gelu(const Variable& x, GeluApproximation approximation = GeluApproximation::none);
Variable silu(const Variable& x);
Variable softmax(const Variable& x, int64_t dim = -1);
Variable log_softmax(const Variable& x, int64_t dim = -1);
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias,
                    double eps = 1e-5);
Variable rms_norm(const Variable& x, const Variable& weight, double eps);
// Identity when !training or p == 0; else zeroes with probability p (mask from
// `generator`) and scales the rest by 1 / (1 - p).
Variable dropout(const Variable& x, double p, Generator& generator, bool training = true);
// weight [N, D] rows by ids (any shape, i32 / i64) -> [..., D]; padding_idx rows get no gradient.
Variable embedding(const Variable& weight, const Tensor& ids, int64_t padding_idx = -1);

// Shapes (values are views where the tensor allows).
Variable reshape(const Variable& x, const Shape& shape);
Variable permute(const Variable& x, const Shape& dims);
Variable transpose(const Variable& x, int64_t dim0, int64_t dim1);
Variable narrow(const Variable& x, int64_t dim, int64_t start, int64_t length);
Variable select(const Variable& x, int64_t dim, int64_t index);

Variable sum(const Variable& x);
Variable mean(const Variable& x);
Variable sum(const Variable& x, int64_t dim, bool keepdim = false);
Variable mean(const Variable& x, int64_t dim, bool keepdim = false);

// The fused attention (forward with its log-sum-exp, fused backward).
Variable attention(const Variable& q, const Variable& k, const Variable& v,
                   const AttentionOptions& options = {});
// Self-attention over one packed projection qkv [B, L, 3 * H * Dh] (q, k, v
// side by side: torch's in_proj, nanoGPT's c_attn) -> [B, L, H, Dh], as one
// op: the heads are strided views of qkv (no split copies), `rotary` (if any)
// rotates q and k, and the backward writes dq, dk, dv into one packed
// gradient (three narrow()s would each hand the tape a zero-filled copy).
// options.layout is blhd; under autocast qkv is converted to bf16 once.
Variable packed_self_attention(const Variable& qkv, int64_t heads,
                               const std::optional<RotaryOptions>& rotary,
                               const AttentionOptions& options = {});
// The attention variants with learned tensors (qkv/positions.h,
// qkv/linear_attention.h) as ops: the forward, and the explicit backward
// recorded with the learned tensors as inputs (qkv::autograd::gradcheck
// checks each in f64).
// T5's bucketed bias, table [num_buckets, H] learned; options.score_mod, if
// any, applies after it.
Variable t5_attention(const Variable& q, const Variable& k, const Variable& v,
                      const Variable& table, const T5BiasOptions& t5 = {},
                      const AttentionOptions& options = {});
// Shaw et al.'s relative keys a^K [2k + 1, D] and values a^V [2k + 1, Dv],
// either undefined for no such term.
Variable shaw_attention(const Variable& q, const Variable& k, const Variable& v,
                        const Variable& relative_key, const Variable& relative_value,
                        int64_t max_distance, const AttentionOptions& options = {},
                        int64_t query_offset = 0);
// [B, H, L, D] only; e, f: [k, n] or [H, k, n] learned projections.
Variable linformer_attention(const Variable& q, const Variable& k, const Variable& v,
                             const Variable& e, const Variable& f,
                             const AttentionOptions& options = {});
Variable linear_attention(const Variable& q, const Variable& k, const Variable& v,
                          const LinearAttentionOptions& options = {});
// w: performer_projection's fixed features (no gradient).
Variable performer_attention(const Variable& q, const Variable& k, const Variable& v,
                             const Tensor& w, const LinearAttentionOptions& options = {});
// Rotary position embedding of q or k (qkv::rotary_embedding, either layout);
// the gradient is rotated back by the negative angles (the rotation is
// orthogonal). f32 result.
Variable rotary_embedding(const Variable& x, const RotaryOptions& options = {});

Variable cross_entropy(const Variable& logits, const Tensor& targets,
                       const CrossEntropyOptions& options = {});
Variable mse_loss(const Variable& input, const Variable& target,
                  Reduction reduction = Reduction::mean);
Variable kl_div_distillation(const Variable& student_logits, const Tensor& teacher_logits,
                             double temperature, Reduction reduction = Reduction::batchmean);

}  // namespace qkv::autograd
