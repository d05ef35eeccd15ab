// Readable printing, in the spirit of torch's repr: values, then shape and dtype.
#include <cmath>
#include <cstdio>
#include <ostream>

#include "core/strided.h"
#include "qkv/tensor.h"

namespace qkv {
namespace {

std::string format_value(double v, DType dtype) {
  char buf[32];
  if (dtype == DType::boolean) return v != 0 ? "true" : "false";
  if (!is_floating(dtype)) {
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  } else if (std::isnan(v)) {
    return "nan";
  } else if (std::isinf(v)) {
    return v > 0 ? "inf" : "-inf";
  } else {
    std::snprintf(buf, sizeof buf, "%.4g", v);
  }
  return buf;
}

// Prints dim `d` of t starting at `offset`, eliding the middle of long dims.
void print_dim(std::string& out, const Tensor& t, const void* base, int64_t d, int64_t offset,
               int64_t max_per_dim, int indent) {
  const int64_t n = t.size(d);
  const int64_t head = n > max_per_dim ? max_per_dim / 2 : n;
  const int64_t tail_start = n > max_per_dim ? n - max_per_dim / 2 : n;
  out += '[';
  for (int64_t i = 0; i < n; ++i) {
    if (i == head && head < tail_start) {
      out += d + 1 == t.dim() ? "..., " : "...,\n" + std::string(indent + 1, ' ');
      i = tail_start - 1;
      continue;
    }
    const int64_t at = offset + i * t.stride(d);
    if (d + 1 == t.dim())
      out += format_value(detail::load_as_double(base, t.dtype(), at), t.dtype());
    else
      print_dim(out, t, base, d + 1, at, max_per_dim, indent + 1);
    if (i + 1 < n) out += d + 1 == t.dim() ? ", " : ",\n" + std::string(indent + 1, ' ');
  }
  out += ']';
}

}  // namespace

std::string Tensor::to_string(int64_t max_per_dim) const {
  if (!defined()) return "tensor(undefined)";
  std::string out = "tensor(";
  if (dim() == 0)
    out += format_value(item(), dtype_);
  else
    print_dim(out, *this, raw_data(), 0, 0, std::max<int64_t>(max_per_dim, 2), 7);
  out += ", shape=" + shape_string(shape_) + ", dtype=" + dtype_name(dtype_);
  if (device().type != DeviceType::cpu) out += ", device=" + qkv::to_string(device());
  return out + ")";
}

std::ostream& operator<<(std::ostream& out, const Tensor& t) { return out << t.to_string(); }

// ---- Generator ---------------------------------------------------------------

uint64_t Generator::next_u64() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double Generator::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1p-53; }

double Generator::normal() {
  // Box-Muller; 1 - u keeps the log argument in (0, 1].
  const double u1 = 1.0 - uniform();
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

Tensor rand(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) detail::store_from_double(t.raw_data(), dtype, i, gen.uniform());
  return t;
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) detail::store_from_double(t.raw_data(), dtype, i, gen.normal());
  return t;
}

}  // namespace qkv
