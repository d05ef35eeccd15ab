// Checkpoints and model weights in safetensors files (qkv/checkpoint.h).
//
// The training state goes into the header's __metadata__ as one JSON object:
// doubles are written in their shortest round-trip form and read back with a
// correctly rounded parser, so they come back bit for bit; uint64 RNG states
// are decimal strings, since JSON readers elsewhere (JavaScript, some Python
// tools) keep numbers as doubles and would round them.
#include "qkv/checkpoint.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "io/file.h"
#include "qkv/safetensors.h"

namespace qkv {
namespace {

using json = nlohmann::json;

constexpr const char* kFormatKey = "format";
constexpr const char* kCheckpointFormat = "qkv-checkpoint";
constexpr const char* kStateKey = "qkv_training_state";
constexpr std::string_view kModelPrefix = "model.";
constexpr std::string_view kOptimizerPrefix = "optimizer.";

bool starts_with(const std::string& s, std::string_view prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

void check_finite(double value, const char* what, const std::string& path) {
  QKV_CHECK(std::isfinite(value), "save_checkpoint '", path, "': ", what, " is ", value,
            "; expected a finite value");
}

std::string state_to_json(const TrainingState& s, const std::string& path) {
  check_finite(s.base_lr, "base_lr", path);
  check_finite(s.lr, "lr", path);
  json j;
  j["step"] = s.step;
  j["skipped_steps"] = s.skipped_steps;
  j["base_lr"] = s.base_lr;
  j["lr"] = s.lr;
  json parameters = json::object();
  for (const auto& [name, value] : s.schedule.parameters) {
    check_finite(value, ("schedule parameter " + name).c_str(), path);
    parameters[name] = value;
  }
  j["schedule"] = {{"name", s.schedule.name}, {"parameters", parameters}};
  json rng = json::object();
  for (const auto& [name, state] : s.rng_states) rng[name] = std::to_string(state);
  j["rng_states"] = rng;
  json extra = json::object();
  for (const auto& [key, value] : s.extra) extra[key] = value;
  j["extra"] = extra;
  return j.dump();
}

// The checkpoint's JSON with every field checked; errors name the file.
TrainingState state_from_json(const std::string& text, const std::string& path) {
  const std::string where = "load_checkpoint '" + path + "': " + kStateKey + " ";
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(detail::str(where, "is not valid JSON (", e.what(), ")"));
  }
  QKV_CHECK(j.is_object(), where, "is not a JSON object");
  auto field = [&](const char* name, bool (json::*is)() const, const char* kind) -> const json& {
    const auto it = j.find(name);
    QKV_CHECK(it != j.end(), where, "has no '", name, "'");
    QKV_CHECK(((*it).*is)(), where, "field '", name, "' is not ", kind);
    return *it;
  };
  TrainingState s;
  s.step = field("step", &json::is_number_integer, "an integer").get<int64_t>();
  s.skipped_steps = field("skipped_steps", &json::is_number_integer, "an integer").get<int64_t>();
  QKV_CHECK(s.step >= 0 && s.skipped_steps >= 0 && s.skipped_steps <= s.step, where, "has step ",
            s.step, " and skipped_steps ", s.skipped_steps, "; expected 0 <= skipped <= step");
  s.base_lr = field("base_lr", &json::is_number, "a number").get<double>();
  s.lr = field("lr", &json::is_number, "a number").get<double>();
  const json& schedule = field("schedule", &json::is_object, "an object");
  QKV_CHECK(schedule.contains("name") && schedule["name"].is_string(), where,
            "schedule has no string 'name'");
  s.schedule.name = schedule["name"].get<std::string>();
  if (schedule.contains("parameters")) {
    QKV_CHECK(schedule["parameters"].is_object(), where, "schedule.parameters is not an object");
    for (const auto& [name, value] : schedule["parameters"].items()) {
      QKV_CHECK(value.is_number(), where, "schedule parameter '", name, "' is not a number");
      s.schedule.parameters[name] = value.get<double>();
    }
  }
  for (const auto& [name, value] : field("rng_states", &json::is_object, "an object").items()) {
    QKV_CHECK(value.is_string(), where, "rng state '", name, "' is not a decimal string");
    const std::string digits = value.get<std::string>();
    char* end = nullptr;
    errno = 0;
    const unsigned long long state = std::strtoull(digits.c_str(), &end, 10);
    QKV_CHECK(!digits.empty() && digits[0] != '-' && *end == '\0' && errno == 0, where,
              "rng state '", name, "' is '", digits, "'; expected a uint64 in decimal");
    s.rng_states[name] = static_cast<uint64_t>(state);
  }
  if (j.contains("extra")) {
    QKV_CHECK(j["extra"].is_object(), where, "field 'extra' is not an object");
    for (const auto& [key, value] : j["extra"].items()) {
      QKV_CHECK(value.is_string(), where, "extra '", key, "' is not a string");
      s.extra[key] = value.get<std::string>();
    }
  }
  return s;
}

// A test hook for the crash-safety tests: with QKV_TEST_CHECKPOINT_PAUSE_FILE
// set, the writer stops halfway through the temporary file, creates that
// file as a signal, and sleeps (up to a minute) so the test can kill it.
void write_with_test_pause(io::FileSink& sink, const std::vector<uint8_t>& bytes) {
  const char* marker = std::getenv("QKV_TEST_CHECKPOINT_PAUSE_FILE");
  if (marker == nullptr || *marker == '\0') {
    sink.write(bytes.data(), bytes.size());
    return;
  }
  const size_t half = bytes.size() / 2;
  sink.write(bytes.data(), half);
  std::ofstream(marker) << ::getpid() << "\n";
  std::this_thread::sleep_for(std::chrono::seconds(60));
  sink.write(bytes.data() + half, bytes.size() - half);
}

std::map<std::string, Tensor> model_entries(const safetensors::File& file, bool checkpoint) {
  std::map<std::string, Tensor> out;
  for (const safetensors::TensorInfo& info : file.tensors()) {
    if (!checkpoint)
      out.emplace(info.name, file.get(info.name));
    else if (starts_with(info.name, kModelPrefix))
      out.emplace(info.name.substr(kModelPrefix.size()), file.get(info.name));
  }
  return out;
}

bool is_checkpoint(const safetensors::File& file) {
  const auto it = file.metadata().find(kFormatKey);
  return it != file.metadata().end() && it->second == kCheckpointFormat;
}

TrainingState checkpoint_state(const safetensors::File& file, const std::string& path) {
  QKV_CHECK(is_checkpoint(file), "load_checkpoint '", path,
            "': not a qkv checkpoint (its __metadata__ has no format 'qkv-checkpoint'); "
            "load_model reads weights-only files");
  const auto it = file.metadata().find(kStateKey);
  QKV_CHECK(it != file.metadata().end(), "load_checkpoint '", path, "': __metadata__ has no '",
            kStateKey, "'");
  return state_from_json(it->second, path);
}

// The module's load_state_dict, its message prefixed by the file.
void load_into(nn::Module& model, const std::map<std::string, Tensor>& state, const char* op,
               const std::string& path) {
  try {
    model.load_state_dict(state, /*strict=*/true);
  } catch (const Error& e) {
    throw Error(detail::str(op, " '", path, "': the file does not fit the model: ", e.what()));
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const nn::Module& model, const Optimizer& optimizer,
                     const TrainingState& state) {
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : model.state_dict())
    tensors.emplace(std::string(kModelPrefix) + name, t);
  for (const auto& [name, t] : optimizer.state_dict())
    tensors.emplace(std::string(kOptimizerPrefix) + name, t);
  const std::map<std::string, std::string> metadata = {{kFormatKey, kCheckpointFormat},
                                                       {kStateKey, state_to_json(state, path)}};
  const std::vector<uint8_t> bytes = safetensors::serialize(tensors, metadata);
  io::write_file_atomically(path, [&](io::FileSink& sink) { write_with_test_pause(sink, bytes); });
}

TrainingState read_training_state(const std::string& path) {
  return checkpoint_state(safetensors::File::open(path), path);
}

TrainingState load_checkpoint(const std::string& path, nn::Module& model, Optimizer& optimizer) {
  const safetensors::File file = safetensors::File::open(path);
  TrainingState state = checkpoint_state(file, path);

  std::map<std::string, Tensor> optimizer_state;
  std::string stray;
  for (const safetensors::TensorInfo& info : file.tensors()) {
    if (starts_with(info.name, kOptimizerPrefix))
      optimizer_state.emplace(info.name.substr(kOptimizerPrefix.size()), file.get(info.name));
    else if (!starts_with(info.name, kModelPrefix))
      stray += " " + info.name;
  }
  QKV_CHECK(stray.empty(), "load_checkpoint '", path,
            "': entries neither 'model.' nor 'optimizer.':", stray);

  // All or nothing: the model's old values come back if the optimizer's
  // state does not fit.
  std::map<std::string, Tensor> previous;
  for (const auto& [name, t] : model.state_dict()) previous.emplace(name, t.clone());
  load_into(model, model_entries(file, /*checkpoint=*/true), "load_checkpoint", path);
  try {
    optimizer.load_state_dict(optimizer_state);
    optimizer.set_lr(state.lr);
  } catch (const Error& e) {
    model.load_state_dict(previous);
    throw Error(detail::str("load_checkpoint '", path,
                            "': the optimizer state does not fit the optimizer: ", e.what()));
  }
  return state;
}

void save_model(const std::string& path, const nn::Module& model,
                const std::map<std::string, std::string>& metadata) {
  safetensors::save(path, model.state_dict(), metadata);
}

std::map<std::string, Tensor> load_weights(const std::string& path) {
  const safetensors::File file = safetensors::File::open(path);
  return model_entries(file, is_checkpoint(file));
}

void load_model(const std::string& path, nn::Module& model) {
  load_into(model, load_weights(path), "load_model", path);
}

}  // namespace qkv
