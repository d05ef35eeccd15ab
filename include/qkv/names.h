// One table of names per enum, read both ways: the spelling every message,
// config file, command-line flag and Python keyword uses for a value, and the
// value a name stands for (with an error that lists the names).
//
//   inline constexpr EnumNames<Reduction, 4> kReductionNames{{
//       {Reduction::none, "none"}, {Reduction::mean, "mean"}, ...}};
//   name_of(kReductionNames, Reduction::mean);                       // "mean"
//   from_name(kReductionNames, "sum", "kl_div: reduction");          // Reduction::sum
//   from_name(kReductionNames, "avg", "kl_div: reduction");
//     // qkv::Error "kl_div: reduction must be 'none', 'mean', 'sum' or 'batchmean', got 'avg'"
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "qkv/error.h"

namespace qkv {

template <class E>
struct Named {
  E value;
  std::string_view name;
};

template <class E, size_t N>
using EnumNames = std::array<Named<E>, N>;

// The name of `value` ("?" for a value the table does not list).
template <class E, size_t N>
constexpr std::string_view name_of(const EnumNames<E, N>& table, E value) {
  for (const Named<E>& entry : table)
    if (entry.value == value) return entry.name;
  return "?";
}

// "'a', 'b' or 'c'": the names as messages list them.
template <class E, size_t N>
std::string names_list(const EnumNames<E, N>& table) {
  std::string out;
  for (size_t i = 0; i < N; ++i) {
    if (i > 0) out += i + 1 == N ? " or " : ", ";
    out += '\'';
    out += table[i].name;
    out += '\'';
  }
  return out;
}

// The value named `name`, or nullopt.
template <class E, size_t N>
constexpr std::optional<E> value_named(const EnumNames<E, N>& table, std::string_view name) {
  for (const Named<E>& entry : table)
    if (entry.name == name) return entry.value;
  return std::nullopt;
}

// The value named `name`; qkv::Error "<what> must be <names_list>, got '<name>'".
template <class E, size_t N>
E from_name(const EnumNames<E, N>& table, std::string_view name, std::string_view what) {
  for (const Named<E>& entry : table)
    if (entry.name == name) return entry.value;
  throw Error(detail::str(what, " must be ", names_list(table), ", got '", name, "'"));
}

}  // namespace qkv
