// BertModel on a tiny model the test writes itself: transformers' names, a
// save_pretrained / from_pretrained round trip, padding that changes nothing
// it should not, attention weights, gradients against finite differences,
// sentence embeddings, and the loader's errors. (Parity with transformers is
// in tests/python/test_bert.py.)
#include "qkv/bert.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "qkv/safetensors.h"

namespace qkv {
namespace {

namespace fs = std::filesystem;
using autograd::Variable;
using nn::BertConfig;
using nn::BertModel;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("qkv_bert_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

BertConfig tiny_config() {
  BertConfig c;
  c.vocab_size = 23;
  c.hidden_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 3;
  c.intermediate_size = 20;
  c.max_position_embeddings = 9;
  c.type_vocab_size = 2;
  c.hidden_dropout_prob = 0.0;
  c.attention_probs_dropout_prob = 0.0;
  c.initializer_range = 0.3;  // large enough that every layer matters
  return c;
}

Tensor ids_tensor(const std::vector<int64_t>& values, int64_t b, int64_t l) {
  std::vector<double> v(values.begin(), values.end());
  return Tensor::from_values(v, {b, l}, DType::i64);
}

// A tiny model saved as a Hugging Face directory; perturbed so that LayerNorm
// weights and biases are not 1 / 0.
std::string save_tiny(const TempDir& dir, const std::string& name, const BertConfig& c) {
  Generator gen(7);
  BertModel model(c, gen);
  for (auto& [n, t] : model.state_dict()) t.copy_(add(t, scale(randn(t.shape(), gen), 0.05)));
  model.save_pretrained(dir / name);
  return dir / name;
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
    FAIL() << "no qkv::Error";
  } catch (const Error& e) {
    for (const auto& s : fragments)
      EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what() << "\nlacks: " << s;
  }
}

TEST(Bert, TransformersNames) {
  Generator gen(0);
  BertModel m(tiny_config(), gen);
  const auto params = m.named_parameters();
  EXPECT_EQ(params.size(), 5u + 2 * 16 + 2);
  EXPECT_EQ(params.front().first, "embeddings.word_embeddings.weight");
  EXPECT_EQ(params[5].first, "encoder.layer.0.attention.self.query.weight");
  EXPECT_EQ(params[5 + 15].first, "encoder.layer.0.output.LayerNorm.bias");
  EXPECT_EQ(params.back().first, "pooler.dense.bias");
  const auto state = m.state_dict();
  EXPECT_EQ(state.at("encoder.layer.1.intermediate.dense.weight").shape(), (Shape{20, 12}));
  EXPECT_EQ(state.at("embeddings.position_embeddings.weight").shape(), (Shape{9, 12}));
  // The padding row (pad_token_id 0) starts at zero.
  EXPECT_EQ(max(state.at("embeddings.word_embeddings.weight").select(0, 0)).item(), 0.0);
}

TEST(Bert, SaveAndLoadRoundTrip) {
  TempDir dir;
  const BertConfig c = tiny_config();
  Generator gen(1);
  BertModel model(c, gen);
  model.eval();
  model.save_pretrained(dir / "m");
  EXPECT_TRUE(fs::exists(dir / "m/config.json") && fs::exists(dir / "m/model.safetensors"));
  auto loaded = BertModel::from_pretrained(dir / "m");
  EXPECT_FALSE(loaded->training());
  EXPECT_EQ(loaded->config().to_json(), c.to_json());
  const Tensor ids = ids_tensor({1, 5, 7, 2, 9, 3, 4, 8}, 2, 4);
  const auto a = model.forward(ids), b = loaded->forward(ids);
  EXPECT_EQ(a.last_hidden_state.value().to_values(), b.last_hidden_state.value().to_values());
  EXPECT_EQ(a.pooler_output.value().to_values(), b.pooler_output.value().to_values());
  EXPECT_EQ(a.last_hidden_state.shape(), (Shape{2, 4, 12}));
  EXPECT_EQ(a.pooler_output.shape(), (Shape{2, 12}));
}

// Padding keys are never attended: a padded row's real positions equal the
// same sequence run alone, and its attention weights give padding 0.
TEST(Bert, PaddingIsInvisible) {
  TempDir dir;
  auto model = BertModel::from_pretrained(save_tiny(dir, "m", tiny_config()));
  const Tensor padded = ids_tensor({2, 6, 11, 4, 0, 0, 5, 3, 8, 1, 7, 9}, 2, 6);
  const Tensor mask = ids_tensor({1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1}, 2, 6);
  const Tensor types = ids_tensor({0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0}, 2, 6);
  const auto out = model->forward(padded, mask, types, {.output_attentions = true});
  const auto alone =
      model->forward(ids_tensor({2, 6, 11, 4}, 1, 4), Tensor(), ids_tensor({0, 0, 1, 1}, 1, 4));
  const Tensor got = out.last_hidden_state.value().select(0, 0).narrow(0, 0, 4).contiguous();
  const auto want = alone.last_hidden_state.value().select(0, 0).to_values();
  const auto g = got.to_values();
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], want[i], 1e-5);
  const auto pg = out.pooler_output.value().select(0, 0).contiguous().to_values();
  const auto pw = alone.pooler_output.value().to_values();
  for (size_t i = 0; i < pg.size(); ++i) EXPECT_NEAR(pg[i], pw[i], 1e-5);

  ASSERT_EQ(out.attentions.size(), 2u);
  for (const Tensor& w : out.attentions) {
    ASSERT_EQ(w.shape(), (Shape{2, 3, 6, 6}));
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t i = 0; i < 6; ++i) {
          double row = 0;
          for (int64_t j = 0; j < 6; ++j) row += w.at({b, h, i, j});
          EXPECT_NEAR(row, 1.0, 1e-5);
          if (b == 0) {
            EXPECT_EQ(w.at({b, h, i, 4}) + w.at({b, h, i, 5}), 0.0);
          }
        }
  }
}

// d loss / d parameter for a few elements of each kind of parameter, against
// central differences (double-checks the backward through the whole model).
TEST(Bert, GradientsMatchFiniteDifferences) {
  Generator gen(3);
  BertConfig c = tiny_config();
  c.hidden_act = "gelu_new";
  BertModel model(c, gen);
  for (auto& [n, t] : model.state_dict()) t.copy_(add(t, scale(randn(t.shape(), gen), 0.05)));
  model.train();  // dropout 0: deterministic
  const Tensor ids = ids_tensor({1, 5, 7, 2, 9, 3, 4, 0}, 2, 4);
  const Tensor mask = ids_tensor({1, 1, 1, 1, 1, 1, 1, 0}, 2, 4);
  const Tensor wh = randn({2, 4, 12}, gen), wp = randn({2, 12}, gen);
  auto loss = [&] {
    const auto out = model.forward(ids, mask);
    return autograd::add(autograd::sum(autograd::mul(out.last_hidden_state, Variable(wh))),
                         autograd::sum(autograd::mul(out.pooler_output, Variable(wp))));
  };
  loss().backward();
  const std::vector<std::string> names = {"embeddings.word_embeddings.weight",
                                          "embeddings.position_embeddings.weight",
                                          "embeddings.LayerNorm.weight",
                                          "encoder.layer.0.attention.self.query.weight",
                                          "encoder.layer.0.attention.self.value.bias",
                                          "encoder.layer.1.intermediate.dense.weight",
                                          "encoder.layer.1.output.LayerNorm.bias",
                                          "pooler.dense.weight"};
  for (const auto& [name, p] : model.named_parameters()) {
    if (std::find(names.begin(), names.end(), name) == names.end()) continue;
    ASSERT_TRUE(p.grad().defined()) << name;
    Tensor v = p.value().view({-1});
    const Tensor grad = p.grad().contiguous().view({-1});
    for (int64_t k : {v.numel() / 3, v.numel() / 2, v.numel() - 1}) {
      const double x0 = v.at({k}), h = 1e-2;
      autograd::NoGradGuard no_grad;
      v.narrow(0, k, 1).copy_(Tensor::full({1}, x0 + h));
      const double up = loss().value().item();
      v.narrow(0, k, 1).copy_(Tensor::full({1}, x0 - h));
      const double down = loss().value().item();
      v.narrow(0, k, 1).copy_(Tensor::full({1}, x0));
      const double fd = (up - down) / (2 * h), g = grad.at({k});
      EXPECT_NEAR(g, fd, 2e-3 + 2e-2 * std::abs(fd)) << name << "[" << k << "]";
    }
  }
  // The padding row of the word embeddings gets no gradient.
  for (double g : model.word_embeddings().grad().select(0, 0).contiguous().to_values())
    EXPECT_EQ(g, 0.0);
}

TEST(Bert, SentenceEncoderPoolsAndNormalises) {
  TempDir dir;
  const std::string d = save_tiny(dir, "m", tiny_config());
  // A plain directory: mean pooling, not normalised (sentence-transformers' default).
  SentenceEncoder plain = SentenceEncoder::load(d);
  EXPECT_EQ(plain.pooling(), SentencePooling::mean);
  EXPECT_FALSE(plain.normalize());
  write(dir / "m/modules.json",
        R"([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])");
  fs::create_directories(dir / "m/1_Pooling");
  write(dir / "m/1_Pooling/config.json",
        R"({"word_embedding_dimension": 12, "pooling_mode_mean_tokens": true})");
  write(dir / "m/sentence_bert_config.json", R"({"max_seq_length": 7, "do_lower_case": false})");
  SentenceEncoder enc = SentenceEncoder::load(d);
  EXPECT_TRUE(enc.normalize());
  EXPECT_EQ(enc.max_seq_length(), 7);
  EXPECT_EQ(enc.dimension(), 12);

  const Tensor ids = ids_tensor({2, 6, 11, 0, 5, 3, 8, 1}, 2, 4);
  const Tensor mask = ids_tensor({1, 1, 1, 0, 1, 1, 1, 1}, 2, 4);
  const Tensor e = enc.embed(ids, mask);
  ASSERT_EQ(e.shape(), (Shape{2, 12}));
  const Tensor hidden = enc.model().forward(ids, mask).last_hidden_state.value();
  for (int64_t b = 0; b < 2; ++b) {
    const int64_t n = b == 0 ? 3 : 4;
    std::vector<double> mean(12, 0.0);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < 12; ++j) mean[j] += hidden.at({b, t, j}) / n;
    double norm = 0;
    for (double x : mean) norm += x * x;
    for (int64_t j = 0; j < 12; ++j) EXPECT_NEAR(e.at({b, j}), mean[j] / std::sqrt(norm), 1e-6);
  }
  // Text in: the directory's vocab.txt, batches of similar length padded to
  // their longest, rows in the texts' order, equal to the ids' embeddings.
  EXPECT_EQ(enc.tokenizer(), nullptr);
  std::string vocab;
  for (const char* t : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a",    "good", "bad",
                        "movie", "is",    "not",   "the",   "##s",    ",",    ".",    "!",
                        "plot",  "fun",   "it",    "was",   "dull",   "very", "##ly"})
    vocab += std::string(t) + "\n";
  write(dir / "m/vocab.txt", vocab);
  SentenceEncoder with_text = SentenceEncoder::load(d);
  ASSERT_NE(with_text.tokenizer(), nullptr);
  const std::vector<std::string> texts = {"A good movie!", "the plot was dull , very dull",
                                          "It is not bad.", "fun"};
  const Tensor by_text = with_text.embed(texts, /*batch_size=*/2);
  ASSERT_EQ(by_text.shape(), (Shape{4, 12}));
  for (size_t i = 0; i < texts.size(); ++i) {
    const text::Encoding one = with_text.tokenizer()->encode(texts[i]);
    EXPECT_LE(one.size(), 7u);  // truncated at max_seq_length
    std::vector<int64_t> v(one.ids.begin(), one.ids.end());
    const Tensor row = with_text.embed(ids_tensor(v, 1, static_cast<int64_t>(v.size())));
    for (int64_t j = 0; j < 12; ++j)
      EXPECT_NEAR(by_text.at({static_cast<int64_t>(i), j}), row.at({0, j}), 1e-5);
  }
  expect_error([&] { enc.embed(texts); }, {"has no tokenizer"});

  // bf16 products: close to f32.
  const Tensor e16 = SentenceEncoder::load(d, {.dtype = DType::bf16}).embed(ids, mask);
  for (int64_t b = 0; b < 2; ++b) {
    double dot = 0;
    for (int64_t j = 0; j < 12; ++j) dot += e.at({b, j}) * e16.at({b, j});
    EXPECT_GT(dot, 0.999);
  }
  // The other pooling modes by hand.
  const Tensor cls = pool_tokens(hidden, mask, SentencePooling::cls);
  const Tensor mx = pool_tokens(hidden, mask, SentencePooling::max);
  for (int64_t j = 0; j < 12; ++j) {
    EXPECT_EQ(cls.at({1, j}), hidden.at({1, 0, j}));
    double m = -1e30;
    for (int64_t t = 0; t < 3; ++t) m = std::max(m, hidden.at({0, t, j}));
    EXPECT_EQ(mx.at({0, j}), m);
  }
}

TEST(Bert, LoaderErrorsNameTheFile) {
  TempDir dir;
  const std::string d = save_tiny(dir, "m", tiny_config());
  auto load = [](const std::string& path) { return [path] { BertModel::from_pretrained(path); }; };

  fs::copy(d, dir / "no-config", fs::copy_options::recursive);
  fs::remove(dir / "no-config/config.json");
  expect_error(load(dir / "no-config"), {"config.json", "does not exist"});

  fs::copy(d, dir / "corrupt", fs::copy_options::recursive);
  const std::string bytes = read(dir / "corrupt/model.safetensors");
  write(dir / "corrupt/model.safetensors", bytes.substr(0, bytes.size() - 100));
  expect_error(load(dir / "corrupt"), {"model.safetensors"});
  write(dir / "corrupt/model.safetensors", "{not safetensors}");
  expect_error(load(dir / "corrupt"), {"model.safetensors", "header length"});

  fs::copy(d, dir / "pickle", fs::copy_options::recursive);
  fs::remove(dir / "pickle/model.safetensors");
  write(dir / "pickle/pytorch_model.bin", "pickle");
  expect_error(load(dir / "pickle"), {"pytorch_model.bin", "safetensors is required"});

  fs::copy(d, dir / "gpt", fs::copy_options::recursive);
  write(dir / "gpt/config.json", R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})");
  expect_error(load(dir / "gpt"), {"config.json", "model_type \"gpt2\""});
  write(dir / "gpt/config.json", R"({"model_type": "bert", "architectures": ["RobertaModel"]})");
  expect_error(load(dir / "gpt"), {"config.json", "architecture \"RobertaModel\""});

  // A config that does not fit the weights: the strict load's lists.
  fs::copy(d, dir / "wide", fs::copy_options::recursive);
  BertConfig wide = tiny_config();
  wide.intermediate_size = 21;
  wide.num_hidden_layers = 3;
  write(dir / "wide/config.json", wide.to_json());
  expect_error(load(dir / "wide"),
               {"do not fit", "missing keys: encoder.layer.2.",
                "encoder.layer.0.intermediate.dense.weight (checkpoint [20, 12], model [21, 12])"});

  // A tensor the checkpoint lacks is named.
  fs::copy(d, dir / "missing", fs::copy_options::recursive);
  auto weights = safetensors::load(dir / "missing/model.safetensors");
  std::map<std::string, Tensor> kept;
  for (auto& [n, t] : weights)
    if (n != "pooler.dense.bias") kept.emplace(n, t.contiguous().clone());
  safetensors::save(dir / "missing/model.safetensors", kept);
  expect_error(load(dir / "missing"), {"missing keys: pooler.dense.bias"});
}

TEST(Bert, ConfigErrors) {
  expect_error([] { BertConfig::from_json(R"({"position_embedding_type": "relative_key"})"); },
               {"position_embedding_type \"relative_key\""});
  expect_error([] { BertConfig::from_json(R"({"hidden_size": 10, "num_attention_heads": 3})"); },
               {"hidden_size 10", "num_attention_heads 3"});
  expect_error([] { BertConfig::from_json(R"({"hidden_act": "mish"})"); }, {"\"mish\""});
  expect_error([] { BertConfig::from_json(R"({"vocab_size": 2.5})"); }, {"vocab_size", "integer"});
  expect_error([] { BertConfig::from_json(R"({"is_decoder": true})"); }, {"is_decoder"});
  // Absurd sizes are refused before any allocation.
  expect_error([] { BertConfig::from_json(R"({"vocab_size": 1099511627776})"); },
               {"vocab_size 1099511627776", "is more than"});
  expect_error([] { BertConfig::from_json(R"({"hidden_size": 2147483648})"); },
               {"hidden_size 2147483648"});
  expect_error(
      [] {
        BertConfig::from_json(R"({"hidden_size": 16384, "num_attention_heads": 16,
                                  "num_hidden_layers": 1024, "intermediate_size": 65536})");
      },
      {"parameters", "GiB"});
  const BertConfig c = BertConfig::from_json(R"({"pad_token_id": null, "hidden_act": "relu"})");
  EXPECT_FALSE(c.pad_token_id.has_value());
  EXPECT_EQ(c.hidden_size, 768);  // transformers' default
}

}  // namespace
}  // namespace qkv
