// Errors for every ferry library: one exception type and the check macros (DESIGN.md §6). Libraries throw;
// launch/ catches, prints one line and exits non-zero. A message is either one string or a fmt format string
// with its arguments (checked at compile time), built only when the check fails:
//   FERRY_CHECK(n > 0, "--ctx must be positive");
//   FERRY_CHECK(t < vocab, "token id {} is outside the vocabulary [0, {})", t, vocab);
// Vendor status codes are turned into these errors next to the vendor's headers (runtime/backend/cuda/cuda_util.h
// for CUDA), so that no interface header includes them.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace ferry {

// `what()` is the one-line message for the user; `where()` is file:line for debugging.
class Error : public std::runtime_error {
 public:
  Error(std::string message, std::string where = {})
      : std::runtime_error(std::move(message)), where_(std::move(where)) {}
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

namespace detail {
inline std::string source_location(const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line);
}
inline std::string error_message(std::string message) { return message; }
template <class A0, class... A>
std::string error_message(fmt::format_string<A0, A...> format, A0&& a0, A&&... a) {
  return fmt::format(format, std::forward<A0>(a0), std::forward<A>(a)...);
}
}  // namespace detail

}  // namespace ferry

#define FERRY_THROW(...)                                            \
  throw ::ferry::Error(::ferry::detail::error_message(__VA_ARGS__), \
                       ::ferry::detail::source_location(__FILE__, __LINE__))

// FERRY_CHECK(cond, message...): the message is only built when cond is false.
#define FERRY_CHECK(cond, ...)             \
  do {                                     \
    if (!(cond)) FERRY_THROW(__VA_ARGS__); \
  } while (0)
