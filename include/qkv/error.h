// qkv::Error and the check macros used across the library.
//
// User-facing and I/O errors throw qkv::Error with the offending values in the
// message. QKV_CHECK is always on; QKV_DCHECK only in debug builds (hot loops).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace qkv {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

// Concatenates the streamable arguments into one message.
template <class... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

}  // namespace detail
}  // namespace qkv

// QKV_CHECK(cond, "op: argument ", name, " has ", value) throws qkv::Error.
#define QKV_CHECK(cond, ...)                                      \
  do {                                                            \
    if (!(cond)) [[unlikely]]                                     \
      throw ::qkv::Error(::qkv::detail::str(__VA_ARGS__));        \
  } while (0)

#ifdef NDEBUG
#define QKV_DCHECK(cond, ...) \
  do {                        \
  } while (0)
#else
#define QKV_DCHECK(cond, ...) QKV_CHECK(cond, __VA_ARGS__)
#endif
