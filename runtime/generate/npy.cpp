#include "runtime/generate/npy.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "planner/core/error.h"
#include "planner/core/file_io.h"

namespace ferry::runtime {

void write_npy_f32(const std::filesystem::path& file, const float* data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64 and ended by '\n'.
  const size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header.push_back('\n');
  core::write_file_atomically(file, [&](std::ostream& out) {
    const uint16_t len = static_cast<uint16_t>(header.size());
    out.write("\x93NUMPY\x01\x00", 8);
    const char len_bytes[2] = {static_cast<char>(len & 0xFF), static_cast<char>(len >> 8)};
    out.write(len_bytes, 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(rows * cols * sizeof(float)));
  });
}

std::vector<float> read_npy_f32(const std::filesystem::path& file, int64_t* rows, int64_t* cols) {
  std::ifstream in(file, std::ios::binary);
  FERRY_CHECK(in.good(), "cannot open {}", file.string());
  char magic[10];
  in.read(magic, 10);
  FERRY_CHECK(in.good() && std::memcmp(magic, "\x93NUMPY\x01\x00", 8) == 0, "{} is not a .npy v1 file", file.string());
  const size_t len = static_cast<unsigned char>(magic[8]) | (static_cast<unsigned char>(magic[9]) << 8);
  std::string header(len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(len));
  const size_t shape = header.find("'shape': (");
  FERRY_CHECK(header.find("'descr': '<f4'") != std::string::npos && shape != std::string::npos,
              "{}: not a float32 array", file.string());
  long long r = -1, c = -1;
  FERRY_CHECK(std::sscanf(header.c_str() + shape, "'shape': (%lld, %lld)", &r, &c) == 2 && r >= 0 && c >= 0,
              "{}: not a 2-D array", file.string());
  *rows = r;
  *cols = c;
  std::vector<float> v(static_cast<size_t>(*rows * *cols));
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  FERRY_CHECK(in.good(), "{} is truncated", file.string());
  return v;
}

}  // namespace ferry::runtime
