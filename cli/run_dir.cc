#include "run_dir.h"

#include <filesystem>

#include "qkv/error.h"

namespace qkv::cli {

LoadedRun load_run(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  QKV_CHECK(fs::exists(path, ec), "checkpoint '", path, "' does not exist");
  LoadedRun run;
  if (fs::is_directory(path, ec)) {
    run.dir = path;
    run.checkpoint = (fs::path(path) / kCheckpointFile).string();
    QKV_CHECK(fs::is_regular_file(run.checkpoint, ec), "'", path,
              "' is not a training run: it holds no ", kCheckpointFile);
  } else {
    run.checkpoint = path;
    const fs::path parent = fs::path(path).parent_path();
    run.dir = parent.empty() ? fs::path(".").string() : parent.string();
  }
  run.state = read_training_state(run.checkpoint);
  const auto config = run.state.extra.find("model_config");
  QKV_CHECK(config != run.state.extra.end(), "'", run.checkpoint,
            "' is not a qkv GPT checkpoint: its training state has no model_config");
  run.codec = TextCodec::load(run.dir);
  const nn::GPTConfig model_config = nn::GPTConfig::from_json(config->second);
  QKV_CHECK(model_config.vocab_size == run.codec.vocab_size(), "'", run.checkpoint,
            "' was trained with a vocabulary of ", model_config.vocab_size,
            " tokens but the tokenizer in '", run.dir, "' has ", run.codec.vocab_size());
  Generator generator(0);
  run.model = std::make_unique<nn::GPT>(model_config, generator);
  load_model(run.checkpoint, *run.model);
  run.model->eval();
  return run;
}

}  // namespace qkv::cli
