// Settings structs with a fields(f) method (f(name, field, help) for every
// setting) to and from JSON: --config files and a run's config.json.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "qkv/error.h"

namespace qkv::cli {

template <class Config>
nlohmann::json fields_to_json(const Config& config) {
  nlohmann::json out = nlohmann::json::object();
  Config copy = config;
  copy.fields([&](const char* name, auto& value, const char*) { out[name] = value; });
  return out;
}

// Sets the fields `json` names; qkv::Error for an unknown key or a value of
// the wrong type (an integer setting given 1.5, a string given 3), naming
// `source` and the key.
template <class Config>
void update_fields_from_json(Config& config, const nlohmann::json& json,
                             const std::string& source) {
  QKV_CHECK(json.is_object(), source, ": expected a JSON object of settings, got ",
            json.type_name());
  for (const auto& [key, value] : json.items()) {
    bool found = false;
    config.fields([&](const char* name, auto& field, const char*) {
      if (key != name) return;
      found = true;
      using T = std::decay_t<decltype(field)>;
      bool ok = true;
      if constexpr (std::is_same_v<T, double>)
        ok = value.is_number();
      else if constexpr (std::is_same_v<T, bool>)
        ok = value.is_boolean();
      else if constexpr (std::is_integral_v<T>)
        ok = value.is_number_integer() || value.is_number_unsigned();
      else
        ok = value.is_string();
      if (ok) {
        try {
          field = value.template get<T>();
        } catch (const std::exception&) {
          ok = false;
        }
      }
      QKV_CHECK(ok, source, ": setting '", key, "' has the wrong type (", value.dump(), ")");
    });
    QKV_CHECK(found, source, ": unknown setting '", key, "'");
  }
}

}  // namespace qkv::cli
