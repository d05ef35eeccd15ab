// Hugging Face model directories as transformers' from_pretrained /
// save_pretrained lay them out: config.json, and the weights in
// model.safetensors or in the shards model.safetensors.index.json names in
// its "weight_map" (tensor name -> shard file). Internal: the BERT loader
// uses it; any other architecture's loader can.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "qkv/tensor.h"

namespace qkv::models::detail {

// <dir>/<name> as a path.
std::string join_path(const std::string& dir, const std::string& name);
bool file_exists(const std::string& path);

// A JSON file's contents; a missing, unreadable or malformed file ->
// qkv::Error naming it (`what` names the caller: "BertModel.from_pretrained").
nlohmann::json read_json(const std::string& path, const char* what);

// Every tensor of the directory's weights by name (zero-copy views into the
// mapped files, any stored dtype). model.safetensors wins over an index; with
// neither, a pytorch_model.bin alone says safetensors is required. Shards are
// checked against the index: each listed tensor present in its shard, no name
// in two shards, shard names plain file names in `dir`. Errors name the file.
std::map<std::string, Tensor> load_weights(const std::string& dir, const char* what);

// Writes <dir>/config.json (`config`, indented) and <dir>/model.safetensors
// (metadata format "pt"), each atomically; creates `dir`.
void save_directory(const std::string& dir, const nlohmann::json& config,
                    const std::map<std::string, Tensor>& weights, const char* what);

}  // namespace qkv::models::detail
