// The extension module qkv._qkv: errors, threads, and the topic bindings.
#include <nanobind/nanobind.h>

#include "bindings.h"
#include "qkv/error.h"
#include "qkv/threads.h"
#include "qkv/version.h"

namespace nb = nanobind;

NB_MODULE(_qkv, m) {
  m.doc() = "qkv: an engine for self-attention and Transformer models (C++ core)";
  m.attr("__version__") = QKV_VERSION_STRING;

  // qkv::Error is a bad value or a bad file: a ValueError to Python callers.
  nb::exception<qkv::Error>(m, "QkvError", PyExc_ValueError);

  m.def("set_num_threads", &qkv::set_num_threads, nb::arg("n"),
        "Sets the size of qkv's one thread team (shared with oneDNN).");
  m.def("num_threads", &qkv::num_threads, "The size of qkv's thread team.");

  qkv::python::bind_tensor(m);
  qkv::python::bind_ops(m);
  qkv::python::bind_io(m);
  qkv::python::bind_modifiers(m);
  qkv::python::bind_sparse_masks(m);
  qkv::python::bind_attention(m);
  qkv::python::bind_attention_backward(m);
  qkv::python::bind_scoring(m);
  qkv::python::bind_positions(m);
  qkv::python::bind_train(m);
  qkv::python::bind_embeddings(m);
  qkv::python::bind_linear_attention(m);
  qkv::python::bind_autograd(m);
  qkv::python::bind_checkpoint(m);
  qkv::python::bind_layers(m);
  qkv::python::bind_text(m);
  qkv::python::bind_gpt(m);
  qkv::python::bind_viz(m);
  qkv::python::bind_bert(m);
}
