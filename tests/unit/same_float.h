// Bitwise float comparison for the CUDA math tests (test_cuda_math*.cpp).
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>

namespace ferry::runtime::cuda {

// Equal bit patterns, or both NaN (the codecs' NaNs need not share a payload).
inline ::testing::AssertionResult same_float(float got, float want) {
  if (std::bit_cast<uint32_t>(got) == std::bit_cast<uint32_t>(want) || (std::isnan(got) && std::isnan(want)))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << " (0x" << std::hex << std::bit_cast<uint32_t>(got)
                                       << "), want " << want << " (0x" << std::bit_cast<uint32_t>(want) << ")";
}

}  // namespace ferry::runtime::cuda
