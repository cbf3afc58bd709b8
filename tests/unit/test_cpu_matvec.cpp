// The CPU matvec kernels against a float64 reference that dequantizes element by element with dtype_codec,
// for both the dispatched (AVX2 where the CPU has it) and the portable path.
#include "runtime/cpu/matvec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "planner/error.h"
#include "runtime/dtype_codec.h"

namespace ferry::runtime::cpu {
namespace {

struct Shape {
  int64_t rows, cols;
};

// Scales 2^-10..2^-2, the range real checkpoints use.
std::vector<uint8_t> random_scales(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> k(-10, -2);
  std::vector<uint8_t> s(n);
  for (auto& v : s) v = e8m0_from_exponent(k(rng));
  return s;
}

std::vector<float> random_x(std::mt19937& rng, int64_t n) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

double relative_error(const std::vector<float>& y, const std::vector<double>& ref) {
  double err = 0.0, mag = 0.0;
  for (size_t i = 0; i < y.size(); ++i) {
    err = std::max(err, std::fabs(y[i] - ref[i]));
    mag = std::max(mag, std::fabs(ref[i]));
  }
  return mag > 0.0 ? err / mag : err;
}

std::string name(const Shape& s) { return std::to_string(s.rows) + "x" + std::to_string(s.cols); }

TEST(CpuMatvec, IsaIsKnown) {
  const std::string isa = matvec_isa();
  EXPECT_TRUE(isa == "avx2" || isa == "portable") << isa;
}

TEST(CpuMatvec, Mxfp4MatchesReference) {
  for (const Shape s : {Shape{2048, 4096}, Shape{4096, 2048}, Shape{37, 96}, Shape{1, 32}, Shape{9, 64}}) {
    SCOPED_TRACE(name(s));
    std::mt19937 rng(1234 + static_cast<unsigned>(s.rows));
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<uint8_t> codes(s.rows * s.cols / 2);
    for (auto& c : codes) c = static_cast<uint8_t>(byte(rng));
    const std::vector<uint8_t> scales = random_scales(rng, s.rows * s.cols / 32);
    const std::vector<float> x = random_x(rng, s.cols);

    std::vector<double> ref(s.rows, 0.0);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t k = 0; k < s.cols; ++k) {
        const uint8_t byte_k = codes[r * s.cols / 2 + k / 2];
        const uint8_t code = k % 2 == 0 ? fp4_low(byte_k) : fp4_high(byte_k);
        const double w = double(e2m1_to_float(code)) * e8m0_to_float(scales[r * s.cols / 32 + k / 32]);
        ref[r] += w * x[k];
      }
    }
    std::vector<float> y(s.rows, NAN), y_portable(s.rows, NAN);
    matvec_mxfp4(codes.data(), scales.data(), s.rows, s.cols, x.data(), y.data());
    detail::matvec_mxfp4_portable(codes.data(), scales.data(), s.rows, s.cols, x.data(), y_portable.data());
    EXPECT_LE(relative_error(y, ref), 1e-5);
    EXPECT_LE(relative_error(y_portable, ref), 1e-5);
  }
}

TEST(CpuMatvec, Fp8MatchesReference) {
  for (const Shape s : {Shape{2048, 4096}, Shape{4096, 2048}, Shape{130, 200}, Shape{37, 77}, Shape{1, 1},
                        Shape{129, 129}}) {
    SCOPED_TRACE(name(s));
    std::mt19937 rng(4321 + static_cast<unsigned>(s.rows));
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<uint8_t> w(s.rows * s.cols);
    for (auto& c : w) {
      do c = static_cast<uint8_t>(byte(rng));
      while ((c & 0x7F) == 0x7F);  // NaN codes never occur in weights
    }
    const int64_t scale_rows = (s.rows + 127) / 128, scale_cols = (s.cols + 127) / 128;
    const std::vector<uint8_t> scales = random_scales(rng, scale_rows * scale_cols);
    const std::vector<float> x = random_x(rng, s.cols);

    std::vector<double> ref(s.rows, 0.0);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t k = 0; k < s.cols; ++k) {
        const double v = double(e4m3_to_float(w[r * s.cols + k])) * e8m0_to_float(scales[(r / 128) * scale_cols + k / 128]);
        ref[r] += v * x[k];
      }
    }
    std::vector<float> y(s.rows, NAN), y_portable(s.rows, NAN);
    matvec_fp8(w.data(), scales.data(), s.rows, s.cols, x.data(), y.data());
    detail::matvec_fp8_portable(w.data(), scales.data(), s.rows, s.cols, x.data(), y_portable.data());
    EXPECT_LE(relative_error(y, ref), 1e-5);
    EXPECT_LE(relative_error(y_portable, ref), 1e-5);
  }
}

// Every code decodes exactly: row i holds one nonzero code, x is all ones, so y[i] is the code's value times
// its scale with no rounding at all.
TEST(CpuMatvec, Mxfp4DecodesEveryCodeExactly) {
  const int64_t rows = 16, cols = 64;
  std::vector<uint8_t> codes(rows * cols / 2, 0), scales(rows * cols / 32);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t k = (i * 7) % cols;
    codes[i * cols / 2 + k / 2] = k % 2 == 0 ? fp4_pack(static_cast<uint8_t>(i), 0) : fp4_pack(0, static_cast<uint8_t>(i));
    for (int64_t b = 0; b < cols / 32; ++b) scales[i * cols / 32 + b] = e8m0_from_exponent(static_cast<int>(i % 5) - 3);
  }
  const std::vector<float> x(cols, 1.0f);
  std::vector<float> y(rows), y_portable(rows);
  matvec_mxfp4(codes.data(), scales.data(), rows, cols, x.data(), y.data());
  detail::matvec_mxfp4_portable(codes.data(), scales.data(), rows, cols, x.data(), y_portable.data());
  for (int64_t i = 0; i < rows; ++i) {
    const float want = e2m1_to_float(static_cast<uint8_t>(i)) * std::ldexp(1.0f, static_cast<int>(i % 5) - 3);
    EXPECT_EQ(y[i], want) << "code " << i;
    EXPECT_EQ(y_portable[i], want) << "code " << i;
  }
}

TEST(CpuMatvec, Fp8DecodesEveryCodeExactly) {
  const int64_t rows = 256, cols = 48;  // 48 columns: the 16-wide vector loop, no tail
  std::vector<uint8_t> w(rows * cols, 0);
  for (int64_t i = 0; i < rows; ++i) w[i * cols + (i % cols)] = static_cast<uint8_t>(i);
  const std::vector<uint8_t> scales = {e8m0_from_exponent(-6), e8m0_from_exponent(3)};  // [2, 1]
  const std::vector<float> x(cols, 1.0f);
  std::vector<float> y(rows), y_portable(rows);
  matvec_fp8(w.data(), scales.data(), rows, cols, x.data(), y.data());
  detail::matvec_fp8_portable(w.data(), scales.data(), rows, cols, x.data(), y_portable.data());
  for (int64_t i = 0; i < rows; ++i) {
    if ((i & 0x7F) == 0x7F) continue;  // NaN codes
    const float want = e4m3_to_float(static_cast<uint8_t>(i)) * (i < 128 ? std::ldexp(1.0f, -6) : 8.0f);
    EXPECT_EQ(y[i], want) << "code " << i;
    EXPECT_EQ(y_portable[i], want) << "code " << i;
  }
}

TEST(CpuMatvec, Mxfp4RejectsColumnsOffTheBlock) {
  std::vector<uint8_t> codes(24), scales(1);
  std::vector<float> x(48), y(1);
  EXPECT_THROW(matvec_mxfp4(codes.data(), scales.data(), 1, 48, x.data(), y.data()), ferry::Error);
  EXPECT_THROW(matvec_fp8(codes.data(), scales.data(), -1, 4, x.data(), y.data()), ferry::Error);
}

TEST(CpuMatvec, EmptyShapes) {
  std::vector<float> y(3, NAN);
  matvec_fp8(nullptr, nullptr, 3, 0, nullptr, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
  matvec_mxfp4(nullptr, nullptr, 0, 64, nullptr, nullptr);
}

}  // namespace
}  // namespace ferry::runtime::cpu
