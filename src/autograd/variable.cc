// The tape: Variables, Nodes, and the reverse walk of backward().
#include <unordered_map>
#include <utility>
#include <vector>

#include "qkv/autograd.h"
#include "qkv/ops.h"

namespace qkv::autograd {
namespace detail {

struct VariableImpl {
  Tensor value;
  Tensor grad;
  bool requires_grad = false;
  bool retains_grad = false;  // a non-leaf that keeps its gradient
  std::shared_ptr<Node> grad_fn;
};

}  // namespace detail

namespace {

thread_local bool recording = true;

// grad += g in `dtype` (gradient_dtype of the variable's value; a first
// gradient is copied, never aliased, so that later accumulation cannot write
// into an op's saved tensor).
void accumulate(Tensor& grad, const Tensor& g, DType dtype) {
  const Tensor converted = g.to(dtype);
  grad = grad.defined() ? add(grad, converted) : converted.clone();
}

// The same for a leaf's gradient handed over by the tape: a first gradient
// that nothing else references (a fresh, contiguous f32 result of the op's
// backward) is kept as it is instead of copied.
void accumulate_owned(Tensor& grad, Tensor&& g, DType dtype) {
  const bool owned = g.dtype() == dtype && g.is_contiguous() && g.storage() != nullptr &&
                     g.storage().use_count() == 1 && g.offset() == 0 &&
                     g.nbytes() == g.storage()->nbytes();
  if (!grad.defined() && owned) {
    grad = std::move(g);
    return;
  }
  accumulate(grad, g, dtype);
}

// The gradient flowing into a node: it only reaches that node's backward,
// which reads it, and sums never write into their operands, so a first
// gradient is kept without a copy (it may alias another node's).
void accumulate_internal(Tensor& grad, const Tensor& g, DType dtype) {
  const Tensor converted = g.to(dtype);
  grad = grad.defined() ? add(grad, converted) : converted;
}

const detail::VariableImpl& checked(const std::shared_ptr<detail::VariableImpl>& impl,
                                    const char* what) {
  QKV_CHECK(impl != nullptr, "Variable::", what, ": the variable is undefined");
  return *impl;
}

}  // namespace

bool grad_enabled() {
  return recording;
}
void set_grad_enabled(bool on) {
  recording = on;
}
NoGradGuard::NoGradGuard() : previous_(recording) {
  recording = false;
}
NoGradGuard::~NoGradGuard() {
  recording = previous_;
}

Variable::Variable(Tensor value, bool requires_grad)
    : impl_(std::make_shared<detail::VariableImpl>()) {
  QKV_CHECK(value.defined(), "Variable: the value is an undefined tensor");
  QKV_CHECK(!requires_grad || is_floating(value.dtype()),
            "Variable: only float tensors can require a gradient; this one is ",
            dtype_name(value.dtype()));
  impl_->value = std::move(value);
  impl_->requires_grad = requires_grad;
}

const Tensor& Variable::value() const {
  return checked(impl_, "value").value;
}
bool Variable::requires_grad() const {
  return checked(impl_, "requires_grad").requires_grad;
}
bool Variable::is_leaf() const {
  return checked(impl_, "is_leaf").grad_fn == nullptr;
}
const std::shared_ptr<Node>& Variable::grad_fn() const {
  return checked(impl_, "grad_fn").grad_fn;
}
const Tensor& Variable::grad() const {
  return checked(impl_, "grad").grad;
}

void Variable::set_requires_grad(bool on) {
  checked(impl_, "set_requires_grad");
  QKV_CHECK(impl_->grad_fn == nullptr,
            "Variable::set_requires_grad: only a leaf can change it; this "
            "variable was made by ",
            impl_->grad_fn->name(), " (use detach())");
  QKV_CHECK(!on || is_floating(impl_->value.dtype()),
            "Variable::set_requires_grad: only float tensors can require a gradient; this one is ",
            dtype_name(impl_->value.dtype()));
  impl_->requires_grad = on;
}

void Variable::set_grad(Tensor grad) {
  checked(impl_, "set_grad");
  QKV_CHECK(!grad.defined() || grad.shape() == impl_->value.shape(),
            "Variable::set_grad: gradient ", shape_string(grad.shape()),
            " does not match the value ", shape_string(impl_->value.shape()));
  impl_->grad = std::move(grad);
}

void Variable::set_value(Tensor value) {
  checked(impl_, "set_value");
  QKV_CHECK(impl_->grad_fn == nullptr, "Variable::set_value: only a leaf's value can be replaced; "
            "this variable was made by ", impl_->grad_fn->name());
  QKV_CHECK(value.defined() && value.shape() == impl_->value.shape(),
            "Variable::set_value: the new value ", shape_string(value.shape()),
            " does not match the old ", shape_string(impl_->value.shape()));
  QKV_CHECK(!impl_->requires_grad || is_floating(value.dtype()),
            "Variable::set_value: a variable that requires a gradient needs a float value; this "
            "one is ", dtype_name(value.dtype()));
  impl_->value = std::move(value);
  impl_->grad = Tensor();
}

void Variable::zero_grad() {
  checked(impl_, "zero_grad"), impl_->grad = Tensor();
}

void Variable::retain_grad() {
  checked(impl_, "retain_grad");
  QKV_CHECK(impl_->requires_grad,
            "Variable::retain_grad: the variable does not require a gradient");
  impl_->retains_grad = true;
  if (impl_->grad_fn) impl_->grad_fn->output_ = impl_;
}

Variable Variable::detach() const {
  return Variable(value(), false);
}

Node::Node(std::string name, BackwardFunction backward, std::vector<Variable> inputs)
    : name_(std::move(name)), backward_(std::move(backward)) {
  edges_.reserve(inputs.size());
  for (const Variable& in : inputs) {
    Edge e;
    if (in.defined() && in.requires_grad()) {
      if (in.grad_fn())
        e.node = in.grad_fn();
      else
        e.leaf = in.impl();
      e.shape = in.shape();
      e.grad_dtype = gradient_dtype(in.dtype());
    }
    edges_.push_back(std::move(e));
  }
}

Variable record(const char* name, Tensor output, std::vector<Variable> inputs,
                BackwardFunction backward) {
  Variable out(std::move(output));
  bool needs = false;
  for (const Variable& in : inputs) needs |= in.defined() && in.requires_grad();
  if (!needs || !recording) return out;
  auto& impl = *out.impl();
  QKV_CHECK(is_floating(impl.value.dtype()), name, ": a ", dtype_name(impl.value.dtype()),
            " result cannot carry a gradient");
  impl.requires_grad = true;
  impl.grad_fn = std::make_shared<Node>(name, std::move(backward), std::move(inputs));
  return out;
}

// backward(): Kahn's order over the nodes reachable from the root, so each
// node runs once, after every node that feeds its output gradient.
struct Tape {
  static void run(const std::shared_ptr<Node>& root, Tensor root_grad, bool retain_graph) {
    std::unordered_map<Node*, int> pending;  // consumers not yet run, per node
    std::vector<Node*> stack{root.get()};
    pending[root.get()] = 0;
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (const Node::Edge& e : n->edges_) {
        if (!e.node) continue;
        auto [it, fresh] = pending.try_emplace(e.node.get(), 0);
        ++it->second;
        if (fresh) stack.push_back(e.node.get());
      }
    }
    std::unordered_map<Node*, Tensor> grads;
    grads[root.get()] = std::move(root_grad);
    std::vector<Node*> ready{root.get()};
    while (!ready.empty()) {
      Node* n = ready.back();
      ready.pop_back();
      Tensor grad = std::move(grads[n]);
      grads.erase(n);
      QKV_CHECK(n->backward_ != nullptr, "backward of ", n->name_,
                ": its saved tensors were already freed by an earlier backward() (pass "
                "retain_graph = true to differentiate a graph twice)");
      if (auto out = n->output_.lock(); out && out->retains_grad)
        accumulate(out->grad, grad, gradient_dtype(out->value.dtype()));
      std::vector<Tensor> in_grads = n->backward_(grad);
      QKV_CHECK(in_grads.size() == n->edges_.size(), "backward of ", n->name_, ": returned ",
                in_grads.size(), " gradients for ", n->edges_.size(), " inputs");
      if (!retain_graph) n->backward_ = nullptr;
      for (size_t i = 0; i < in_grads.size(); ++i) {
        const Node::Edge& e = n->edges_[i];
        if (!e.node && !e.leaf) continue;
        Tensor& g = in_grads[i];
        if (!g.defined()) {
          if (!e.node) continue;
          g = Tensor::zeros(e.shape, e.grad_dtype);
        }
        QKV_CHECK(g.shape() == e.shape, "backward of ", n->name_, ": gradient ", i, " has shape ",
                  shape_string(g.shape()), "; the input has ", shape_string(e.shape));
        if (e.leaf) {
          accumulate_owned(e.leaf->grad, std::move(g), e.grad_dtype);
        } else {
          accumulate_internal(grads[e.node.get()], g, e.grad_dtype);
          if (--pending[e.node.get()] == 0) ready.push_back(e.node.get());
        }
      }
    }
  }
};

void Variable::backward(const Tensor& grad, bool retain_graph) const {
  checked(impl_, "backward");
  QKV_CHECK(impl_->requires_grad,
            "Variable::backward: the variable does not require a gradient "
            "(no input of the ops that made it requires one, or it was made under NoGradGuard)");
  Tensor g = grad;
  if (!g.defined()) {
    QKV_CHECK(impl_->value.numel() == 1,
              "Variable::backward: without a gradient argument the "
              "variable must be a scalar; it has shape ",
              shape_string(impl_->value.shape()));
    g = Tensor::ones(impl_->value.shape(), gradient_dtype(impl_->value.dtype()));
  }
  QKV_CHECK(g.shape() == impl_->value.shape(), "Variable::backward: gradient ",
            shape_string(g.shape()), " does not match the variable ",
            shape_string(impl_->value.shape()));
  if (!impl_->grad_fn) {  // a leaf: d self / d self
    accumulate(impl_->grad, g, gradient_dtype(impl_->value.dtype()));
    return;
  }
  if (impl_->retains_grad) impl_->grad_fn->output_ = impl_;
  Tape::run(impl_->grad_fn, g.to(gradient_dtype(impl_->value.dtype())), retain_graph);
}

}  // namespace qkv::autograd
