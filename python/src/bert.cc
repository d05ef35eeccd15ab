// qkv.bert: BERT encoders from Hugging Face directories and sentence
// embeddings (qkv/bert.h).
#include "qkv/bert.h"

#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>

#include "bindings.h"

namespace qkv::python {
namespace {

using autograd::Variable;
using OptTensor = std::optional<Tensor>;

Tensor or_empty(const OptTensor& t) {
  return t.value_or(Tensor());
}

SentencePooling pooling_of(const std::string& s) {
  return from_name(kSentencePoolingNames, s, "qkv.bert: pooling");
}

}  // namespace

void bind_bert(nb::module_& m) {
  nb::module_ mod = m.def_submodule(
      "bert", "BERT encoders from Hugging Face directories and sentence embeddings (qkv/bert.h).");

  nb::class_<nn::BertConfig>(mod, "BertConfig",
                             "transformers' BertConfig fields (config.json), with its defaults.")
      .def(
          "__init__",
          [](nn::BertConfig* self, nb::kwargs kwargs) {
            // The keywords as config.json text: BertConfig(**hf_config.to_dict()) works.
            bool pooler = true;
            if (kwargs.contains("add_pooling_layer")) {
              pooler = nb::cast<bool>(kwargs["add_pooling_layer"]);
              nb::del(kwargs["add_pooling_layer"]);
            }
            const std::string text =
                nb::cast<std::string>(nb::module_::import_("json").attr("dumps")(kwargs));
            new (self) nn::BertConfig(nn::BertConfig::from_json(text, "BertConfig"));
            self->add_pooling_layer = pooler;
          },
          "Keyword arguments as config.json's fields (unknown ones ignored); add_pooling_layer.")
      .def_static("from_json", &nn::BertConfig::from_json, nb::arg("text"),
                  nb::arg("source") = "config.json")
      .def("to_json", &nn::BertConfig::to_json)
      .def_rw("vocab_size", &nn::BertConfig::vocab_size)
      .def_rw("hidden_size", &nn::BertConfig::hidden_size)
      .def_rw("num_hidden_layers", &nn::BertConfig::num_hidden_layers)
      .def_rw("num_attention_heads", &nn::BertConfig::num_attention_heads)
      .def_rw("intermediate_size", &nn::BertConfig::intermediate_size)
      .def_rw("hidden_act", &nn::BertConfig::hidden_act)
      .def_rw("max_position_embeddings", &nn::BertConfig::max_position_embeddings)
      .def_rw("type_vocab_size", &nn::BertConfig::type_vocab_size)
      .def_rw("layer_norm_eps", &nn::BertConfig::layer_norm_eps)
      .def_rw("hidden_dropout_prob", &nn::BertConfig::hidden_dropout_prob)
      .def_rw("attention_probs_dropout_prob", &nn::BertConfig::attention_probs_dropout_prob)
      .def_rw("initializer_range", &nn::BertConfig::initializer_range)
      .def_rw("pad_token_id", &nn::BertConfig::pad_token_id)
      .def_rw("add_pooling_layer", &nn::BertConfig::add_pooling_layer)
      .def("__repr__", [](const nn::BertConfig& c) { return "BertConfig(" + c.to_json() + ")"; });

  nb::class_<nn::BertOutput>(mod, "BertOutput")
      .def_ro("last_hidden_state", &nn::BertOutput::last_hidden_state, "Variable [B, L, H].")
      .def_prop_ro(
          "pooler_output",
          [](const nn::BertOutput& o) -> nb::object {
            return o.pooler_output.defined() ? nb::cast(o.pooler_output) : nb::none();
          },
          "Variable [B, H], or None without a pooler.")
      .def_ro("attentions", &nn::BertOutput::attentions,
              "Per layer Tensor [B, heads, L, L] (output_attentions).");

  nb::class_<nn::BertModel, nn::Module>(
      mod, "BertModel",
      "transformers' BertModel on qkv.autograd: the same state_dict names and outputs.")
      .def(
          "__init__",
          [](nn::BertModel* self, const nn::BertConfig& config, uint64_t seed) {
            Generator g(seed);
            new (self) nn::BertModel(config, g);
          },
          nb::arg("config"), nb::arg("seed") = 0)
      .def_static("from_pretrained", &nn::BertModel::from_pretrained, nb::arg("directory"),
                  nb::call_guard<nb::gil_scoped_release>(),
                  "A Hugging Face directory (config.json + model.safetensors or shards), in eval "
                  "mode.")
      .def("save_pretrained", &nn::BertModel::save_pretrained, nb::arg("directory"),
           nb::call_guard<nb::gil_scoped_release>())
      .def(
          "forward",
          [](nn::BertModel& model, const Tensor& input_ids, OptTensor attention_mask,
             OptTensor token_type_ids, bool output_attentions, bool pooler) {
            nb::gil_scoped_release release;
            return model.forward(input_ids, or_empty(attention_mask), or_empty(token_type_ids),
                                 {.output_attentions = output_attentions, .pooler = pooler});
          },
          nb::arg("input_ids"), nb::arg("attention_mask") = nb::none(),
          nb::arg("token_type_ids") = nb::none(), nb::arg("output_attentions") = false,
          nb::arg("pooler") = true)
      .def("__call__", [](nb::handle self, nb::args args,
                          nb::kwargs kwargs) { return self.attr("forward")(*args, **kwargs); })
      .def_prop_ro("config", &nn::BertModel::config);

  mod.def("load_bert_weights", &nn::load_bert_weights, nb::arg("directory"),
          "A BERT directory's weights under BertModel's names ('bert.' stripped, heads left out).");
  mod.def("load_bert_config", &nn::load_bert_config, nb::arg("directory"));
  mod.def("load_pretrained_weights", &nn::load_pretrained_weights, nb::arg("directory"),
          "Every tensor of a Hugging Face directory as stored (single file or shards).");

  mod.def(
      "pool_tokens",
      [](const Tensor& hidden, OptTensor attention_mask, const std::string& pooling) {
        return pool_tokens(hidden, or_empty(attention_mask), pooling_of(pooling));
      },
      nb::arg("hidden"), nb::arg("attention_mask") = nb::none(), nb::arg("pooling") = "mean",
      "hidden [B, L, H] -> [B, H] over the tokens the mask keeps (sentence-transformers' "
      "Pooling).");
  mod.def("l2_normalize_rows", &l2_normalize_rows, nb::arg("x"));

  nb::class_<SentenceEncoder>(mod, "SentenceEncoder",
                              "A sentence-transformers directory: BERT encoder, pooling, "
                              "normalisation.")
      .def(
          "__init__",
          [](SentenceEncoder* self, const std::string& dir, const std::string& dtype,
             std::optional<bool> normalize) {
            const SentenceEncoderOptions o{.dtype = parse_dtype(dtype), .normalize = normalize};
            nb::gil_scoped_release release;
            new (self) SentenceEncoder(SentenceEncoder::load(dir, o));
          },
          nb::arg("directory"), nb::arg("dtype") = "f32", nb::arg("normalize") = nb::none())
      .def(
          "embed",
          [](const SentenceEncoder& e, const Tensor& input_ids, OptTensor attention_mask,
             OptTensor token_type_ids) {
            nb::gil_scoped_release release;
            return e.embed(input_ids, or_empty(attention_mask), or_empty(token_type_ids));
          },
          nb::arg("input_ids"), nb::arg("attention_mask") = nb::none(),
          nb::arg("token_type_ids") = nb::none(), "ids [B, L] -> f32 [B, H].")
      .def(
          "encode",
          [](const SentenceEncoder& e, const std::vector<std::string>& texts, int64_t batch_size) {
            nb::gil_scoped_release release;
            return e.embed(texts, batch_size);
          },
          nb::arg("sentences"), nb::arg("batch_size") = 32,
          "Texts -> f32 [N, H] as sentence-transformers' encode (the directory's WordPiece, "
          "truncation at max_seq_length, batches of similar length).")
      .def(
          "encode",
          [](const SentenceEncoder& e, const std::string& text, int64_t batch_size) {
            nb::gil_scoped_release release;
            return e.embed(std::vector<std::string>{text}, batch_size).select(0, 0);
          },
          nb::arg("sentence"), nb::arg("batch_size") = 32, "One text -> f32 [H].")
      .def(
          "tokenize",
          [](const SentenceEncoder& e, const std::vector<std::string>& texts) {
            QKV_CHECK(e.tokenizer(), "SentenceEncoder.tokenize: the directory has no tokenizer");
            std::vector<std::vector<int32_t>> ids;
            for (const auto& enc : e.tokenizer()->encode_batch(texts)) ids.push_back(enc.ids);
            return ids;
          },
          nb::arg("sentences"), "Each text's token ids ([CLS] ... [SEP], truncated).")
      .def_prop_ro("model", &SentenceEncoder::model, nb::rv_policy::reference_internal)
      .def_prop_ro("pooling",
                   [](const SentenceEncoder& e) { return sentence_pooling_name(e.pooling()); })
      .def_prop_ro("normalize", &SentenceEncoder::normalize)
      .def_prop_ro("max_seq_length", &SentenceEncoder::max_seq_length)
      .def_prop_ro("dimension", &SentenceEncoder::dimension)
      .def_prop_ro("dtype", [](const SentenceEncoder& e) { return dtype_name(e.dtype()); });
}

}  // namespace qkv::python
