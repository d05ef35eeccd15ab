// qkv.nn.GPT: the decoder-only language model (qkv/gpt.h) with nanoGPT's
// parameter names, its KV cache and sampling. The heavy calls release the
// GIL; generate()'s on_token callback takes it back for each token.
#include "qkv/gpt.h"

#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings.h"

namespace qkv::python {
namespace {

using autograd::Variable;
using nn::GenerationOptions;
using nn::GPTConfig;
using nn::GPTPositions;

GPTPositions parse_positions(const std::string& s) {
  return from_name(nn::kGPTPositionNames, s, "GPTConfig: positions");
}

std::string positions_name(GPTPositions p) {
  return std::string(name_of(nn::kGPTPositionNames, p));
}

GenerationOptions sampling(double temperature, int64_t top_k, double top_p, uint64_t seed) {
  GenerationOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  return o;
}

}  // namespace

void bind_gpt(nb::module_& m) {
  nb::module_ mod = nb::borrow<nb::module_>(m.attr("nn"));

  nb::class_<GPTConfig>(mod, "GPTConfig",
                        "The GPT's shape (qkv/gpt.h): vocab_size, context (block_size), n_layer, "
                        "n_head, d_model, dropout, bias, tied_embeddings, positions ('learned' or "
                        "'rotary'), rotary_base.")
      .def(
          "__init__",
          [](GPTConfig* self, int64_t vocab_size, int64_t context, int64_t n_layer, int64_t n_head,
             int64_t d_model, double dropout, bool bias, bool tied_embeddings,
             const std::string& positions, double rotary_base) {
            new (self) GPTConfig{.vocab_size = vocab_size,
                                 .context = context,
                                 .n_layer = n_layer,
                                 .n_head = n_head,
                                 .d_model = d_model,
                                 .dropout = dropout,
                                 .bias = bias,
                                 .tied_embeddings = tied_embeddings,
                                 .positions = parse_positions(positions),
                                 .rotary_base = rotary_base};
            self->validate();
          },
          nb::kw_only(), nb::arg("vocab_size"), nb::arg("context") = 256, nb::arg("n_layer") = 6,
          nb::arg("n_head") = 6, nb::arg("d_model") = 384, nb::arg("dropout") = 0.0,
          nb::arg("bias") = true, nb::arg("tied_embeddings") = true,
          nb::arg("positions") = "learned", nb::arg("rotary_base") = 10000.0)
      .def_rw("vocab_size", &GPTConfig::vocab_size)
      .def_rw("context", &GPTConfig::context)
      .def_rw("n_layer", &GPTConfig::n_layer)
      .def_rw("n_head", &GPTConfig::n_head)
      .def_rw("d_model", &GPTConfig::d_model)
      .def_rw("dropout", &GPTConfig::dropout)
      .def_rw("bias", &GPTConfig::bias)
      .def_rw("tied_embeddings", &GPTConfig::tied_embeddings)
      .def_prop_rw(
          "positions", [](const GPTConfig& c) { return positions_name(c.positions); },
          [](GPTConfig& c, const std::string& s) { c.positions = parse_positions(s); })
      .def_rw("rotary_base", &GPTConfig::rotary_base)
      .def("validate", &GPTConfig::validate)
      .def("to_json", &GPTConfig::to_json)
      .def_static("from_json", &GPTConfig::from_json, nb::arg("text"))
      .def("__repr__", [](const GPTConfig& c) {
        return detail::str("GPTConfig(vocab_size=", c.vocab_size, ", context=", c.context,
                           ", n_layer=", c.n_layer, ", n_head=", c.n_head, ", d_model=", c.d_model,
                           ", dropout=", c.dropout, ", bias=", c.bias ? "True" : "False",
                           ", tied_embeddings=", c.tied_embeddings ? "True" : "False",
                           ", positions='", positions_name(c.positions),
                           "', rotary_base=", c.rotary_base, ")");
      });

  nb::class_<nn::KVCache>(mod, "KVCache",
                          "Keys and values of every layer for GPT.forward_cached "
                          "(GPT.make_cache).")
      .def_prop_ro("length", &nn::KVCache::length)
      .def_prop_ro("capacity", &nn::KVCache::capacity)
      .def_prop_ro("batch", &nn::KVCache::batch)
      .def("clear", &nn::KVCache::clear);

  nb::class_<nn::GPT, nn::Module>(mod, "GPT",
                                  "A decoder-only Transformer LM with nanoGPT's parameter names "
                                  "(qkv/gpt.h).")
      .def(
          "__init__",
          [](nn::GPT* self, std::optional<GPTConfig> config, uint64_t seed, nb::kwargs fields) {
            if (config && nb::len(fields) > 0)
              throw Error("GPT: pass a GPTConfig or its fields as keyword arguments, not both");
            if (!config) config = nb::cast<GPTConfig>(nb::type<GPTConfig>()(**fields));
            Generator g(seed);
            new (self) nn::GPT(*config, g);
          },
          nb::arg("config") = nb::none(), nb::kw_only(), nb::arg("seed") = 0, nb::arg("fields"),
          "GPT(config, seed=0) or GPT(vocab_size=..., context=..., ..., seed=0).")
      .def("__call__",
           [](nb::handle self, nb::args args, nb::kwargs kwargs) {
             return self.attr("forward")(*args, **kwargs);
           })
      .def("forward", &nn::GPT::forward, nb::arg("ids"), nb::call_guard<nb::gil_scoped_release>(),
           "ids [B, T] (int32 / int64) -> logits [B, T, vocab] (a Variable).")
      .def("loss", &nn::GPT::loss, nb::arg("ids"), nb::arg("targets"),
           nb::call_guard<nb::gil_scoped_release>(),
           "Mean cross-entropy of the next-token targets [B, T] (-1 is ignored).")
      .def("make_cache", &nn::GPT::make_cache, nb::arg("batch") = 1, nb::arg("capacity") = 0,
           "A KV cache for `batch` sequences of up to `capacity` positions (0: the context).")
      .def("forward_cached", &nn::GPT::forward_cached, nb::arg("ids"), nb::arg("cache"),
           nb::call_guard<nb::gil_scoped_release>(),
           "Appends ids [B, T] to the cache and returns their logits [B, T, vocab] (a Tensor).")
      .def(
          "generate",
          [](const nn::GPT& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
             double temperature, int64_t top_k, double top_p,
             std::optional<std::vector<std::vector<int32_t>>> stop, uint64_t seed, bool use_cache,
             std::optional<nb::callable> on_token) {
            GenerationOptions o = sampling(temperature, top_k, top_p, seed);
            o.max_new_tokens = max_new_tokens;
            o.use_cache = use_cache;
            if (stop) o.stop = *stop;
            if (on_token)
              o.on_token = [callback = *on_token](int32_t token) {
                nb::gil_scoped_acquire gil;
                const nb::object r = callback(token);
                return r.is_none() || nb::cast<bool>(r);  // None goes on
              };
            nb::gil_scoped_release release;
            return model.generate(prompt, o);
          },
          nb::arg("prompt"), nb::kw_only(), nb::arg("max_new_tokens") = 256,
          nb::arg("temperature") = 1.0, nb::arg("top_k") = 0, nb::arg("top_p") = 1.0,
          nb::arg("stop") = nb::none(), nb::arg("seed") = 0, nb::arg("use_cache") = true,
          nb::arg("on_token") = nb::none(),
          "The new tokens (a list) after `prompt`: greedy at temperature 0, else sampled with "
          "top_k / top_p; stops after max_new_tokens, a `stop` sequence (kept), or when "
          "on_token(token) returns False.")
      .def("attention_maps", &nn::GPT::attention_maps, nb::arg("ids"),
           nb::call_guard<nb::gil_scoped_release>(),
           "Each layer's attention weights [H, T, T] for ids [1, T], without dropout.")
      .def_prop_ro("config", &nn::GPT::config)
      .def("num_parameters", &nn::GPT::num_parameters);

  mod.def(
      "sampling_distribution",
      [](const Tensor& logits, double temperature, int64_t top_k, double top_p) {
        return nn::sampling_distribution(logits, sampling(temperature, top_k, top_p, 0));
      },
      nb::arg("logits"), nb::kw_only(), nb::arg("temperature") = 1.0, nb::arg("top_k") = 0,
      nb::arg("top_p") = 1.0,
      "The probabilities [vocab] that sample_next_token draws from (Hugging Face's temperature, "
      "top-k and top-p warpers).");
  mod.def(
      "sample_next_token",
      [](const Tensor& logits, double temperature, int64_t top_k, double top_p, uint64_t seed) {
        Generator g(seed);
        return nn::sample_next_token(logits, sampling(temperature, top_k, top_p, seed), g);
      },
      nb::arg("logits"), nb::kw_only(), nb::arg("temperature") = 1.0, nb::arg("top_k") = 0,
      nb::arg("top_p") = 1.0, nb::arg("seed") = 0,
      "One token drawn from sampling_distribution(logits) with a generator seeded by `seed`.");
}

}  // namespace qkv::python
