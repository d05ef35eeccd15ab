#include "qkv/tensor.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>

#include "core/allocator.h"
#include "core/parallel.h"
#include "core/strided.h"

namespace qkv {

// ---- Storage --------------------------------------------------------------

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  QKV_CHECK(device.type == DeviceType::cpu, "Storage::allocate: device ", qkv::to_string(device),
            " is not available in this build");
  size_t capacity = 0;
  void* data = detail::allocate_block(nbytes, capacity);
  return std::shared_ptr<Storage>(
      new Storage(data, nbytes, [data, capacity] { detail::free_block(data, capacity); }, device));
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t nbytes, std::function<void()> release,
                                       Device device) {
  return std::shared_ptr<Storage>(new Storage(data, nbytes, std::move(release), device));
}

Storage::~Storage() {
  if (release_) release_();
}

// ---- shape helpers ----------------------------------------------------------

std::string to_string(Device device) {
  return device.type == DeviceType::cpu ? std::string("cpu")
                                        : detail::str("cuda:", device.index);
}

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    QKV_CHECK(s >= 0, "invalid shape ", shape_string(shape), ": negative size");
    QKV_CHECK(s == 0 || n <= std::numeric_limits<int64_t>::max() / s, "shape ",
              shape_string(shape), " has too many elements");
    n *= s;
  }
  return n;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  QKV_CHECK(dim >= -ndim && dim < ndim, op, ": dim ", dim, " is out of range for a tensor of rank ",
            ndim);
  return dim < 0 ? dim + ndim : dim;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t sa = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t sb = i < n - b.size() ? 1 : b[i - (n - b.size())];
    QKV_CHECK(sa == sb || sa == 1 || sb == 1, op, ": shapes ", shape_string(a), " and ",
              shape_string(b), " cannot be broadcast together");
    out[i] = sa == 1 ? sb : sa;
  }
  return out;
}

// ---- element access ----------------------------------------------------------

namespace detail {

double load_as_double(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::bf16: return bf16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::f16: return f16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::i32: return static_cast<const int32_t*>(base)[i];
    case DType::i64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::boolean: return static_cast<const uint8_t*>(base)[i] != 0;
    case DType::f64: return static_cast<const double*>(base)[i];
  }
  return 0;
}

void store_from_double(void* base, DType dtype, int64_t i, double v) {
  switch (dtype) {
    case DType::f32: static_cast<float*>(base)[i] = static_cast<float>(v); return;
    case DType::bf16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16_bits(static_cast<float>(v));
      return;
    case DType::f16:
      static_cast<uint16_t*>(base)[i] = f32_to_f16_bits(static_cast<float>(v));
      return;
    case DType::i32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v); return;
    case DType::i64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v); return;
    case DType::boolean: static_cast<uint8_t*>(base)[i] = v != 0; return;
    case DType::f64: static_cast<double*>(base)[i] = v; return;
  }
}

}  // namespace detail

namespace {

// Contiguous f32 <-> bf16 runs (autocast's casts, both ways every step):
// branch-free loops the compiler vectorises, bit-identical to the element
// path below (f32_to_bf16_bits' RNE and quiet NaN), over the thread team when
// long. False for any other case.
bool convert_bf16_run(const char* src, DType src_type, char* dst, DType dst_type, int64_t n) {
  constexpr int64_t kGrain = int64_t{1} << 15;
  if (src_type == DType::f32 && dst_type == DType::bf16) {
    const auto* from = reinterpret_cast<const float*>(src);
    auto* to = reinterpret_cast<uint16_t*>(dst);
    detail::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const uint32_t u = std::bit_cast<uint32_t>(from[i]);
        const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        const uint32_t quiet = (u >> 16) | 0x0040u;
        to[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
      }
    });
    return true;
  }
  if (src_type == DType::bf16 && dst_type == DType::f32) {
    const auto* from = reinterpret_cast<const uint16_t*>(src);
    auto* to = reinterpret_cast<float*>(dst);
    detail::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        to[i] = std::bit_cast<float>(static_cast<uint32_t>(from[i]) << 16);
    });
    return true;
  }
  return false;
}

// Converts one run of `n` elements between dtypes. f32 <-> 16-bit floats go
// through f32 so rounding is exactly the RNE of dtype.h (never double-rounded).
void convert_run(const char* src, int64_t src_stride, DType src_type, char* dst,
                 int64_t dst_stride, DType dst_type, int64_t n) {
  if (src_stride == 1 && dst_stride == 1 && convert_bf16_run(src, src_type, dst, dst_type, n))
    return;
  const size_t src_size = dtype_size(src_type);
  const size_t dst_size = dtype_size(dst_type);
  if (src_type == dst_type) {
    if (src_stride == 1 && dst_stride == 1) {
      std::memcpy(dst, src, static_cast<size_t>(n) * src_size);
      return;
    }
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(dst + i * dst_stride * dst_size, src + i * src_stride * src_size, src_size);
    return;
  }
  // f64 goes through double (exact to f32 and f64); the 16-bit floats
  // through f32, so rounding is exactly dtype.h's RNE.
  const bool float_path = is_floating(src_type) && is_floating(dst_type) &&
                          src_type != DType::f64 && dst_type != DType::f64;
  for (int64_t i = 0; i < n; ++i) {
    const void* s = src + i * src_stride * static_cast<int64_t>(src_size);
    void* d = dst + i * dst_stride * static_cast<int64_t>(dst_size);
    if (float_path) {
      float value = src_type == DType::f32    ? *static_cast<const float*>(s)
                    : src_type == DType::bf16 ? bf16_bits_to_f32(*static_cast<const uint16_t*>(s))
                                              : f16_bits_to_f32(*static_cast<const uint16_t*>(s));
      if (dst_type == DType::f32)
        *static_cast<float*>(d) = value;
      else if (dst_type == DType::bf16)
        *static_cast<uint16_t*>(d) = f32_to_bf16_bits(value);
      else
        *static_cast<uint16_t*>(d) = f32_to_f16_bits(value);
    } else {
      detail::store_from_double(d, dst_type, 0, detail::load_as_double(s, src_type, 0));
    }
  }
}

void check_defined(const Tensor& t, const char* op) {
  QKV_CHECK(t.defined(), op, ": tensor is undefined");
}

}  // namespace

// ---- Tensor -------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  const int64_t n = shape_numel(shape);
  QKV_CHECK(static_cast<uint64_t>(n) <= std::numeric_limits<size_t>::max() / dtype_size(dtype),
            "Tensor::empty: shape ", shape_string(shape), " is too large");
  return from_storage(Storage::allocate(static_cast<size_t>(n) * dtype_size(dtype)), 0, shape,
                      contiguous_strides(shape), dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype) {
  Tensor t = empty(shape, dtype);
  char* data = static_cast<char*>(t.raw_data());
  const size_t size = t.itemsize();
  if (t.numel() > 0) detail::store_from_double(data, dtype, 0, value);
  for (int64_t i = 1; i < t.numel(); ++i) std::memcpy(data + i * size, data, size);
  return t;
}

Tensor Tensor::arange(int64_t n, DType dtype) {
  QKV_CHECK(n >= 0, "arange: n must be >= 0, got ", n);
  Tensor t = empty({n}, dtype);
  for (int64_t i = 0; i < n; ++i)
    detail::store_from_double(t.raw_data(), dtype, i, static_cast<double>(i));
  return t;
}

Tensor Tensor::from_values(std::span<const double> values, const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  QKV_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "from_values: ", values.size(),
            " values do not fill shape ", shape_string(shape), " (", t.numel(), " elements)");
  for (int64_t i = 0; i < t.numel(); ++i)
    detail::store_from_double(t.raw_data(), dtype, i, values[static_cast<size_t>(i)]);
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, int64_t offset, const Shape& shape,
                            const Shape& strides, DType dtype) {
  QKV_CHECK(storage != nullptr, "from_storage: storage is null");
  QKV_CHECK(shape.size() == strides.size(), "from_storage: shape ", shape_string(shape),
            " and strides ", shape_string(strides), " differ in rank");
  QKV_CHECK(offset >= 0, "from_storage: negative offset ", offset);
  const int64_t numel = shape_numel(shape);
  if (numel > 0) {
    // Every reachable element must lie inside the storage.
    int64_t lowest = offset, highest = offset;
    for (size_t i = 0; i < shape.size(); ++i) {
      const int64_t reach = (shape[i] - 1) * strides[i];
      (reach < 0 ? lowest : highest) += reach;
    }
    const int64_t capacity = static_cast<int64_t>(storage->nbytes() / dtype_size(dtype));
    QKV_CHECK(lowest >= 0 && highest < capacity, "from_storage: shape ", shape_string(shape),
              " with strides ", shape_string(strides), " and offset ", offset,
              " reaches outside a storage of ", capacity, " elements");
  }
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = offset;
  t.shape_ = shape;
  t.strides_ = strides;
  t.dtype_ = dtype;
  return t;
}

Device Tensor::device() const { return storage_ ? storage_->device() : Device{}; }

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim(), "Tensor::size")]; }

int64_t Tensor::stride(int64_t d) const { return strides_[wrap_dim(d, dim(), "Tensor::stride")]; }

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 1) continue;
    if (shape_[i] == 0) return true;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  check_defined(*this, "Tensor::raw_data");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(itemsize());
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  check_defined(*this, "slice");
  d = wrap_dim(d, dim(), "slice");
  QKV_CHECK(step >= 1, "slice: step must be >= 1, got ", step);
  const int64_t n = shape_[d];
  // Python slicing: negative indices count from the end, out-of-range clamps.
  auto clamp = [n](int64_t i) { return std::clamp<int64_t>(i < 0 ? i + n : i, 0, n); };
  start = clamp(start);
  end = std::max(clamp(end), start);
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = (end - start + step - 1) / step;
  t.strides_[d] *= step;
  return t;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  check_defined(*this, "narrow");
  d = wrap_dim(d, dim(), "narrow");
  QKV_CHECK(start >= 0 && length >= 0 && start + length <= shape_[d], "narrow: range [", start, ", ",
            start + length, ") is outside dim ", d, " of size ", shape_[d]);
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  check_defined(*this, "select");
  d = wrap_dim(d, dim(), "select");
  QKV_CHECK(index >= -shape_[d] && index < shape_[d], "select: index ", index,
            " is out of range for dim ", d, " of size ", shape_[d]);
  if (index < 0) index += shape_[d];
  Tensor t = *this;
  t.offset_ += index * strides_[d];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::permute(const Shape& dims) const {
  check_defined(*this, "permute");
  QKV_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: got ", dims.size(),
            " dims ", shape_string(dims), " for a tensor of rank ", dim());
  std::vector<bool> seen(dims.size(), false);
  Tensor t = *this;
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], dim(), "permute");
    QKV_CHECK(!seen[d], "permute: dim ", d, " repeats in ", shape_string(dims));
    seen[d] = true;
    t.shape_[i] = shape_[d];
    t.strides_[i] = strides_[d];
  }
  return t;
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  check_defined(*this, "transpose");
  dim0 = wrap_dim(dim0, dim(), "transpose");
  dim1 = wrap_dim(dim1, dim(), "transpose");
  Tensor t = *this;
  std::swap(t.shape_[dim0], t.shape_[dim1]);
  std::swap(t.strides_[dim0], t.strides_[dim1]);
  return t;
}

Tensor Tensor::unsqueeze(int64_t d) const {
  check_defined(*this, "unsqueeze");
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Tensor t = *this;
  const int64_t stride = d < dim() ? strides_[d] * shape_[d] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, stride);
  return t;
}

Tensor Tensor::squeeze(int64_t d) const {
  check_defined(*this, "squeeze");
  d = wrap_dim(d, dim(), "squeeze");
  if (shape_[d] != 1) return *this;  // as torch.squeeze(dim): a no-op on sizes != 1
  Tensor t = *this;
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::expand(const Shape& shape) const {
  check_defined(*this, "expand");
  QKV_CHECK(shape.size() >= shape_.size(), "expand: cannot expand ", shape_string(shape_), " to ",
            shape_string(shape), " (fewer dims)");
  const size_t lead = shape.size() - shape_.size();
  Tensor t = *this;
  t.shape_.assign(shape.size(), 0);
  t.strides_.assign(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      QKV_CHECK(shape[i] >= 0, "expand: size ", shape[i], " of new dim ", i, " is invalid");
      t.shape_[i] = shape[i];
      continue;
    }
    const int64_t old = shape_[i - lead];
    const int64_t want = shape[i] == -1 ? old : shape[i];
    QKV_CHECK(want == old || old == 1, "expand: cannot expand ", shape_string(shape_), " to ",
              shape_string(shape), " (dim ", i, ": ", old, " -> ", want, ")");
    t.shape_[i] = want;
    t.strides_[i] = want == old ? strides_[i - lead] : 0;
  }
  return t;
}

namespace {

// Resolves one -1 in `shape` so it holds `numel` elements.
Shape infer_shape(Shape shape, int64_t numel, const Shape& from, const char* op) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      QKV_CHECK(infer < 0, op, ": more than one -1 in ", shape_string(shape));
      infer = static_cast<int64_t>(i);
    } else {
      QKV_CHECK(shape[i] >= 0, op, ": invalid size ", shape[i], " in ", shape_string(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    QKV_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_string(shape),
              " is invalid for input of shape ", shape_string(from));
    shape[infer] = numel / known;
  }
  QKV_CHECK(shape_numel(shape) == numel, op, ": shape ", shape_string(shape),
            " is invalid for input of shape ", shape_string(from), " (", numel, " elements)");
  return shape;
}

// Strides that view (shape, strides) as `target` without a copy, if any exist
// (the rule of torch's computeStride: each run of merged dims must be contiguous
// within itself).
bool view_strides(const Shape& shape, const Shape& strides, const Shape& target, Shape& out) {
  out.assign(target.size(), 1);
  if (shape.empty()) return true;  // a scalar views as any all-ones shape
  if (shape_numel(shape) == 0) {
    out = contiguous_strides(target);
    return true;
  }
  int64_t view_d = static_cast<int64_t>(target.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || target[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= target[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  check_defined(*this, "view");
  const Shape target = infer_shape(shape, numel(), shape_, "view");
  Shape strides;
  QKV_CHECK(view_strides(shape_, strides_, target, strides), "view: a tensor of shape ",
            shape_string(shape_), " and strides ", shape_string(strides_),
            " cannot be viewed as ", shape_string(target), " without a copy (use reshape)");
  Tensor t = *this;
  t.shape_ = target;
  t.strides_ = strides;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  check_defined(*this, "reshape");
  const Shape target = infer_shape(shape, numel(), shape_, "reshape");
  Shape strides;
  if (view_strides(shape_, strides_, target, strides)) return view(target);
  return contiguous().view(target);
}

Tensor Tensor::contiguous() const {
  check_defined(*this, "contiguous");
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  check_defined(*this, "clone");
  Tensor out = empty(shape_, dtype_);
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  check_defined(*this, "to");
  if (dtype == dtype_) return *this;
  Tensor out = empty(shape_, dtype);
  out.copy_(*this);
  return out;
}

void Tensor::copy_(const Tensor& src) {
  check_defined(*this, "copy_");
  check_defined(src, "copy_");
  const Tensor from = src.expand(shape_);
  const char* src_base = static_cast<const char*>(from.raw_data());
  char* dst_base = static_cast<char*>(raw_data());
  const int64_t src_size = static_cast<int64_t>(from.itemsize());
  const int64_t dst_size = static_cast<int64_t>(itemsize());
  const Shape& src_strides = from.strides_;
  const int64_t src_inner = dim() ? src_strides.back() : 1;
  const int64_t dst_inner = dim() ? strides_.back() : 1;
  detail::for_each_run<2>(shape_, {&strides_, &src_strides},
                          [&](const std::array<int64_t, 2>& off, int64_t n) {
                            convert_run(src_base + off[1] * src_size, src_inner, from.dtype_,
                                        dst_base + off[0] * dst_size, dst_inner, dtype_, n);
                          });
}

double Tensor::item() const {
  check_defined(*this, "item");
  QKV_CHECK(numel() == 1, "item: tensor of shape ", shape_string(shape_), " has ", numel(),
            " elements, not 1");
  return detail::load_as_double(raw_data(), dtype_, 0);
}

double Tensor::at(const Shape& index) const {
  check_defined(*this, "at");
  QKV_CHECK(static_cast<int64_t>(index.size()) == dim(), "at: index ", shape_string(index),
            " has the wrong rank for shape ", shape_string(shape_));
  int64_t offset = 0;
  for (size_t i = 0; i < index.size(); ++i) {
    QKV_CHECK(index[i] >= 0 && index[i] < shape_[i], "at: index ", shape_string(index),
              " is out of range for shape ", shape_string(shape_));
    offset += index[i] * strides_[i];
  }
  return detail::load_as_double(raw_data(), dtype_, offset);
}

std::vector<double> Tensor::to_values() const {
  check_defined(*this, "to_values");
  std::vector<double> values;
  values.reserve(static_cast<size_t>(numel()));
  const void* base = raw_data();
  const int64_t inner_stride = dim() ? strides_.back() : 1;
  detail::for_each_run<1>(shape_, {&strides_}, [&](const std::array<int64_t, 1>& off, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
      values.push_back(detail::load_as_double(base, dtype_, off[0] + i * inner_stride));
  });
  return values;
}

}  // namespace qkv
