// qkv.Tensor: views, copies, and zero-copy interop with NumPy / DLPack.
//
// In: any CPU array speaking DLPack or the buffer protocol becomes a Tensor over
// the array's own memory; the Storage holds the nanobind ndarray (and through it
// the Python object) and releases it with the GIL held.
// Out: numpy(), __array__, the buffer protocol and __dlpack__ all hand out the
// tensor's memory with an owner capsule holding a shared_ptr<Storage>.
#include "qkv/tensor.h"

#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "qkv/dtype.h"
#include "qkv/error.h"

namespace qkv::python {
namespace {

using nb::dlpack::dtype_code;

std::string dlpack_dtype_name(nb::dlpack::dtype dt) {
  const char* kind = "unknown";
  switch (static_cast<dtype_code>(dt.code)) {
    case dtype_code::Int: kind = "int"; break;
    case dtype_code::UInt: kind = "uint"; break;
    case dtype_code::Float: kind = "float"; break;
    case dtype_code::Bfloat: kind = "bfloat"; break;
    case dtype_code::Complex: kind = "complex"; break;
    case dtype_code::Bool: kind = "bool"; break;
    default: break;
  }
  std::string name = detail::str(kind, static_cast<int>(dt.bits));
  if (dt.lanes != 1) name += detail::str("x", static_cast<int>(dt.lanes));
  return name;
}

DType dtype_from_dlpack(nb::dlpack::dtype dt) {
  if (dt.lanes == 1) {
    switch (static_cast<dtype_code>(dt.code)) {
      case dtype_code::Float:
        if (dt.bits == 32) return DType::f32;
        if (dt.bits == 64) return DType::f64;
        if (dt.bits == 16) return DType::f16;
        break;
      case dtype_code::Bfloat:
        if (dt.bits == 16) return DType::bf16;
        break;
      case dtype_code::Int:
        if (dt.bits == 32) return DType::i32;
        if (dt.bits == 64) return DType::i64;
        break;
      case dtype_code::Bool:
        if (dt.bits == 8) return DType::boolean;
        break;
      default: break;
    }
  }
  throw Error(detail::str("qkv.from_numpy: arrays of ", dlpack_dtype_name(dt),
                          " have no qkv dtype (qkv has f32, f64, bf16, f16, i32, i64, bool); convert "
                          "first, e.g. arr.astype(numpy.float32)"));
}

nb::dlpack::dtype dlpack_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return nb::dtype<float>();
    case DType::bf16: return {static_cast<uint8_t>(dtype_code::Bfloat), 16, 1};
    case DType::f16: return {static_cast<uint8_t>(dtype_code::Float), 16, 1};
    case DType::i32: return nb::dtype<int32_t>();
    case DType::i64: return nb::dtype<int64_t>();
    case DType::boolean: return nb::dtype<bool>();
    case DType::f64: return nb::dtype<double>();
  }
  throw Error("unreachable dtype");
}

void check_defined(const Tensor& t, const char* what) {
  QKV_CHECK(t.defined(), what, ": the tensor is undefined");
}

// An array over the tensor's memory; the capsule keeps the storage alive.
template <class... Framework>
nb::ndarray<Framework...> export_array(const Tensor& t) {
  check_defined(t, "export");
  std::vector<size_t> shape(t.shape().begin(), t.shape().end());
  std::vector<int64_t> strides(t.strides().begin(), t.strides().end());
  auto* keep = new std::shared_ptr<Storage>(t.storage());
  nb::capsule owner(keep,
                    [](void* p) noexcept { delete static_cast<std::shared_ptr<Storage>*>(p); });
  return nb::ndarray<Framework...>(t.raw_data(), shape.size(), shape.data(), owner, strides.data(),
                                   dlpack_dtype(t.dtype()), nb::device::cpu::value, 0);
}

nb::ndarray<nb::numpy> to_numpy(const Tensor& t) {
  check_defined(t, "Tensor.numpy");
  QKV_CHECK(t.dtype() != DType::bf16,
            "Tensor.numpy: NumPy has no bfloat16 dtype; convert first with t.to('f32'), or share "
            "the memory with torch.from_dlpack(t)");
  return export_array<nb::numpy>(t);
}

nb::tuple to_tuple(const Shape& values) {
  nb::list out;
  for (int64_t v : values) out.append(v);
  return nb::tuple(out);
}

// view(2, 3) and view((2, 3)) both mean the shape [2, 3].
Shape shape_from_args(const nb::args& args) {
  if (args.size() == 1 && !nb::isinstance<nb::int_>(args[0])) return nb::cast<Shape>(args[0]);
  Shape shape;
  for (nb::handle h : args) shape.push_back(nb::cast<int64_t>(h));
  return shape;
}

// Nested Python lists of the values (floats for float dtypes, else ints/bools).
nb::object build_list(const Tensor& t, const std::vector<double>& values, size_t& next, int64_t d) {
  if (d == t.dim()) {
    const double v = values[next++];
    if (is_floating(t.dtype())) return nb::float_(v);
    if (t.dtype() == DType::boolean) return nb::bool_(v != 0);
    return nb::int_(static_cast<int64_t>(v));
  }
  nb::list out;
  for (int64_t i = 0; i < t.size(d); ++i) out.append(build_list(t, values, next, d + 1));
  return out;
}

// t[key] for ints, slices with a positive step, None and Ellipsis (and tuples of them).
Tensor index(const Tensor& t, nb::handle key) {
  check_defined(t, "Tensor.__getitem__");
  std::vector<nb::handle> items;
  if (nb::isinstance<nb::tuple>(key)) {
    for (nb::handle h : nb::borrow<nb::tuple>(key)) items.push_back(h);
  } else {
    items.push_back(key);
  }
  int64_t used = 0;
  int ellipses = 0;
  for (nb::handle h : items) {
    if (h.is_none()) continue;
    if (h.ptr() == Py_Ellipsis) {
      ++ellipses;
      continue;
    }
    ++used;
  }
  if (ellipses > 1) throw nb::index_error("an index can only have a single ellipsis ('...')");
  if (used > t.dim())
    throw nb::index_error(
        detail::str("too many indices: ", used, " for a tensor of rank ", t.dim()).c_str());
  Tensor out = t;
  int64_t d = 0;
  for (nb::handle h : items) {
    if (h.is_none()) {
      out = out.unsqueeze(d++);
    } else if (h.ptr() == Py_Ellipsis) {
      d += t.dim() - used;
    } else if (nb::isinstance<nb::slice>(h)) {
      const auto [start, stop, step, length] =
          nb::borrow<nb::slice>(h).compute(static_cast<size_t>(out.size(d)));
      if (step < 1)
        throw nb::index_error(
            detail::str("slice step must be >= 1 (qkv views have no negative steps), got ", step)
                .c_str());
      out = out.slice(d++, start, start + static_cast<int64_t>(length) * step, step);
    } else if (PyIndex_Check(h.ptr()) && !PyBool_Check(h.ptr())) {
      const int64_t i = nb::cast<int64_t>(nb::steal(PyNumber_Index(h.ptr())));
      const int64_t n = out.size(d);
      if (i < -n || i >= n)
        throw nb::index_error(
            detail::str("index ", i, " is out of range for dim ", d, " of size ", n).c_str());
      out = out.select(d, i);
    } else {
      throw nb::type_error(
          "qkv.Tensor indices must be ints, slices, None or Ellipsis (or a tuple of them)");
    }
  }
  return out;
}

// ---- the buffer protocol (memoryview, np.asarray, bytes) ---------------------

int tensor_getbuffer(PyObject* self, Py_buffer* view, int flags) {
  view->obj = nullptr;
  const Tensor& t = *nb::inst_ptr<Tensor>(self);
  if (!t.defined()) {
    PyErr_SetString(PyExc_BufferError, "qkv.Tensor: the tensor is undefined");
    return -1;
  }
  const char* format = nullptr;
  switch (t.dtype()) {
    case DType::f32: format = "f"; break;
    case DType::f64: format = "d"; break;
    case DType::f16: format = "e"; break;
    case DType::i32: format = "i"; break;
    case DType::i64: format = "q"; break;
    case DType::boolean: format = "?"; break;
    case DType::bf16: break;
  }
  if (format == nullptr) {
    PyErr_SetString(PyExc_BufferError,
                    "qkv.Tensor: bf16 has no buffer-protocol format; use t.to('f32') or "
                    "torch.from_dlpack(t)");
    return -1;
  }
  const auto itemsize = static_cast<Py_ssize_t>(t.itemsize());
  if ((flags & PyBUF_STRIDES) != PyBUF_STRIDES && !t.is_contiguous()) {
    PyErr_SetString(PyExc_BufferError,
                    "qkv.Tensor: a non-contiguous tensor needs a strided buffer request");
    return -1;
  }
  const auto ndim = static_cast<size_t>(t.dim());
  auto* shape_and_strides =
      static_cast<Py_ssize_t*>(PyMem_Malloc(sizeof(Py_ssize_t) * (2 * ndim + 1)));
  if (shape_and_strides == nullptr) {
    PyErr_NoMemory();
    return -1;
  }
  Py_ssize_t* shape = shape_and_strides;
  Py_ssize_t* strides = shape_and_strides + ndim;
  for (size_t i = 0; i < ndim; ++i) {
    shape[i] = static_cast<Py_ssize_t>(t.shape()[i]);
    strides[i] = static_cast<Py_ssize_t>(t.strides()[i]) * itemsize;
  }
  view->buf = t.raw_data();
  view->obj = Py_NewRef(self);
  view->len = static_cast<Py_ssize_t>(t.numel()) * itemsize;
  view->itemsize = itemsize;
  view->readonly = 0;
  view->ndim = static_cast<int>(ndim);
  view->format = (flags & PyBUF_FORMAT) == PyBUF_FORMAT ? const_cast<char*>(format) : nullptr;
  view->shape = (flags & PyBUF_ND) == PyBUF_ND ? shape : nullptr;
  view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? strides : nullptr;
  view->suboffsets = nullptr;
  view->internal = shape_and_strides;
  return 0;
}

void tensor_releasebuffer(PyObject*, Py_buffer* view) {
  PyMem_Free(view->internal);
}

PyType_Slot tensor_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(tensor_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(tensor_releasebuffer)},
    {0, nullptr},
};

}  // namespace

// Short names, plus NumPy / PyTorch spellings, for the dtype arguments.
DType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "float") return DType::f32;
  if (name == "float64" || name == "double") return DType::f64;
  if (name == "bfloat16") return DType::bf16;
  if (name == "float16" || name == "half") return DType::f16;
  if (name == "int32") return DType::i32;
  if (name == "int64" || name == "long") return DType::i64;
  return dtype_from_name(name);
}

Tensor tensor_from_array(const AnyArray& array) {
  const DType dtype = dtype_from_dlpack(array.dtype());
  const auto ndim = static_cast<size_t>(array.ndim());
  const auto itemsize = static_cast<int64_t>(dtype_size(dtype));
  Shape shape(ndim), strides(ndim);
  int64_t lowest = 0, highest = 0, numel = 1;
  for (size_t i = 0; i < ndim; ++i) {
    shape[i] = static_cast<int64_t>(array.shape(i));
    strides[i] = array.stride(i);
    numel *= shape[i];
  }
  if (numel > 0) {
    for (size_t i = 0; i < ndim; ++i) {
      const int64_t reach = (shape[i] - 1) * strides[i];
      (reach < 0 ? lowest : highest) += reach;
    }
  }
  // The storage spans the elements the array can reach; negative strides
  // (arr[::-1]) start the view inside it.
  auto* base = static_cast<char*>(const_cast<void*>(array.data())) + lowest * itemsize;
  const auto nbytes = numel > 0 ? static_cast<size_t>((highest - lowest + 1) * itemsize) : 0;
  auto* keep = new AnyArray(array);
  auto storage = Storage::wrap(base, nbytes, [keep] {
    // At interpreter shutdown the array is already gone with the interpreter.
    if (!Py_IsInitialized()) return;
    nb::gil_scoped_acquire gil;
    delete keep;
  });
  return Tensor::from_storage(std::move(storage), -lowest, shape, strides, dtype);
}

void bind_tensor(nb::module_& m) {
  nb::class_<Tensor>(m, "Tensor", nb::type_slots(tensor_slots),
                     "A typed, strided view over reference-counted storage.")
      .def(
          "__init__",
          [](Tensor* self, const AnyArray& array) { new (self) Tensor(tensor_from_array(array)); },
          nb::arg("array"),
          "Wraps an array's memory (NumPy, DLPack, buffer protocol) without a copy.")
      .def_prop_ro("shape", [](const Tensor& t) { return to_tuple(t.shape()); })
      .def_prop_ro(
          "strides", [](const Tensor& t) { return to_tuple(t.strides()); },
          "Strides in elements (as in PyTorch, not bytes as in NumPy).")
      .def_prop_ro("dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype())); })
      .def_prop_ro("ndim", &Tensor::dim)
      .def_prop_ro("offset", &Tensor::offset)
      .def_prop_ro("itemsize", &Tensor::itemsize)
      .def_prop_ro("nbytes", &Tensor::nbytes)
      .def_prop_ro("device", [](const Tensor& t) { return to_string(t.device()); })
      .def_prop_ro("defined", &Tensor::defined)
      .def("dim", &Tensor::dim)
      .def("size", &Tensor::size, nb::arg("dim"))
      .def("stride", &Tensor::stride, nb::arg("dim"))
      .def("numel", &Tensor::numel)
      .def("is_contiguous", &Tensor::is_contiguous)
      .def("data_ptr",
           [](const Tensor& t) {
             check_defined(t, "Tensor.data_ptr");
             return reinterpret_cast<uintptr_t>(t.raw_data());
           })
      .def("__len__",
           [](const Tensor& t) {
             QKV_CHECK(t.dim() > 0, "len() of a 0-d tensor");
             return t.size(0);
           })
      // Views.
      .def("slice", &Tensor::slice, nb::arg("dim"), nb::arg("start"), nb::arg("end"),
           nb::arg("step") = 1)
      .def("narrow", &Tensor::narrow, nb::arg("dim"), nb::arg("start"), nb::arg("length"))
      .def("select", &Tensor::select, nb::arg("dim"), nb::arg("index"))
      .def("permute",
           [](const Tensor& t, nb::args dims) { return t.permute(shape_from_args(dims)); })
      .def("transpose", &Tensor::transpose, nb::arg("dim0"), nb::arg("dim1"))
      .def("unsqueeze", &Tensor::unsqueeze, nb::arg("dim"))
      .def("squeeze", &Tensor::squeeze, nb::arg("dim"))
      .def("expand",
           [](const Tensor& t, nb::args shape) { return t.expand(shape_from_args(shape)); })
      .def("view", [](const Tensor& t, nb::args shape) { return t.view(shape_from_args(shape)); })
      .def("reshape",
           [](const Tensor& t, nb::args shape) { return t.reshape(shape_from_args(shape)); })
      .def("__getitem__", &index)
      // Copies.
      .def("contiguous", &Tensor::contiguous)
      .def("clone", &Tensor::clone)
      .def(
          "to", [](const Tensor& t, const std::string& dtype) { return t.to(parse_dtype(dtype)); },
          nb::arg("dtype"))
      .def(
          "copy_",
          [](Tensor& t, const Tensor& src) -> Tensor& {
            t.copy_(src);
            return t;
          },
          nb::arg("src"), nb::rv_policy::reference_internal)
      .def("item", &Tensor::item)
      .def("tolist",
           [](const Tensor& t) {
             check_defined(t, "Tensor.tolist");
             const std::vector<double> values = t.to_values();
             size_t next = 0;
             return build_list(t, values, next, 0);
           })
      .def("__repr__", [](const Tensor& t) { return t.to_string(); })
      .def("to_string", &Tensor::to_string, nb::arg("max_per_dim") = 6)
      // Out to NumPy / DLPack, sharing memory.
      .def("numpy", &to_numpy, "A NumPy array over the tensor's memory (no copy).")
      .def(
          "__array__",
          [](const Tensor& t, nb::handle dtype, nb::handle copy) {
            nb::object out = nb::cast(to_numpy(t));
            if (!dtype.is_none()) out = out.attr("astype")(dtype, nb::arg("copy") = false);
            if (!copy.is_none() && nb::cast<bool>(copy)) out = out.attr("copy")();
            return out;
          },
          nb::arg("dtype") = nb::none(), nb::kw_only(), nb::arg("copy") = nb::none())
      .def("__dlpack__",
           [](const Tensor& t, nb::kwargs kwargs) {
             // nanobind's own ndarray speaks both DLPack versions; hand it the request.
             nb::object array = nb::cast(export_array<nb::array_api>(t));
             return array.attr("__dlpack__")(**kwargs);
           })
      .def("__dlpack_device__", [](const Tensor&) { return nb::make_tuple(1 /* kDLCPU */, 0); });

  nb::implicitly_convertible<AnyArray, Tensor>();

  m.def("from_numpy", &tensor_from_array, nb::arg("array"),
        "A Tensor over the memory of a NumPy array, a DLPack producer (torch.Tensor) or any "
        "buffer-protocol object, without a copy.");
  m.def("from_dlpack", &tensor_from_array, nb::arg("array"),
        "A Tensor over the memory of a DLPack producer, without a copy.");

  auto dtype_arg = nb::arg("dtype") = "f32";
  m.def(
      "empty",
      [](const Shape& s, const std::string& d) { return Tensor::empty(s, parse_dtype(d)); },
      nb::arg("shape"), dtype_arg);
  m.def(
      "zeros",
      [](const Shape& s, const std::string& d) { return Tensor::zeros(s, parse_dtype(d)); },
      nb::arg("shape"), dtype_arg);
  m.def(
      "ones", [](const Shape& s, const std::string& d) { return Tensor::ones(s, parse_dtype(d)); },
      nb::arg("shape"), dtype_arg);
  m.def(
      "full",
      [](const Shape& s, double v, const std::string& d) {
        return Tensor::full(s, v, parse_dtype(d));
      },
      nb::arg("shape"), nb::arg("value"), dtype_arg);
  m.def(
      "arange", [](int64_t n, const std::string& d) { return Tensor::arange(n, parse_dtype(d)); },
      nb::arg("n"), dtype_arg);
  m.def(
      "rand",
      [](const Shape& s, uint64_t seed, const std::string& d) {
        Generator gen(seed);
        return rand(s, gen, parse_dtype(d));
      },
      nb::arg("shape"), nb::arg("seed") = 0, dtype_arg);
  m.def(
      "randn",
      [](const Shape& s, uint64_t seed, const std::string& d) {
        Generator gen(seed);
        return randn(s, gen, parse_dtype(d));
      },
      nb::arg("shape"), nb::arg("seed") = 0, dtype_arg);
}

}  // namespace qkv::python
