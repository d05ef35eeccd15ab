// Checkpoints that resume exactly, and model weights by PyTorch's names.
//
// A checkpoint is ONE safetensors file, replaced atomically (a temporary file
// beside it, fsync, rename, fsync of the directory), so a crash or a kill in
// the middle of a save leaves the previous checkpoint intact under its name:
//
//   model.<torch name>          every entry of the module's state_dict()
//   optimizer.<param>.<field>   the optimizer's state_dict() (exp_avg, step, ...)
//   __metadata__                "format": "qkv-checkpoint", "qkv_training_state": a
//                               JSON object with the step, the learning rates,
//                               the schedule and the RNG states
//
// Resuming restores every value bit for bit (tensors as stored, doubles
// through JSON's shortest round-trip form, RNG states as decimal strings), so
// training continues as an uninterrupted run would.
//
// save_model / load_model hold the weights only, under the module's own names
// (the keys of torch's state_dict()), so the same file loads with
// safetensors.torch.load_file + torch.nn.Module.load_state_dict, and back.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "qkv/module.h"
#include "qkv/optim.h"
#include "qkv/tensor.h"

namespace qkv {

// A learning-rate multiplier with the name and parameters that rebuild it,
// so a checkpoint can record which schedule it was trained with.
struct ScheduleSpec {
  std::string name = "constant";
  std::map<std::string, double> parameters;
  bool operator==(const ScheduleSpec&) const = default;
};

// Everything besides tensors that an exact resume needs.
struct TrainingState {
  int64_t step = 0;           // optimizer steps taken (skipped ones included)
  int64_t skipped_steps = 0;  // steps skipped for a non-finite loss or gradient
  double base_lr = 0.0;
  double lr = 0.0;  // the optimizer's lr when saved (base_lr * schedule)
  ScheduleSpec schedule;
  // Generator::seed_state() of every generator involved (dropout,
  // data order, ...), by a name the caller chooses.
  std::map<std::string, uint64_t> rng_states;
  // Free-form strings kept with the checkpoint (run name, data position, ...).
  std::map<std::string, std::string> extra;
};

// Writes model, optimizer state and `state` to `path` atomically.
void save_checkpoint(const std::string& path, const nn::Module& model, const Optimizer& optimizer,
                     const TrainingState& state);
// Loads a checkpoint into `model` and `optimizer` (whose lr is set to the
// saved one) and returns its training state. Strict, like torch's
// load_state_dict: a file of another architecture fails with qkv::Error
// naming the file and listing the missing, unexpected and mismatched names;
// on any error neither the model nor the optimizer is changed.
TrainingState load_checkpoint(const std::string& path, nn::Module& model, Optimizer& optimizer);
// The training state alone (nothing is loaded), e.g. to check a checkpoint
// or rebuild its schedule before loading it.
TrainingState read_training_state(const std::string& path);

// The module's state_dict() alone, under its PyTorch names, atomically.
void save_model(const std::string& path, const nn::Module& model,
                const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
// The weights a safetensors file holds, by name (zero-copy views): every
// tensor of a weights-only file, the "model." entries of a checkpoint
// (without the prefix).
std::map<std::string, Tensor> load_weights(const std::string& path);
// Strict load of weights saved by save_model or by PyTorch (safetensors),
// any float dtype converted; errors name the file and the lists of names.
// A qkv checkpoint is accepted too (its "model." entries are used).
void load_model(const std::string& path, nn::Module& model);

}  // namespace qkv
