// qkv.MaskMod / qkv.ScoreMod: the FlexAttention-style modifiers of
// qkv/modifiers.h, as opaque Python objects passed to qkv.attention(...,
// mask_mod=..., score_mod=...).
//
// Python callables (custom_mask, bias_score) are called from the C++ thread
// team while attention() runs with the GIL released: every call re-acquires
// the GIL, and the callable itself is only ever copied or dropped through a
// shared holder whose destructor takes the GIL.
#include <Python.h>
#include <nanobind/stl/shared_ptr.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "bindings.h"
#include "qkv/modifiers.h"

namespace qkv::python {
namespace {

// Mutable aliases: nanobind holds these; qkv's own MaskModPtr / ScoreModPtr
// are shared_ptr<const ...> and convert implicitly.
using MaskHolder = std::shared_ptr<MaskMod>;
using ScoreHolder = std::shared_ptr<ScoreMod>;

MaskHolder mutable_mask(MaskModPtr p) { return std::const_pointer_cast<MaskMod>(std::move(p)); }
ScoreHolder mutable_score(ScoreModPtr p) { return std::const_pointer_cast<ScoreMod>(std::move(p)); }

MaskHolder require(MaskHolder p, const char* op) {
  if (!p) throw Error(detail::str(op, ": a mask modifier is None"));
  return p;
}
ScoreHolder require(ScoreHolder p, const char* op) {
  if (!p) throw Error(detail::str(op, ": a score modifier is None"));
  return p;
}

// A Python callable shared by every copy of a std::function: copies touch
// only the C++ reference count, and the last one drops the Python reference
// with the GIL held (whichever thread that happens on).
class PyCallable {
 public:
  explicit PyCallable(nb::callable fn) : fn_(std::move(fn)) {}
  PyCallable(const PyCallable&) = delete;
  PyCallable& operator=(const PyCallable&) = delete;
  ~PyCallable() {
    if (!Py_IsInitialized()) {  // interpreter gone: nothing left to release into
      fn_.release();
      return;
    }
    nb::gil_scoped_acquire gil;
    fn_.reset();
  }
  // Calls fn(b, h, q, kv) with the GIL held; a Python exception propagates as
  // nb::python_error (the thread team rethrows it on the calling thread).
  template <class Convert>
  auto call(int64_t b, int64_t h, int64_t q, int64_t kv, Convert&& convert) const {
    nb::gil_scoped_acquire gil;
    nb::object result = fn_(b, h, q, kv);
    return convert(result);
  }

 private:
  nb::object fn_;
};

bool truthy(const nb::object& r) {
  const int t = PyObject_IsTrue(r.ptr());
  if (t < 0) throw nb::python_error();
  return t != 0;
}

float as_float(const nb::object& r) {
  const double x = PyFloat_AsDouble(r.ptr());
  if (x == -1.0 && PyErr_Occurred()) throw nb::python_error();
  return static_cast<float>(x);
}

#define QKV_CALLABLE_NOTE                                                                   \
  " The callable runs from qkv's worker threads, each call taking the GIL: it is evaluated " \
  "per (query, key) pair and serialised, so it is slow (fine for tests and small inputs; "   \
  "prefer the built-ins for real work). An exception it raises propagates out of "         \
  "attention()."

}  // namespace

void bind_modifiers(nb::module_& m) {
  nb::class_<MaskMod>(m, "MaskMod",
                      "A mask modifier for qkv.attention(mask_mod=...): which (batch, head, query, "
                      "key) pairs may attend. Made by causal_mask, sliding_window_mask, "
                      "prefix_lm_mask, document_mask, custom_mask; combined with mask_and / "
                      "mask_or or the operators & and |.")
      .def(
          "allowed",
          [](const MaskMod& self, int64_t b, int64_t h, int64_t q, int64_t kv) {
            return self.allowed(b, h, q, kv);
          },
          nb::arg("batch"), nb::arg("head"), nb::arg("q"), nb::arg("kv"),
          "Whether query q may attend to key kv in (batch, head).")
      .def(
          "__and__",
          [](MaskHolder a, MaskHolder b) { return mutable_mask(qkv::mask_and(a, b)); },
          nb::is_operator(), "Both masks allow the pair (mask_and).")
      .def(
          "__or__",
          [](MaskHolder a, MaskHolder b) { return mutable_mask(qkv::mask_or(a, b)); },
          nb::is_operator(), "Either mask allows the pair (mask_or).");

  nb::class_<ScoreMod>(m, "ScoreMod",
                       "A score modifier for qkv.attention(score_mod=...): s -> f(s, batch, head, "
                       "query, key), applied to scale * q.k before the mask and the softmax. Made "
                       "by bias_score, softcap_score; chained with score_chain.")
      .def(
          "score",
          [](const ScoreMod& self, double s, int64_t b, int64_t h, int64_t q, int64_t kv) {
            return self.score(s, b, h, q, kv);
          },
          nb::arg("s"), nb::arg("batch"), nb::arg("head"), nb::arg("q"), nb::arg("kv"),
          "The modified score of the raw score s at (batch, head, q, kv).");

  m.def(
      "causal_mask", [](int64_t offset) { return mutable_mask(qkv::causal_mask(offset)); },
      nb::arg("offset") = 0,
      "Causal: key kv visible to query q when kv <= q + offset (offset = Lk - Lq aligns it "
      "bottom-right, as a decode step with a KV cache).");
  m.def(
      "sliding_window_mask",
      [](int64_t left, int64_t right) {
        return mutable_mask(qkv::sliding_window_mask(left, right));
      },
      nb::arg("left"), nb::arg("right") = 0,
      "Local attention: q - left <= kv <= q + right (left, right >= 0; right=0 is causal "
      "sliding-window attention as in Mistral).");
  m.def(
      "prefix_lm_mask", [](int64_t prefix) { return mutable_mask(qkv::prefix_lm_mask(prefix)); },
      nb::arg("prefix"),
      "Prefix-LM: the first `prefix` keys are visible to every query, the rest causally "
      "(kv < prefix or kv <= q).");
  m.def(
      "document_mask",
      [](const Tensor& ids) {
        if (ids.defined() && ids.dtype() != DType::i32 && ids.dtype() != DType::i64)
          throw Error(detail::str("document_mask: document_ids must be i32 or i64, got ",
                                  dtype_name(ids.dtype())));
        // A copy: the mask does not alias (or keep alive) the caller's array.
        return mutable_mask(qkv::document_mask(ids.defined() ? ids.clone() : ids));
      },
      nb::arg("document_ids"),
      "Packed sequences: q and kv attend only within the same document. document_ids: integer "
      "[B, L], one id per position, shared by queries and keys (L must cover Lq and Lk). "
      "Combine with causal_mask via & for causal packed training.");
  m.def(
      "custom_mask",
      [](nb::callable fn) {
        auto holder = std::make_shared<const PyCallable>(std::move(fn));
        return mutable_mask(qkv::custom_mask([holder](int64_t b, int64_t h, int64_t q, int64_t kv) {
          return holder->call(b, h, q, kv, truthy);
        }));
      },
      nb::arg("fn"),
      "Any predicate: fn(batch, head, q, kv) -> bool, True = may attend." QKV_CALLABLE_NOTE);
  m.def(
      "mask_and",
      [](MaskHolder a, MaskHolder b) {
        return mutable_mask(qkv::mask_and(require(a, "mask_and"), require(b, "mask_and")));
      },
      nb::arg("a"), nb::arg("b"), "Intersection: both masks allow the pair (also a & b).");
  m.def(
      "mask_or",
      [](MaskHolder a, MaskHolder b) {
        return mutable_mask(qkv::mask_or(require(a, "mask_or"), require(b, "mask_or")));
      },
      nb::arg("a"), nb::arg("b"), "Union: either mask allows the pair (also a | b).");

  m.def(
      "bias_score",
      [](nb::callable fn) {
        auto holder = std::make_shared<const PyCallable>(std::move(fn));
        return mutable_score(qkv::bias_score([holder](int64_t b, int64_t h, int64_t q, int64_t kv) {
          return holder->call(b, h, q, kv, as_float);
        }));
      },
      nb::arg("fn"),
      "Additive bias: s + fn(batch, head, q, kv) (ALiBi, relative positions); fn returns a "
      "float." QKV_CALLABLE_NOTE);
  m.def(
      "softcap_score", [](float cap) { return mutable_score(qkv::softcap_score(cap)); },
      nb::arg("cap"), "Logit soft-capping (Gemma 2): cap * tanh(s / cap), cap > 0.");
  m.def(
      "score_chain",
      [](ScoreHolder a, ScoreHolder b) {
        return mutable_score(
            qkv::score_chain(require(a, "score_chain"), require(b, "score_chain")));
      },
      nb::arg("a"), nb::arg("b"), "b applied after a: s -> b(a(s)).");
}

}  // namespace qkv::python
