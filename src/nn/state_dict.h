// The strict state_dict load every nn module shares. Internal to the library.
#pragma once

#include <map>
#include <string>

#include "qkv/tensor.h"

namespace qkv::nn::detail {

// Copies state into parameters (any dtype converts); the names and shapes
// must match exactly, else qkv::Error naming `module`, the missing and
// unexpected keys and each mismatched shape (given vs expected).
void load_state_dict_strict(const char* module, std::map<std::string, Tensor>& parameters,
                            const std::map<std::string, Tensor>& state);

}  // namespace qkv::nn::detail
