// qkv::Tensor: a typed, strided view over reference-counted storage.
//
// Shapes and strides are in elements (as in PyTorch). Views (slice, select,
// permute, transpose, view, expand, ...) share storage and never copy;
// contiguous(), clone() and to() copy. Storage allocated by qkv is 64-byte
// aligned; storage wrapped around foreign memory (NumPy arrays, mmap'd
// safetensors files) keeps its owner alive and has the owner's alignment.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "qkv/dtype.h"
#include "qkv/error.h"

namespace qkv {

using Shape = std::vector<int64_t>;

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  bool operator==(const Device&) const = default;
};

std::string to_string(Device device);
std::string shape_string(const Shape& shape);  // "[2, 3, 4]"

inline constexpr size_t kStorageAlignment = 64;

class Storage {
 public:
  // Uninitialised, kStorageAlignment-aligned memory.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device = {});
  // Foreign memory; `release` runs when the last reference goes away.
  static std::shared_ptr<Storage> wrap(void* data, size_t nbytes, std::function<void()> release,
                                       Device device = {});

  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  Storage(void* data, size_t nbytes, std::function<void()> release, Device device)
      : data_(data), nbytes_(nbytes), release_(std::move(release)), device_(device) {}

  void* data_;
  size_t nbytes_;
  std::function<void()> release_;
  Device device_;
};

// Freed blocks of 1 MiB and more are kept (up to 1 GiB) and reused by the next
// allocation of the same size, so a training or inference step does not pay
// for fresh pages every time. These report and return that idle memory.
size_t cached_storage_bytes();
void release_cached_storage();

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  // Factories. Contiguous, on the CPU.
  static Tensor empty(const Shape& shape, DType dtype = DType::f32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32);
  static Tensor ones(const Shape& shape, DType dtype = DType::f32) { return full(shape, 1.0, dtype); }
  static Tensor arange(int64_t n, DType dtype = DType::f32);
  // Copies `values` (converted to `dtype`) into a new tensor of `shape`.
  static Tensor from_values(std::span<const double> values, const Shape& shape,
                            DType dtype = DType::f32);
  static Tensor from_values(std::initializer_list<double> values, const Shape& shape,
                            DType dtype = DType::f32) {
    return from_values(std::span<const double>(values.begin(), values.size()), shape, dtype);
  }
  // A view over existing storage; checks that every element lies inside it.
  static Tensor from_storage(std::shared_ptr<Storage> storage, int64_t offset, const Shape& shape,
                             const Shape& strides, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const;
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t numel() const;
  int64_t offset() const { return offset_; }
  size_t itemsize() const { return dtype_size(dtype_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * itemsize(); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  bool is_contiguous() const;

  void* raw_data() const;
  template <class T>
  T* data() const {
    QKV_CHECK(defined(), "Tensor::data: tensor is undefined");
    QKV_CHECK(dtype_of<T>::value == dtype_, "Tensor::data: tensor has dtype ", dtype_name(dtype_),
              ", asked for ", dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw_data());
  }

  // Views (no copy). Negative dims and indices count from the end.
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor permute(const Shape& dims) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor expand(const Shape& shape) const;  // -1 keeps a size; new leading dims allowed
  Tensor view(const Shape& shape) const;    // throws when the strides do not allow it
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy

  // Copies.
  Tensor contiguous() const;  // returns *this when already contiguous
  Tensor clone() const;
  Tensor to(DType dtype) const;  // returns *this when already of `dtype`
  void copy_(const Tensor& src);  // same shape (or broadcastable), any dtypes

  // The value of a one-element tensor, as a double.
  double item() const;
  // The element at a multi-index, as a double (slow; for tests and printing).
  double at(const Shape& index) const;
  std::vector<double> to_values() const;  // row-major

  std::string to_string(int64_t max_per_dim = 6) const;

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::f32;
};

std::ostream& operator<<(std::ostream& out, const Tensor& t);

// Contiguous strides for `shape`.
Shape contiguous_strides(const Shape& shape);
int64_t shape_numel(const Shape& shape);
// Wraps a possibly negative dim into [0, ndim); `op` names the caller in errors.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);
// The shape two shapes broadcast to, or qkv::Error naming `op`.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// A seeded generator for initialisation, dropout and tests (deterministic per seed).
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : state_(seed) {}
  uint64_t next_u64();         // splitmix64
  double uniform();            // [0, 1)
  double normal();             // standard normal (Box-Muller)
  uint64_t seed_state() const { return state_; }

 private:
  uint64_t state_;
};

Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::f32);   // U[0, 1)
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::f32);  // N(0, 1)

}  // namespace qkv
