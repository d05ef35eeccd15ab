// Training a small Transformer from C++: a causal language model (token
// embedding + learned positions + 2 encoder layers + a linear head) learns
// sequences x[t + 1] = x[t] + k (mod 32) with AdamW, linear warm-up / decay,
// clipping and a checkpoint. README.md "Training" quotes this file.
//
//   train_tiny [steps] [checkpoint path]     (defaults: 200, train_tiny.safetensors)
//
// Exits with 1 unless the loss of the last step is below that of the first.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "qkv/qkv.h"

using namespace qkv;
namespace ag = qkv::autograd;

constexpr int64_t kVocab = 32, kSeq = 24, kBatch = 8, kDim = 64;

class TinyLM : public nn::Module {
 public:
  explicit TinyLM(Generator& gen) {
    embed_ = register_module(
        "embed", std::make_shared<nn::Embedding>(nn::EmbeddingConfig{kVocab, kDim}, gen));
    pos_ = register_module("pos",
                           std::make_shared<nn::Embedding>(nn::EmbeddingConfig{kSeq, kDim}, gen));
    const nn::TransformerLayerConfig layer{
        .d_model = kDim, .nhead = 4, .dim_feedforward = 128, .dropout = 0.0, .batch_first = true};
    encoder_ = register_module(
        "encoder", std::make_shared<nn::TransformerEncoder>(
                       nn::TransformerStackConfig{.layer = layer, .num_layers = 2}, gen));
    head_ =
        register_module("head", std::make_shared<nn::Linear>(nn::LinearConfig{kDim, kVocab}, gen));
  }

  // ids, targets [B, L] (i64) -> the mean next-token cross-entropy
  ag::Variable loss(const Tensor& ids, const Tensor& targets) {
    const Tensor positions = Tensor::arange(ids.size(1), DType::i64);
    const ag::Variable x = ag::add(embed_->forward(ids), pos_->forward(positions));
    const ag::Variable logits = head_->forward(encoder_->forward(x, {.is_causal = true}));
    return ag::cross_entropy(ag::reshape(logits, {-1, kVocab}), targets.reshape({-1}));
  }

 private:
  std::shared_ptr<nn::Embedding> embed_, pos_;
  std::shared_ptr<nn::TransformerEncoder> encoder_;
  std::shared_ptr<nn::Linear> head_;
};

// A batch of sequences with a random start and stride: (ids, next-token targets).
std::pair<Tensor, Tensor> batch(Generator& gen) {
  std::vector<double> ids, targets;
  for (int64_t b = 0; b < kBatch; ++b) {
    const int64_t start = static_cast<int64_t>(gen.next_u64() % kVocab);
    const int64_t stride = 1 + static_cast<int64_t>(gen.next_u64() % 5);
    for (int64_t t = 0; t < kSeq; ++t) {
      ids.push_back(static_cast<double>((start + stride * t) % kVocab));
      targets.push_back(static_cast<double>((start + stride * (t + 1)) % kVocab));
    }
  }
  return {Tensor::from_values(ids, {kBatch, kSeq}, DType::i64),
          Tensor::from_values(targets, {kBatch, kSeq}, DType::i64)};
}

int main(int argc, char** argv) {
  const int64_t steps = argc > 1 ? std::atoll(argv[1]) : 200;
  const std::string path = argc > 2 ? argv[2] : "train_tiny.safetensors";

  Generator init(0), data(1);
  TinyLM model(init);
  AdamW optimizer(optimizer_parameters(model), {.lr = 1e-3, .weight_decay = 0.01});
  Trainer trainer(model, optimizer, /*base_lr=*/1e-3,
                  Schedule::linear_with_warmup(/*warmup_steps=*/steps / 10, steps),
                  {.clip_norm = 1.0});
  trainer.track_generator("data", data);  // checkpoints save the data order too

  double first = 0.0, last = 0.0;
  while (trainer.steps() < steps) {
    last = trainer.step([&] {
      const auto [ids, targets] = batch(data);
      return model.loss(ids, targets);
    });
    if (trainer.steps() == 1) first = last;
    if (trainer.steps() % 20 == 0)
      std::printf("step %3lld  loss %.4f\n", static_cast<long long>(trainer.steps()), last);
  }
  trainer.checkpoint(path);  // trainer.resume(path) continues exactly from here
  std::printf("loss %.4f -> %.4f, checkpoint %s\n", first, last, path.c_str());
  return last < first ? 0 : 1;
}
