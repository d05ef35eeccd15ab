// torch.nn.Module.load_state_dict's checks, for every module.
#include "nn/state_dict.h"

#include <sstream>

namespace qkv::nn::detail {

Module::LoadResult load_state_dict(const char* module,
                                   const std::map<std::string, Tensor>& parameters,
                                   const std::map<std::string, Tensor>& state, bool strict) {
  Module::LoadResult result;
  std::ostringstream mismatched;
  for (const auto& [name, t] : parameters) {
    auto it = state.find(name);
    if (it == state.end()) {
      result.missing.push_back(name);
    } else if (!it->second.defined() || it->second.shape() != t.shape()) {
      mismatched << " " << name << " (checkpoint "
                 << (it->second.defined() ? shape_string(it->second.shape()) : "undefined")
                 << ", model " << shape_string(t.shape()) << ")";
    }
  }
  for (const auto& [name, t] : state)
    if (!parameters.count(name)) result.unexpected.push_back(name);
  auto list = [](const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += " " + n;
    return s.empty() ? std::string(" none") : s;
  };
  QKV_CHECK(mismatched.str().empty() &&
                (!strict || (result.missing.empty() && result.unexpected.empty())),
            module, ".load_state_dict: missing keys:", list(result.missing),
            "; unexpected keys:", list(result.unexpected),
            "; size mismatch:", mismatched.str().empty() ? std::string(" none") : mismatched.str());
  for (auto [name, t] : parameters) {
    auto it = state.find(name);
    if (it != state.end()) t.copy_(it->second);
  }
  return result;
}

}  // namespace qkv::nn::detail
