// qkv._qkv.safetensors: the mmap reader and the atomic writer of qkv/safetensors.h.
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "qkv/safetensors.h"

namespace qkv::python {
namespace {

namespace st = qkv::safetensors;
using Release = nb::call_guard<nb::gil_scoped_release>;
using Metadata = std::map<std::string, std::string>;

nb::dict info_dict(const st::TensorInfo& info) {
  nb::dict out;
  out["dtype"] = info.dtype;
  nb::list shape;
  for (int64_t s : info.shape) shape.append(s);
  out["shape"] = shape;
  out["data_offsets"] = nb::make_tuple(info.begin, info.end);
  return out;
}

}  // namespace

void bind_io(nb::module_& m) {
  nb::module_ io = m.def_submodule("safetensors", "Read and write .safetensors files.");

  nb::class_<st::File>(io, "File",
                       "A validated safetensors file; get() returns zero-copy views into it.")
      .def_static("open", &st::File::open, nb::arg("path"), Release(),
                  "Maps a file read-only and validates it.")
      .def_static(
          "from_bytes",
          [](nb::bytes data) { return st::File::from_bytes(data.c_str(), data.size()); },
          nb::arg("data"), "Validates an in-memory image (the bytes are copied).")
      .def("keys",
           [](const st::File& f) {
             // Sorted, as safetensors.safe_open(...).keys() returns them.
             std::vector<std::string> names;
             for (const auto& info : f.tensors()) names.push_back(info.name);
             std::sort(names.begin(), names.end());
             return names;
           })
      .def("metadata", [](const st::File& f) { return f.metadata(); },
           "The __metadata__ strings (an empty dict when the file has none).")
      .def("get", &st::File::get, nb::arg("name"), Release())
      .def("get_tensor", &st::File::get, nb::arg("name"), Release())
      .def("info", [](const st::File& f, const std::string& name) { return info_dict(f.info(name)); },
           nb::arg("name"), "dtype (as in the file), shape and data_offsets of one tensor.")
      .def("__contains__", &st::File::contains, nb::arg("name"))
      .def("__len__", [](const st::File& f) { return f.tensors().size(); })
      .def("__enter__", [](nb::handle self) { return self; })
      .def("__exit__", [](nb::handle, nb::args) { return false; });

  io.def("load", &st::load, nb::arg("path"), Release(),
         "Every tensor of a file, by name (zero-copy views into the mapping).");
  io.def(
      "save",
      [](const std::string& path, const std::map<std::string, Tensor>& tensors,
         const std::optional<Metadata>& metadata) {
        nb::gil_scoped_release release;
        st::save(path, tensors, metadata.value_or(Metadata{}));
      },
      nb::arg("path"), nb::arg("tensors"), nb::arg("metadata") = nb::none(),
      "Writes atomically (temporary file, fsync, rename); tensors in name order.");
  io.def(
      "serialize",
      [](const std::map<std::string, Tensor>& tensors, const std::optional<Metadata>& metadata) {
        std::vector<uint8_t> bytes;
        {
          nb::gil_scoped_release release;
          bytes = st::serialize(tensors, metadata.value_or(Metadata{}));
        }
        return nb::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      },
      nb::arg("tensors"), nb::arg("metadata") = nb::none(), "The exact bytes save() would write.");
}

}  // namespace qkv::python
