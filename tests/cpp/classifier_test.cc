// BertForSequenceClassification and BertForMaskedLM on tiny models the test
// writes: transformers' names, save_pretrained / from_pretrained round trips,
// a pooler added to an encoder saved without one, the masked-LM head at
// chosen positions equal to the head over every position, the tied decoder's
// gradient reaching the word embeddings, and the loaders' errors. (The
// directories loading in transformers with the same outputs is checked in
// tests/python/test_classify_cli.py.)
#include "qkv/classifier.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace qkv {
namespace {

namespace fs = std::filesystem;
using autograd::Variable;
using nn::BertConfig;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("qkv_classifier_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

BertConfig tiny_config() {
  BertConfig c;
  c.vocab_size = 19;
  c.hidden_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.intermediate_size = 12;
  c.max_position_embeddings = 8;
  c.hidden_dropout_prob = 0.0;
  c.attention_probs_dropout_prob = 0.0;
  c.initializer_range = 0.3;
  return c;
}

Tensor ids_tensor(const std::vector<double>& values, int64_t b, int64_t l) {
  return Tensor::from_values(values, {b, l}, DType::i64);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(DType::f32).contiguous(), y = b.to(DType::f32).contiguous();
  EXPECT_EQ(x.shape(), y.shape());
  double m = 0;
  for (int64_t i = 0; i < x.numel(); ++i)
    m = std::max(m, static_cast<double>(std::fabs(x.data<float>()[i] - y.data<float>()[i])));
  return m;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(BertForSequenceClassification, NamesSaveAndLoad) {
  TempDir dir;
  Generator gen(1);
  auto bert = std::make_shared<nn::BertModel>(tiny_config(), gen);
  nn::BertForSequenceClassification model(bert, {"neg", "neutral", "pos"}, gen);
  const auto state = model.state_dict();
  EXPECT_TRUE(state.count("bert.pooler.dense.weight"));
  EXPECT_TRUE(state.count("bert.encoder.layer.0.attention.self.query.weight"));
  EXPECT_EQ(state.at("classifier.weight").shape(), (Shape{3, 8}));
  EXPECT_EQ(state.at("classifier.bias").shape(), (Shape{3}));

  model.eval();
  const Tensor ids = ids_tensor({2, 5, 7, 3, 2, 9, 3, 0}, 2, 4);
  const Tensor mask = ids_tensor({1, 1, 1, 1, 1, 1, 1, 0}, 2, 4);
  const Tensor logits = model.forward(ids, mask).value();
  EXPECT_EQ(logits.shape(), (Shape{2, 3}));

  model.save_pretrained(dir / "cls");
  auto loaded = nn::BertForSequenceClassification::from_pretrained(dir / "cls");
  EXPECT_EQ(loaded->labels(), (std::vector<std::string>{"neg", "neutral", "pos"}));
  EXPECT_FALSE(loaded->training());
  EXPECT_EQ(max_abs_diff(loaded->forward(ids, mask).value(), logits), 0.0);
}

TEST(BertForSequenceClassification, FromEncoderAddsAPooler) {
  TempDir dir;
  Generator gen(2);
  nn::BertForMaskedLM mlm(tiny_config(), gen);
  EXPECT_FALSE(mlm.bert().config().add_pooling_layer);
  mlm.save_pretrained(dir / "mlm");
  auto model = nn::BertForSequenceClassification::from_encoder(dir / "mlm", {"a", "b"}, gen);
  EXPECT_TRUE(model->bert().config().add_pooling_layer);
  // The encoder's weights are the directory's.
  const auto ours = model->state_dict();
  for (const auto& [name, t] : mlm.state_dict())
    if (name.rfind("bert.", 0) == 0) {
      EXPECT_EQ(max_abs_diff(ours.at(name), t), 0.0) << name;
    }
}

TEST(BertForMaskedLM, PositionsPickTheFullHeadsRows) {
  TempDir dir;
  Generator gen(3);
  nn::BertForMaskedLM model(tiny_config(), gen);
  const auto state = model.state_dict();
  EXPECT_TRUE(state.count("cls.predictions.transform.dense.weight"));
  EXPECT_TRUE(state.count("cls.predictions.transform.LayerNorm.bias"));
  EXPECT_TRUE(state.count("cls.predictions.bias"));
  EXPECT_FALSE(state.count("bert.pooler.dense.weight"));  // transformers' BertForMaskedLM has none

  const Tensor ids = ids_tensor({2, 4, 6, 3, 2, 8, 10, 3}, 2, 4);
  const Tensor mask = ids_tensor({1, 1, 1, 1, 1, 1, 1, 1}, 2, 4);
  const Tensor all = Tensor::arange(8, DType::i64);
  const Tensor some = Tensor::from_values({6, 1, 5}, {3}, DType::i64);
  const Tensor every = model.forward(ids, mask, all).value();
  const Tensor picked = model.forward(ids, mask, some).value();
  EXPECT_EQ(every.shape(), (Shape{8, 19}));
  const int64_t rows[] = {6, 1, 5};
  for (int64_t i = 0; i < 3; ++i)
    EXPECT_LT(max_abs_diff(picked.select(0, i), every.select(0, rows[i])), 1e-6);

  // The decoder is the word embeddings: the loss reaches them through both
  // the input lookup and the output product.
  model.zero_grad();
  autograd::cross_entropy(model.forward(ids, mask, some),
                          Tensor::from_values({12, 13, 14}, {3}, DType::i64))
      .backward();
  const Tensor grad = model.bert().word_embeddings().grad().contiguous();
  // Row 13 is no input token: its gradient comes from the decoder alone.
  double row13 = 0;
  for (int64_t j = 0; j < 8; ++j) row13 += std::fabs(grad.data<float>()[13 * 8 + j]);
  EXPECT_GT(row13, 0.0);

  model.save_pretrained(dir / "mlm");
  auto loaded = nn::BertForMaskedLM::from_pretrained(dir / "mlm");
  EXPECT_EQ(max_abs_diff(loaded->forward(ids, mask, some).value(), picked), 0.0);
}

TEST(Classifiers, LoaderErrors) {
  TempDir dir;
  Generator gen(4);
  nn::BertModel(tiny_config(), gen).save_pretrained(dir / "plain");
  const std::string plain = error_of([&] { nn::BertForSequenceClassification::from_pretrained(dir / "plain"); });
  EXPECT_NE(plain.find("BertModel"), std::string::npos) << plain;
  EXPECT_NE(plain.find("BertForSequenceClassification"), std::string::npos) << plain;
  const std::string mlm = error_of([&] { nn::BertForMaskedLM::from_pretrained(dir / "plain"); });
  EXPECT_NE(mlm.find("BertForMaskedLM"), std::string::npos) << mlm;
  const std::string missing = error_of([&] { nn::BertForSequenceClassification::from_pretrained(dir / "none"); });
  EXPECT_NE(missing.find("none"), std::string::npos) << missing;
  auto bert = std::make_shared<nn::BertModel>(tiny_config(), gen);
  const std::string one = error_of([&] { nn::BertForSequenceClassification(bert, {"only"}, gen); });
  EXPECT_NE(one.find("at least 2 labels"), std::string::npos) << one;
}

}  // namespace
}  // namespace qkv
