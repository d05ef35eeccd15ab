// Reading and writing Hugging Face model directories (see hf_directory.h).
#include "models/hf_directory.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "io/file.h"
#include "qkv/error.h"
#include "qkv/file.h"
#include "qkv/safetensors.h"

namespace qkv::models::detail {

using json = nlohmann::json;

namespace {

constexpr const char* kWeights = "model.safetensors";
constexpr const char* kIndex = "model.safetensors.index.json";
constexpr const char* kPickle = "pytorch_model.bin";

// The file's tensors, with the file's own errors (which name it) passed on
// under the caller's name.
safetensors::File open_safetensors(const std::string& path, const char* what) {
  QKV_CHECK(file_exists(path), what, ": '", path, "' does not exist");
  try {
    return safetensors::File::open(path);
  } catch (const Error& e) {
    throw Error(qkv::detail::str(what, ": ", e.what()));  // names the file
  }
}

Tensor get(const safetensors::File& file, const std::string& name, const char* what) {
  try {
    return file.get(name);
  } catch (const Error& e) {
    throw Error(qkv::detail::str(what, ": ", e.what()));  // names the file
  }
}

std::map<std::string, Tensor> load_sharded(const std::string& dir, const char* what) {
  const std::string index_path = join_path(dir, kIndex);
  const json index = read_json(index_path, what);
  const auto map = index.find("weight_map");
  QKV_CHECK(map != index.end() && map->is_object() && !map->empty(), what, ": '", index_path,
            "' has no \"weight_map\" object of tensor name -> shard file");
  // Shard -> the tensors the index places in it.
  std::map<std::string, std::set<std::string>> shards;
  for (const auto& [name, shard] : map->items()) {
    QKV_CHECK(shard.is_string(), what, ": '", index_path, "': weight_map[\"", name,
              "\"] is not a file name but ", shard.dump());
    const std::string file = shard.get<std::string>();
    QKV_CHECK(!file.empty() && file.find('/') == std::string::npos &&
                  file.find('\\') == std::string::npos && file != "." && file != "..",
              what, ": '", index_path, "': shard '", file, "' of tensor '", name,
              "' is not a plain file name in the directory");
    shards[file].insert(name);
  }
  std::map<std::string, Tensor> out;
  for (const auto& [file, names] : shards) {
    const std::string path = join_path(dir, file);
    QKV_CHECK(file_exists(path), what, ": shard '", path, "' listed in '", index_path,
              "' does not exist");
    const safetensors::File shard = open_safetensors(path, what);
    for (const std::string& name : names)
      QKV_CHECK(shard.contains(name), what, ": '", index_path, "' places tensor '", name, "' in '",
                file, "', which does not hold it");
    for (const auto& info : shard.tensors()) {
      QKV_CHECK(!out.count(info.name), what, ": tensor '", info.name,
                "' is stored in more than one shard (again in '", path, "')");
      out.emplace(info.name, get(shard, info.name, what));
    }
  }
  return out;
}

}  // namespace

std::string join_path(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

json read_json(const std::string& path, const char* what) {
  const std::string text = read_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(qkv::detail::str(what, ": '", path, "' is not valid JSON: ", e.what()));
  }
}

std::map<std::string, Tensor> load_weights(const std::string& dir, const char* what) {
  std::error_code ec;
  QKV_CHECK(std::filesystem::is_directory(dir, ec), what, ": '", dir, "' is not a directory");
  const std::string single = join_path(dir, kWeights);
  if (file_exists(single)) {
    const safetensors::File file = open_safetensors(single, what);
    std::map<std::string, Tensor> out;
    for (const auto& info : file.tensors()) out.emplace(info.name, get(file, info.name, what));
    return out;
  }
  if (file_exists(join_path(dir, kIndex))) return load_sharded(dir, what);
  QKV_CHECK(!file_exists(join_path(dir, kPickle)), what, ": '", dir,
            "' holds its weights only as '", kPickle,
            "' (a pickle, which qkv does not read): safetensors is required; convert it with "
            "transformers (model.save_pretrained(dir, safe_serialization=True))");
  throw Error(qkv::detail::str(what, ": '", dir, "' has no weights: neither '", kWeights, "' nor '",
                               kIndex, "'"));
}

void save_directory(const std::string& dir, const json& config,
                    const std::map<std::string, Tensor>& weights, const char* what) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  QKV_CHECK(!ec && std::filesystem::is_directory(dir), what, ": cannot create directory '", dir,
            "': ", ec ? ec.message() : std::string("a file is in the way"));
  const std::string text = config.dump(2) + "\n";
  io::write_file_atomically(
      join_path(dir, "config.json"),
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  safetensors::save(join_path(dir, kWeights), weights, {{"format", "pt"}});
}

}  // namespace qkv::models::detail
