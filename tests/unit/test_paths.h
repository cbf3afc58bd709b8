// Where the tests find their committed data (tests/data), set by CMake.
#pragma once

#include <string>

namespace ferry_test {
inline std::string data_path(const std::string& rel) { return std::string(FERRY_TEST_DATA_DIR) + "/" + rel; }
}  // namespace ferry_test
