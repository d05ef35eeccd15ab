// nn::Module: named parameters, state dicts, train / eval.
#include "qkv/module.h"

#include <set>

#include "nn/state_dict.h"

namespace qkv::nn {

autograd::Variable Module::register_parameter(std::string name, Tensor value, bool requires_grad) {
  for (const auto& [n, v] : parameters_)
    QKV_CHECK(n != name, type_name(), ": parameter '", name, "' is registered twice");
  autograd::Variable v(std::move(value), requires_grad);
  parameters_.emplace_back(std::move(name), v);
  return v;
}

Tensor Module::register_buffer(std::string name, Tensor value) {
  buffers_.emplace_back(std::move(name), value);
  return value;
}

void Module::add_child(std::string name, std::shared_ptr<Module> module) {
  QKV_CHECK(module != nullptr, type_name(), ": submodule '", name, "' is null");
  module->train(training_);
  children_.emplace_back(std::move(name), std::move(module));
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, autograd::Variable>>& out) const {
  for (const auto& [name, v] : parameters_) out.emplace_back(prefix + name, v);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

void Module::collect_buffers(const std::string& prefix, std::map<std::string, Tensor>& out) const {
  for (const auto& [name, t] : buffers_) out[prefix + name] = t;
  for (const auto& [name, child] : children_) child->collect_buffers(prefix + name + ".", out);
}

std::vector<std::pair<std::string, autograd::Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, autograd::Variable>> out;
  collect("", out);
  return out;
}

std::vector<autograd::Variable> Module::parameters() const {
  std::vector<autograd::Variable> out;
  for (auto& [name, v] : named_parameters()) out.push_back(v);
  return out;
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const auto& [name, v] : named_parameters()) out[name] = v.value();
  collect_buffers("", out);
  return out;
}

Module::LoadResult Module::load_state_dict(const std::map<std::string, Tensor>& state,
                                           bool strict) {
  return detail::load_state_dict(type_name(), state_dict(), state, strict);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::to(DType dtype) {
  QKV_CHECK(is_floating(dtype), type_name(), ".to: ", dtype_name(dtype),
            " is not a float dtype (f32, f64, bf16, f16)");
  for (auto& [name, p] : named_parameters())
    if (p.dtype() != dtype) p.set_value(p.value().to(dtype));
}

void Module::zero_grad() {
  for (auto& [name, v] : named_parameters()) v.zero_grad();
}

}  // namespace qkv::nn
