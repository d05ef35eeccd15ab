// qkv.linformer_attention, qkv.linear_attention, qkv.performer_projection,
// qkv.performer_attention and their backwards.
#include "qkv/linear_attention.h"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>

#include <optional>

#include "bindings.h"

namespace qkv::python {
namespace {

nb::dict input_grads(const Tensor& q, const Tensor& k, const Tensor& v) {
  nb::dict d;
  d["q"] = q;
  d["k"] = k;
  d["v"] = v;
  return d;
}

// causal is accepted so that asking for it gets linformer_attention's error.
AttentionOptions linformer_options(std::optional<double> scale, bool causal) {
  return AttentionOptions{.scale = scale, .causal = causal ? Causal::top_left : Causal::none};
}

LinearAttentionOptions kernelised_options(bool causal, double eps, int64_t chunk) {
  return LinearAttentionOptions{.causal = causal, .eps = eps, .chunk = chunk};
}

// The kernelised functions' keywords, mirroring LinearAttentionOptions.
template <class... Extra>
void def_kernelised(nb::module_& m, const char* name, Extra&&... extra) {
  m.def(name, std::forward<Extra>(extra)..., nb::arg("causal") = false, nb::arg("eps") = 1e-6,
        nb::arg("chunk") = 64);
}

}  // namespace

void bind_linear_attention(nb::module_& m) {
  m.def(
      "linformer_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& e, const Tensor& f,
         std::optional<double> scale, bool causal) {
        nb::gil_scoped_release release;
        const auto r = linformer_attention(q, k, v, e, f, linformer_options(scale, causal));
        return std::make_pair(r.output, r.lse);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("e"), nb::arg("f"),
      nb::arg("scale") = nb::none(), nb::arg("causal") = false,
      "Linformer: softmax(scale q (E k)^T) (F v); e, f: [kproj, Lk] or [H, kproj, Lk]. "
      "Returns (output, lse).");
  m.def(
      "linformer_attention_backward",
      [](const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v,
         const Tensor& e, const Tensor& f, const Tensor& output, const Tensor& lse,
         std::optional<double> scale, bool causal) {
        LinformerGradients g;
        {
          nb::gil_scoped_release release;
          g = linformer_attention_backward(grad_output, q, k, v, e, f, AttentionResult{output, lse},
                                           linformer_options(scale, causal));
        }
        nb::dict d = input_grads(g.grad_q, g.grad_k, g.grad_v);
        d["e"] = g.grad_e;
        d["f"] = g.grad_f;
        return d;
      },
      nb::arg("grad_output"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("e"), nb::arg("f"),
      nb::arg("output"), nb::arg("lse"), nb::arg("scale") = nb::none(), nb::arg("causal") = false);

  def_kernelised(
      m, "linear_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double eps,
         int64_t chunk) {
        nb::gil_scoped_release release;
        return linear_attention(q, k, v, kernelised_options(causal, eps, chunk));
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"),
      "Linear attention with phi = elu + 1 (Katharopoulos et al. 2020); causal by chunked "
      "prefix sums.");
  def_kernelised(
      m, "linear_attention_backward",
      [](const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
         double eps, int64_t chunk) {
        LinearAttentionGradients g;
        {
          nb::gil_scoped_release release;
          g = linear_attention_backward(grad_output, q, k, v,
                                        kernelised_options(causal, eps, chunk));
        }
        return input_grads(g.grad_q, g.grad_k, g.grad_v);
      },
      nb::arg("grad_output"), nb::arg("q"), nb::arg("k"), nb::arg("v"));

  m.def("performer_projection", &performer_projection, nb::arg("features"), nb::arg("dim"),
        nb::arg("seed") = 0,
        "FAVOR+ orthogonal random features W [features, dim], deterministic for a seed.");
  def_kernelised(
      m, "performer_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w, bool causal,
         double eps, int64_t chunk) {
        nb::gil_scoped_release release;
        return performer_attention(q, k, v, w, kernelised_options(causal, eps, chunk));
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("w"),
      "Performer FAVOR+ attention with positive random features W (performer_projection).");
  def_kernelised(
      m, "performer_attention_backward",
      [](const Tensor& grad_output, const Tensor& q, const Tensor& k, const Tensor& v,
         const Tensor& w, bool causal, double eps, int64_t chunk) {
        LinearAttentionGradients g;
        {
          nb::gil_scoped_release release;
          g = performer_attention_backward(grad_output, q, k, v, w,
                                           kernelised_options(causal, eps, chunk));
        }
        return input_grads(g.grad_q, g.grad_k, g.grad_v);
      },
      nb::arg("grad_output"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("w"));
}

}  // namespace qkv::python
