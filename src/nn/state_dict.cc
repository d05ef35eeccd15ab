// torch.nn.Module.load_state_dict(strict=True)'s checks.
#include "nn/state_dict.h"

#include <sstream>

namespace qkv::nn::detail {

void load_state_dict_strict(const char* module, std::map<std::string, Tensor>& parameters,
                            const std::map<std::string, Tensor>& state) {
  std::ostringstream missing, unexpected, mismatched;
  for (const auto& [name, t] : parameters) {
    auto it = state.find(name);
    if (it == state.end()) {
      missing << " " << name;
    } else if (!it->second.defined() || it->second.shape() != t.shape()) {
      mismatched << " " << name << " ("
                 << (it->second.defined() ? shape_string(it->second.shape()) : "undefined")
                 << " vs " << shape_string(t.shape()) << ")";
    }
  }
  for (const auto& [name, t] : state)
    if (!parameters.count(name)) unexpected << " " << name;
  QKV_CHECK(missing.str().empty() && unexpected.str().empty() && mismatched.str().empty(), module,
            ".load_state_dict: missing keys:", missing.str(),
            "; unexpected keys:", unexpected.str(),
            "; size mismatch (given vs expected):", mismatched.str());
  for (auto& [name, t] : parameters) t.copy_(state.at(name));
}

}  // namespace qkv::nn::detail
