// The state_dict load every nn module shares (torch's load_state_dict).
// Internal to the library.
#pragma once

#include <map>
#include <string>

#include "qkv/module.h"
#include "qkv/tensor.h"

namespace qkv::nn::detail {

// Copies `state` into `parameters` (tensors that share storage with a
// module's parameters; any dtype converts). A name both have with another
// shape (or an undefined tensor) is always an error; with `strict`, so is a
// missing or unexpected name. The error names `module` and lists the missing
// keys, the unexpected keys and each size mismatch (checkpoint vs model).
// Nothing is copied when it throws.
Module::LoadResult load_state_dict(const char* module,
                                   const std::map<std::string, Tensor>& parameters,
                                   const std::map<std::string, Tensor>& state, bool strict);

}  // namespace qkv::nn::detail
