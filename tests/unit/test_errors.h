// The message of the ferry::Error a call throws ("" when it throws none), for tests of bad input.
#pragma once

#include <functional>
#include <string>

#include "planner/core/error.h"

namespace ferry_test {
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ferry::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace ferry_test
