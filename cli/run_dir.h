// A training run's directory (see train.h) and loading a trained model back
// from it for `qkv generate`, `qkv eval`, `qkv attend` and `qkv info`.
#pragma once

#include <memory>
#include <string>

#include "codec.h"
#include "qkv/checkpoint.h"
#include "qkv/gpt.h"

namespace qkv::cli {

inline constexpr const char* kCheckpointFile = "checkpoint.safetensors";
inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kLossFile = "loss.csv";

struct LoadedRun {
  std::string dir, checkpoint;
  TextCodec codec;
  std::unique_ptr<nn::GPT> model;  // in eval mode
  TrainingState state;
};

// `path`: a run directory, or the checkpoint file inside one. The model is
// rebuilt from the checkpoint's recorded configuration and loaded strictly;
// errors name the path and what is missing or wrong.
LoadedRun load_run(const std::string& path);

}  // namespace qkv::cli
