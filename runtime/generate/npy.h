// NumPy .npy files (format version 1.0): the logits files of `ferry run --logits-out`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace ferry::runtime {

// Writes a C-order float32 array of shape [rows, cols], atomically (a temporary file renamed into place).
void write_npy_f32(const std::filesystem::path& file, const float* data, int64_t rows, int64_t cols);

// Reads a 2-D little-endian float32 .npy (for tests); throws ferry::Error on anything else.
std::vector<float> read_npy_f32(const std::filesystem::path& file, int64_t* rows, int64_t* cols);

}  // namespace ferry::runtime
