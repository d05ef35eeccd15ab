// The base of trainable layers (SPEC §4): parameters as autograd Variables,
// named like PyTorch's state_dict keys (children prefix theirs with
// "name."), so weights move between qkv and PyTorch by name.
//
//   class Block : public nn::Module {
//    public:
//     explicit Block(Generator& gen) {
//       proj_ = register_module("proj", std::make_shared<nn::Linear>(nn::LinearConfig{64, 64},
//       gen)); scale_ = register_parameter("scale", Tensor::ones({64}));
//     }
//     autograd::Variable forward(const autograd::Variable& x) {
//       return autograd::mul(proj_->forward(x), scale_);
//     }
//    private:
//     std::shared_ptr<nn::Linear> proj_;
//     autograd::Variable scale_;
//   };
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qkv/autograd.h"
#include "qkv/tensor.h"

namespace qkv::nn {

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter, depth first in registration order, with its full name.
  std::vector<std::pair<std::string, autograd::Variable>> named_parameters() const;
  std::vector<autograd::Variable> parameters() const;
  // Name -> value (sharing storage with the parameter: writing into it
  // changes the module). Buffers (non-learned state) are included.
  std::map<std::string, Tensor> state_dict() const;
  // Copies values in. strict: the names and shapes must match exactly, else
  // qkv::Error listing the missing, unexpected and mismatched names, like
  // torch's load_state_dict. Not strict: loads the names both have and
  // returns the lists instead of throwing (shapes must still match).
  struct LoadResult {
    std::vector<std::string> missing, unexpected;
  };
  LoadResult load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

  // Training mode (dropout on), recursively.
  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }
  // Drops every parameter's gradient.
  void zero_grad();
  // Converts every parameter to `dtype` (a float dtype), recursively, like
  // torch's module.to(dtype); gradients are dropped. Buffers keep their
  // dtype (ops promote a mixed f32 / f64 pair to f64). f64 is for checking
  // (gradcheck, float64 references): its ops run the scalar double path.
  void to(DType dtype);
  // "Linear", "TransformerEncoderLayer": for error messages.
  virtual const char* type_name() const { return "Module"; }

 protected:
  // A learned parameter (requires_grad) named within this module.
  autograd::Variable register_parameter(std::string name, Tensor value, bool requires_grad = true);
  // State saved with the module but not learned (running statistics, tables).
  Tensor register_buffer(std::string name, Tensor value);
  template <class M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> module) {
    add_child(std::move(name), module);
    return module;
  }

 private:
  void add_child(std::string name, std::shared_ptr<Module> module);
  void collect(const std::string& prefix,
               std::vector<std::pair<std::string, autograd::Variable>>& out) const;
  void collect_buffers(const std::string& prefix, std::map<std::string, Tensor>& out) const;

  std::vector<std::pair<std::string, autograd::Variable>> parameters_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace qkv::nn
