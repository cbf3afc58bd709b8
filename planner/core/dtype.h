// Element types of DeepSeek checkpoints, named as safetensors names them.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace ferry::core {

enum class DType : uint8_t {
  BF16,
  F16,
  F32,
  F8_E4M3,  // FP8 weights (e4m3fn, max 448)
  F8_E8M0,  // power-of-two block scales, value 2^(e-127)
  I8,       // V4's packed FP4 E2M1 experts: two codes per byte, element 2k in the low nibble
  I32,
  I64,
};

std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
// Bytes per stored element (I8 holding two FP4 codes is one byte per stored element).
int64_t dtype_size(DType t);

}  // namespace ferry::core
