#include "planner/core/dtype.h"

#include <array>
#include <utility>

namespace ferry::core {
namespace {
constexpr std::array<std::pair<DType, std::string_view>, 8> kNames{{
    {DType::BF16, "BF16"},
    {DType::F16, "F16"},
    {DType::F32, "F32"},
    {DType::F8_E4M3, "F8_E4M3"},
    {DType::F8_E8M0, "F8_E8M0"},
    {DType::I8, "I8"},
    {DType::I32, "I32"},
    {DType::I64, "I64"},
}};
}  // namespace

std::string_view dtype_name(DType t) {
  for (const auto& [d, n] : kNames)
    if (d == t) return n;
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& [d, n] : kNames)
    if (n == name) return d;
  return std::nullopt;
}

int64_t dtype_size(DType t) {
  switch (t) {
    case DType::BF16:
    case DType::F16: return 2;
    case DType::F32:
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::F8_E4M3:
    case DType::F8_E8M0:
    case DType::I8: return 1;
  }
  return 0;
}

}  // namespace ferry::core
