// Element types and the f32 <-> bf16 / f16 conversions.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

namespace qkv {

// f64 is for checking, not speed: gradcheck's finite differences and
// float64 references run the ops' scalar double path (see qkv/ops.h).
enum class DType : uint8_t { f32, bf16, f16, i32, i64, boolean, f64 };
inline constexpr int kNumDTypes = 7;

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "f32", "bf16", ...
bool is_floating(DType dtype);
DType dtype_from_name(const std::string& name);  // throws qkv::Error

// Storage types for the 16-bit floats: plain bit patterns, no arithmetic.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

// Round-to-nearest-even; NaN stays NaN (quiet, sign kept), infinities stay.
inline uint16_t f32_to_bf16_bits(float value) {
  uint32_t u = std::bit_cast<uint32_t>(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_bits_to_f32(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t f32_to_f16_bits(float value);  // IEEE binary16, RNE, subnormals kept
float f16_bits_to_f32(uint16_t bits);

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct dtype_of<bf16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct dtype_of<f16> {
  static constexpr DType value = DType::f16;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = DType::i64;
};
template <>
struct dtype_of<bool> {
  static constexpr DType value = DType::boolean;
};

}  // namespace qkv
