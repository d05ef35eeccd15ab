// qkv.nn: the Transformer layers as modules on qkv.autograd (qkv/layers.h),
// with torch.nn's class names, arguments and state_dict names. Each
// constructor takes a `seed` for its initialisation (and its dropout masks).
#include "qkv/layers.h"

#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
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

nn::Activation activation_of(const std::string& s, bool swiglu_allowed) {
  const nn::Activation a = from_name(nn::kActivationNames, s, "qkv.nn: activation");
  QKV_CHECK(a != nn::Activation::swiglu || swiglu_allowed,
            "qkv.nn: activation must be 'relu' or 'gelu' here (swiglu is FeedForward's), got '", s,
            "'");
  return a;
}

Tensor or_empty(const OptTensor& t) {
  return t.value_or(Tensor());
}

nn::TransformerLayerConfig layer_config(int64_t d_model, int64_t nhead, int64_t dim_feedforward,
                                        double dropout, const std::string& activation,
                                        double layer_norm_eps, bool batch_first, bool norm_first,
                                        bool bias,
                                        const std::optional<nn::AttentionVariant>& self_attention) {
  return {.d_model = d_model,
          .nhead = nhead,
          .dim_feedforward = dim_feedforward,
          .dropout = dropout,
          .activation = activation_of(activation, false),
          .layer_norm_eps = layer_norm_eps,
          .batch_first = batch_first,
          .norm_first = norm_first,
          .bias = bias,
          .self_attention = self_attention.value_or(nn::AttentionVariant{})};
}

// The keyword arguments of torch's layer constructors.
#define QKV_LAYER_ARGS                                                                             \
  nb::arg("d_model"), nb::arg("nhead"),                                                            \
      nb::arg("dim_feedforward") = 2048, nb::arg("dropout") = 0.1, nb::arg("activation") = "relu", \
      nb::arg("layer_norm_eps") = 1e-5, nb::arg("batch_first") = false,                            \
      nb::arg("norm_first") = false, nb::arg("bias") = true, nb::arg("seed") = 0,                 \
      nb::arg("self_attention").none() = nb::none()

template <class M>
nb::class_<M, nn::Module> module_class(nb::module_& m, const char* name, const char* doc) {
  nb::class_<M, nn::Module> c(m, name, doc);
  c.def("__call__", [](nb::handle self, nb::args args, nb::kwargs kwargs) {
    return self.attr("forward")(*args, **kwargs);
  });
  return c;
}

}  // namespace

void bind_layers(nb::module_& m) {
  nb::module_ mod = m.def_submodule("nn", "Transformer layers on qkv.autograd (qkv/layers.h).");
  bind_attention_variant(mod);

  nb::class_<nn::Module>(mod, "Module",
                         "Parameters named like torch's state_dict keys; train / eval.")
      .def("named_parameters", &nn::Module::named_parameters)
      .def("parameters", &nn::Module::parameters)
      .def("state_dict", &nn::Module::state_dict,
           "Name -> Tensor, sharing storage with the parameters.")
      .def(
          "load_state_dict",
          [](nn::Module& self, const std::map<std::string, Tensor>& state, bool strict) {
            nn::Module::LoadResult r = self.load_state_dict(state, strict);
            return nb::make_tuple(r.missing, r.unexpected);
          },
          nb::arg("state_dict"), nb::arg("strict") = true,
          "Copies values in; returns (missing, unexpected). strict: a QkvError listing the "
          "missing, unexpected and mismatched names.")
      .def(
          "train",
          [](nb::handle self, bool mode) {
            nb::cast<nn::Module&>(self).train(mode);
            return nb::borrow(self);
          },
          nb::arg("mode") = true)
      .def("eval",
           [](nb::handle self) {
             nb::cast<nn::Module&>(self).eval();
             return nb::borrow(self);
           })
      .def_prop_ro("training", &nn::Module::training)
      .def("zero_grad", &nn::Module::zero_grad)
      .def(
          "to",
          [](nb::handle self, const std::string& dtype) {
            nb::cast<nn::Module&>(self).to(parse_dtype(dtype));
            return nb::borrow(self);
          },
          nb::arg("dtype"),
          "Converts the parameters to dtype ('f64' for gradcheck), like torch's module.to.")
      .def_prop_ro("type_name", &nn::Module::type_name);

  module_class<nn::Linear>(mod, "Linear", "torch.nn.Linear: weight [out, in], bias [out].")
      .def(
          "__init__",
          [](nn::Linear* self, int64_t in, int64_t out, bool bias, uint64_t seed) {
            Generator g(seed);
            new (self) nn::Linear({in, out, bias}, g);
          },
          nb::arg("in_features"), nb::arg("out_features"), nb::arg("bias") = true,
          nb::arg("seed") = 0)
      .def("forward", &nn::Linear::forward, nb::arg("input"),
           nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("weight", &nn::Linear::weight)
      .def_prop_ro("bias", [](const nn::Linear& l) -> nb::object {
        return l.bias().defined() ? nb::cast(l.bias()) : nb::none();
      });

  module_class<nn::Embedding>(mod, "Embedding", "torch.nn.Embedding: weight [num, dim] ~ N(0, 1).")
      .def(
          "__init__",
          [](nn::Embedding* self, int64_t num, int64_t dim, std::optional<int64_t> padding_idx,
             uint64_t seed) {
            Generator g(seed);
            new (self) nn::Embedding({num, dim, padding_idx}, g);
          },
          nb::arg("num_embeddings"), nb::arg("embedding_dim"), nb::arg("padding_idx") = nb::none(),
          nb::arg("seed") = 0)
      .def_static("from_pretrained", &nn::Embedding::from_pretrained, nb::arg("embeddings"),
                  nb::arg("freeze") = true, nb::arg("padding_idx") = nb::none())
      .def("forward", &nn::Embedding::forward, nb::arg("ids"))
      .def_prop_ro("weight", &nn::Embedding::weight);

  module_class<nn::LayerNorm>(mod, "LayerNorm", "torch.nn.LayerNorm over the last dim.")
      .def(
          "__init__",
          [](nn::LayerNorm* self, int64_t dim, double eps, bool affine, bool bias) {
            Generator g(0);
            new (self) nn::LayerNorm({dim, eps, affine, bias}, g);
          },
          nb::arg("normalized_shape"), nb::arg("eps") = 1e-5, nb::arg("elementwise_affine") = true,
          nb::arg("bias") = true)
      .def("forward", &nn::LayerNorm::forward, nb::arg("input"));

  module_class<nn::RMSNorm>(mod, "RMSNorm", "torch.nn.RMSNorm over the last dim.")
      .def(
          "__init__",
          [](nn::RMSNorm* self, int64_t dim, std::optional<double> eps) {
            Generator g(0);
            nn::RMSNormConfig c{.dim = dim};
            if (eps) c.eps = *eps;
            new (self) nn::RMSNorm(c, g);
          },
          nb::arg("normalized_shape"), nb::arg("eps") = nb::none())
      .def("forward", &nn::RMSNorm::forward, nb::arg("input"));

  module_class<nn::Dropout>(mod, "Dropout", "torch.nn.Dropout (training mode only).")
      .def(
          "__init__",
          [](nn::Dropout* self, double p, uint64_t seed) {
            Generator g(seed);
            new (self) nn::Dropout({p}, g);
          },
          nb::arg("p") = 0.5, nb::arg("seed") = 0)
      .def("forward", &nn::Dropout::forward, nb::arg("input"));

  module_class<nn::FeedForward>(mod, "FeedForward",
                                "Position-wise feed-forward: relu / gelu (linear1, linear2) "
                                "or swiglu (w1, w2, w3).")
      .def(
          "__init__",
          [](nn::FeedForward* self, int64_t d_model, int64_t d_ff, const std::string& activation,
             bool bias, double dropout, uint64_t seed) {
            Generator g(seed);
            new (self)
                nn::FeedForward({d_model, d_ff, activation_of(activation, true), bias, dropout}, g);
          },
          nb::arg("d_model"), nb::arg("d_ff"), nb::arg("activation") = "relu",
          nb::arg("bias") = true, nb::arg("dropout") = 0.0, nb::arg("seed") = 0)
      .def("forward", &nn::FeedForward::forward, nb::arg("input"),
           nb::call_guard<nb::gil_scoped_release>());

  module_class<nn::Attention>(mod, "MultiheadAttention",
                              "torch.nn.MultiheadAttention's parameters, names, initialisation "
                              "and results on qkv.autograd (also qkv.MultiheadAttention), with "
                              "any attention variant (variant=qkv.nn.AttentionVariant(...)).")
      .def(
          "__init__",
          [](nn::Attention* self, int64_t embed_dim, int64_t num_heads, double dropout, bool bias,
             std::optional<int64_t> kdim, std::optional<int64_t> vdim, bool batch_first,
             uint64_t seed, std::optional<nn::AttentionVariant> variant) {
            Generator g(seed);
            nn::AttentionConfig c{.embed_dim = embed_dim,
                                  .num_heads = num_heads,
                                  .dropout = dropout,
                                  .bias = bias,
                                  .kdim = kdim.value_or(0),
                                  .vdim = vdim.value_or(0),
                                  .batch_first = batch_first};
            if (variant) static_cast<nn::AttentionVariant&>(c) = *variant;
            new (self) nn::Attention(c, g);
          },
          nb::arg("embed_dim"), nb::arg("num_heads"), nb::arg("dropout") = 0.0,
          nb::arg("bias") = true, nb::arg("kdim") = nb::none(), nb::arg("vdim") = nb::none(),
          nb::arg("batch_first") = false, nb::arg("seed") = 0,
          nb::arg("variant").none() = nb::none())
      .def("redraw_features", &nn::Attention::redraw_features, nb::arg("seed"),
           "Performer: draws new random features.")
      .def(
          "forward",
          [](nn::Attention& a, const Variable& query, const Variable& key, const Variable& value,
             OptTensor key_padding_mask, bool need_weights, OptTensor attn_mask,
             bool average_attn_weights, bool is_causal) -> nb::object {
            const nn::AttentionMasks masks{or_empty(attn_mask), or_empty(key_padding_mask),
                                           is_causal};
            nn::Attention::WithWeights out;
            {
              nb::gil_scoped_release release;
              if (need_weights)
                out = a.forward_with_weights(query, key, value, masks, average_attn_weights);
              else
                out.output = a.forward(query, key, value, masks);
            }
            return nb::make_tuple(out.output,
                                  need_weights ? nb::cast(out.weights) : nb::none());
          },
          nb::arg("query"), nb::arg("key"), nb::arg("value"),
          nb::arg("key_padding_mask") = nb::none(), nb::arg("need_weights") = true,
          nb::arg("attn_mask") = nb::none(), nb::arg("average_attn_weights") = true,
          nb::arg("is_causal") = false,
          "(output Variable, weights Tensor before dropout or None), as torch: need_weights "
          "(the default) computes the weights too; pass need_weights=False for the output "
          "alone (and for the linear kernels, which form no weights).");

  module_class<nn::TransformerEncoderLayer>(mod, "TransformerEncoderLayer",
                                            "torch.nn.TransformerEncoderLayer.")
      .def(
          "__init__",
          [](nn::TransformerEncoderLayer* self, int64_t d_model, int64_t nhead, int64_t ff,
             double dropout, const std::string& act, double eps, bool batch_first, bool norm_first,
             bool bias, uint64_t seed, std::optional<nn::AttentionVariant> self_attention) {
            Generator g(seed);
            new (self) nn::TransformerEncoderLayer(layer_config(d_model, nhead, ff, dropout, act, eps, batch_first,
                                               norm_first, bias, self_attention),
                                  g);
          },
          QKV_LAYER_ARGS)
      .def(
          "forward",
          [](nn::TransformerEncoderLayer& l, const Variable& src, OptTensor src_mask,
             OptTensor src_key_padding_mask, bool is_causal) {
            nb::gil_scoped_release release;
            return l.forward(src, {or_empty(src_mask), or_empty(src_key_padding_mask), is_causal});
          },
          nb::arg("src"), nb::arg("src_mask") = nb::none(),
          nb::arg("src_key_padding_mask") = nb::none(), nb::arg("is_causal") = false);

  module_class<nn::TransformerDecoderLayer>(mod, "TransformerDecoderLayer",
                                            "torch.nn.TransformerDecoderLayer.")
      .def(
          "__init__",
          [](nn::TransformerDecoderLayer* self, int64_t d_model, int64_t nhead, int64_t ff,
             double dropout, const std::string& act, double eps, bool batch_first, bool norm_first,
             bool bias, uint64_t seed, std::optional<nn::AttentionVariant> self_attention) {
            Generator g(seed);
            new (self) nn::TransformerDecoderLayer(layer_config(d_model, nhead, ff, dropout, act, eps, batch_first,
                                               norm_first, bias, self_attention),
                                  g);
          },
          QKV_LAYER_ARGS)
      .def(
          "forward",
          [](nn::TransformerDecoderLayer& l, const Variable& tgt, const Variable& memory,
             OptTensor tgt_mask, OptTensor memory_mask, OptTensor tgt_kpm, OptTensor memory_kpm,
             bool tgt_is_causal, bool memory_is_causal) {
            nb::gil_scoped_release release;
            return l.forward(tgt, memory, {or_empty(tgt_mask), or_empty(tgt_kpm), tgt_is_causal},
                             {or_empty(memory_mask), or_empty(memory_kpm), memory_is_causal});
          },
          nb::arg("tgt"), nb::arg("memory"), nb::arg("tgt_mask") = nb::none(),
          nb::arg("memory_mask") = nb::none(), nb::arg("tgt_key_padding_mask") = nb::none(),
          nb::arg("memory_key_padding_mask") = nb::none(), nb::arg("tgt_is_causal") = false,
          nb::arg("memory_is_causal") = false);

  module_class<nn::TransformerEncoder>(
      mod, "TransformerEncoder",
      "torch.nn.TransformerEncoder: num_layers layers with encoder_layer's configuration "
      "(each drawn afresh), and a final LayerNorm when norm.")
      .def(
          "__init__",
          [](nn::TransformerEncoder* self, const nn::TransformerEncoderLayer& layer,
             int64_t num_layers, bool norm, uint64_t seed) {
            Generator g(seed);
            new (self) nn::TransformerEncoder({layer.config(), num_layers, norm}, g);
          },
          nb::arg("encoder_layer"), nb::arg("num_layers"), nb::arg("norm") = false,
          nb::arg("seed") = 0)
      .def(
          "forward",
          [](nn::TransformerEncoder& e, const Variable& src, OptTensor mask,
             OptTensor src_key_padding_mask, bool is_causal) {
            nb::gil_scoped_release release;
            return e.forward(src, {or_empty(mask), or_empty(src_key_padding_mask), is_causal});
          },
          nb::arg("src"), nb::arg("mask") = nb::none(),
          nb::arg("src_key_padding_mask") = nb::none(), nb::arg("is_causal") = false);

  module_class<nn::TransformerDecoder>(
      mod, "TransformerDecoder",
      "torch.nn.TransformerDecoder: num_layers layers with decoder_layer's configuration "
      "(each drawn afresh), and a final LayerNorm when norm.")
      .def(
          "__init__",
          [](nn::TransformerDecoder* self, const nn::TransformerDecoderLayer& layer,
             int64_t num_layers, bool norm, uint64_t seed) {
            Generator g(seed);
            new (self) nn::TransformerDecoder({layer.config(), num_layers, norm}, g);
          },
          nb::arg("decoder_layer"), nb::arg("num_layers"), nb::arg("norm") = false,
          nb::arg("seed") = 0)
      .def(
          "forward",
          [](nn::TransformerDecoder& d, const Variable& tgt, const Variable& memory,
             OptTensor tgt_mask, OptTensor memory_mask, OptTensor tgt_kpm, OptTensor memory_kpm,
             bool tgt_is_causal, bool memory_is_causal) {
            nb::gil_scoped_release release;
            return d.forward(tgt, memory, {or_empty(tgt_mask), or_empty(tgt_kpm), tgt_is_causal},
                             {or_empty(memory_mask), or_empty(memory_kpm), memory_is_causal});
          },
          nb::arg("tgt"), nb::arg("memory"), nb::arg("tgt_mask") = nb::none(),
          nb::arg("memory_mask") = nb::none(), nb::arg("tgt_key_padding_mask") = nb::none(),
          nb::arg("memory_key_padding_mask") = nb::none(), nb::arg("tgt_is_causal") = false,
          nb::arg("memory_is_causal") = false)
      .def("make_cache", &nn::TransformerDecoder::make_cache, nb::arg("batch"),
           nb::arg("capacity"),
           "A DecoderCache for `batch` targets of up to `capacity` positions.")
      .def(
          "forward_cached",
          [](nn::TransformerDecoder& d, const Variable& tgt, std::optional<Variable> memory,
             nn::DecoderCache& cache, OptTensor memory_kpm) {
            nb::gil_scoped_release release;
            autograd::NoGradGuard no_grad;
            return d.forward_cached(tgt, memory.value_or(Variable()), cache,
                                    {.key_padding_mask = or_empty(memory_kpm)});
          },
          nb::arg("tgt"), nb::arg("memory").none(), nb::arg("cache"),
          nb::arg("memory_key_padding_mask") = nb::none(),
          "Incremental decoding in eval mode, without gradient: tgt holds the new positions, "
          "causal over what the cache holds; memory is read on the first step (None after). "
          "Equals forward(..., tgt_is_causal=True) on the whole prefix.");

  nb::class_<nn::DecoderCache>(mod, "DecoderCache",
                               "Per decoder layer, the self-attention's keys and values so far "
                               "and the cross-attention's of the memory "
                               "(TransformerDecoder.make_cache).")
      .def_prop_ro("length", &nn::DecoderCache::length)
      .def_prop_ro("capacity", &nn::DecoderCache::capacity)
      .def_prop_ro("batch", &nn::DecoderCache::batch)
      .def("clear", &nn::DecoderCache::clear);

  module_class<nn::Transformer>(mod, "Transformer", "torch.nn.Transformer.")
      .def(
          "__init__",
          [](nn::Transformer* self, int64_t d_model, int64_t nhead, int64_t enc, int64_t dec,
             int64_t ff, double dropout, const std::string& act, double eps, bool batch_first,
             bool norm_first, bool bias, uint64_t seed,
             std::optional<nn::AttentionVariant> self_attention) {
            Generator g(seed);
            new (self) nn::Transformer({.d_model = d_model,
                                        .nhead = nhead,
                                        .num_encoder_layers = enc,
                                        .num_decoder_layers = dec,
                                        .dim_feedforward = ff,
                                        .dropout = dropout,
                                        .activation = activation_of(act, false),
                                        .layer_norm_eps = eps,
                                        .batch_first = batch_first,
                                        .norm_first = norm_first,
                                        .bias = bias,
                                        .self_attention = self_attention.value_or(
                                            nn::AttentionVariant{})},
                                       g);
          },
          nb::arg("d_model") = 512, nb::arg("nhead") = 8, nb::arg("num_encoder_layers") = 6,
          nb::arg("num_decoder_layers") = 6, nb::arg("dim_feedforward") = 2048,
          nb::arg("dropout") = 0.1, nb::arg("activation") = "relu",
          nb::arg("layer_norm_eps") = 1e-5, nb::arg("batch_first") = false,
          nb::arg("norm_first") = false, nb::arg("bias") = true, nb::arg("seed") = 0,
          nb::arg("self_attention").none() = nb::none())
      .def(
          "forward",
          [](nn::Transformer& t, const Variable& src, const Variable& tgt, OptTensor src_mask,
             OptTensor tgt_mask, OptTensor memory_mask, OptTensor src_kpm, OptTensor tgt_kpm,
             OptTensor memory_kpm, bool src_is_causal, bool tgt_is_causal, bool memory_is_causal) {
            const nn::TransformerMasks masks{
                or_empty(src_mask), or_empty(tgt_mask), or_empty(memory_mask),
                or_empty(src_kpm),  or_empty(tgt_kpm),  or_empty(memory_kpm),
                src_is_causal,      tgt_is_causal,      memory_is_causal};
            nb::gil_scoped_release release;
            return t.forward(src, tgt, masks);
          },
          nb::arg("src"), nb::arg("tgt"), nb::arg("src_mask") = nb::none(),
          nb::arg("tgt_mask") = nb::none(), nb::arg("memory_mask") = nb::none(),
          nb::arg("src_key_padding_mask") = nb::none(),
          nb::arg("tgt_key_padding_mask") = nb::none(),
          nb::arg("memory_key_padding_mask") = nb::none(), nb::arg("src_is_causal") = false,
          nb::arg("tgt_is_causal") = false, nb::arg("memory_is_causal") = false);

  module_class<nn::AttentionPoolingClassifier>(
      mod, "AttentionPoolingClassifier",
      "Embeddings + positions -> attention pooling by a learned query -> Linear logits.")
      .def(
          "__init__",
          [](nn::AttentionPoolingClassifier* self, int64_t vocab, int64_t d_model, int64_t max_len,
             int64_t classes, const std::string& positional, std::optional<int64_t> padding_idx,
             uint64_t seed) {
            QKV_CHECK(positional == "sinusoidal" || positional == "learned",
                      "AttentionPoolingClassifier: positional must be 'sinusoidal' or "
                      "'learned', got '",
                      positional, "'");
            Generator g(seed);
            new (self) nn::AttentionPoolingClassifier(
                {vocab, d_model, max_len, classes,
                 positional == "learned" ? nn::PositionalEncoding::learned
                                         : nn::PositionalEncoding::sinusoidal,
                 padding_idx},
                g);
          },
          nb::arg("vocab_size"), nb::arg("d_model"), nb::arg("max_len"), nb::arg("num_classes"),
          nb::arg("positional") = "sinusoidal", nb::arg("padding_idx") = nb::none(),
          nb::arg("seed") = 0)
      .def(
          "forward",
          [](nn::AttentionPoolingClassifier& c, const Tensor& ids, OptTensor padding_mask) {
            nb::gil_scoped_release release;
            return c.forward(ids, or_empty(padding_mask));
          },
          nb::arg("ids"), nb::arg("padding_mask") = nb::none());
}

}  // namespace qkv::python
