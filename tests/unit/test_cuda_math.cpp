// The per-element math of the CUDA kernels (runtime/kernels/cuda/*_math.h), compiled here by g++ and run on the
// CPU: every decoded code, every activation exponent and rounding, every normalised and rotated value must be
// bitwise what the CPU kernels and planner/core's codecs compute; the matrix-vector kernel's 32 lanes, run one
// after another, must read every value of a row with its own input and scale (within the op suite's CUDA
// tolerance of the float64 product) and read shared memory without bank conflicts. nvcc compiles the same
// functions into the kernels; what this cannot check is what only a device does: its double cos/sin (CUDA's,
// within 2 ulp of a double, where the CPU uses glibc's), its shuffles, barriers and launches (the op suite,
// tests/backend_ops, does on a GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/model_config.h"
#include "runtime/kernels/cpu/mxfp4_activation.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cuda/dtype_math.h"
#include "runtime/kernels/cuda/matvec_math.h"
#include "runtime/kernels/cuda/norm_rope_math.h"
#include "same_float.h"

namespace ferry::runtime::cuda {
namespace {

TEST(CudaMath, DecodesEveryBf16Code) {
  for (uint32_t c = 0; c < 65536; ++c)
    ASSERT_TRUE(same_float(bf16_to_float(static_cast<uint16_t>(c)), core::bf16_to_float(static_cast<uint16_t>(c))))
        << "code " << c;
}

TEST(CudaMath, DecodesEveryE4m3Code) {
  for (int c = 0; c < 256; ++c)
    EXPECT_TRUE(same_float(e4m3_to_float(static_cast<uint8_t>(c)), core::e4m3_to_float(static_cast<uint8_t>(c))))
        << "code " << c;
}

TEST(CudaMath, DecodesEveryE8m0Code) {
  for (int c = 0; c < 256; ++c)
    EXPECT_TRUE(same_float(e8m0_to_float(static_cast<uint8_t>(c)), core::e8m0_to_float(static_cast<uint8_t>(c))))
        << "code " << c;
}

TEST(CudaMath, DecodesEveryE2m1Code) {
  for (int c = 0; c < 16; ++c)
    EXPECT_TRUE(same_float(e2m1_to_float(static_cast<uint8_t>(c)), core::e2m1_to_float(static_cast<uint8_t>(c))))
        << "code " << c;
}

constexpr core::ActivationBits kAllBits[] = {core::ActivationBits::Int8, core::ActivationBits::Int16,
                                             core::ActivationBits::Int24};

// Block maxima over the whole float range, subnormals and the exact limits qmax·2^k included.
TEST(CudaMath, ActivationExponentIsTheCpusForEveryMagnitude) {
  std::mt19937_64 rng(21);
  std::uniform_int_distribution<uint32_t> finite(1, 0x7F7FFFFF);
  for (const auto bits : kAllBits) {
    const int b = static_cast<int>(bits);
    std::vector<float> amax = {0x1p-149f, 0x1p-140f, 3e-39f, 1.0f, 0x1.fffffep127f};
    for (int k = -140; k <= 100; k += 7) amax.push_back(std::ldexp(static_cast<float>(activation_qmax(b)), k));
    for (int i = 0; i < 100000; ++i) amax.push_back(std::bit_cast<float>(finite(rng)));
    for (float a : amax)
      ASSERT_EQ(activation_exponent(a, b), cpu::mxfp4_activation_exponent(a, bits)) << "amax " << a << ", " << b;
  }
}

// Rounded blocks against the CPU's rounding (its integers q and block exponents): random values at scales from
// tiny to huge, and exact ties.
TEST(CudaMath, ActivationRoundingIsTheCpus) {
  std::mt19937_64 rng(22);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_int_distribution<int> scale(-130, 120);
  constexpr int64_t kCols = 32 * 64;
  std::vector<float> x(kCols);
  for (int64_t b = 0; b < kCols / 32; ++b) {
    const int s = scale(rng);
    for (int64_t i = 0; i < 32; ++i) x[size_t(b * 32 + i)] = std::ldexp(g(rng), s);
  }
  for (int i = 0; i < 32; ++i) x[size_t(i)] = static_cast<float>(i) + 0.5f;  // ties at int24 with amax 31.5
  for (const auto bits : kAllBits) {
    cpu::Mxfp4Activation a;
    cpu::detail::quantize_mxfp4_activation_portable(x.data(), kCols, a, bits);
    for (int64_t b = 0; b < kCols / 32; ++b) {
      float amax = 0;
      for (int64_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[size_t(b * 32 + i)]));
      const int k = activation_exponent(amax, static_cast<int>(bits));
      ASSERT_EQ(k - 1, a.exponent[size_t(b)]) << "block " << b;
      for (int64_t i = 0; i < 32; ++i) {
        const size_t at = size_t(b * 16 + i / 2);
        int32_t q = 0;
        for (int j = 0; j < a.parts; ++j) q = q * 256 + (i % 2 == 0 ? a.even[size_t(j)][at] : a.odd[size_t(j)][at]);
        ASSERT_TRUE(same_float(activation_round(x[size_t(b * 32 + i)], k), std::ldexp(static_cast<float>(q), k)))
            << "block " << b << " element " << i << " bits " << static_cast<int>(bits);
      }
    }
  }
}

// A row normalised with the header's functions, the sum of squares in the CPU's order.
std::vector<float> rms_row(const std::vector<float>& x, const float* w, double eps) {
  double ss = 0;
  for (float v : x) ss += square(v);
  const float r = rms_inverse(ss, static_cast<int64_t>(x.size()), eps);
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = rms_scale(x[i], r, w ? w[i] : 1.0f);
  return out;
}

TEST(CudaMath, RmsNormIsTheCpusBitForBit) {
  std::mt19937_64 rng(23);
  std::normal_distribution<float> g(0.0f, 3.0f);
  for (const int64_t dim : {7, 64, 512, 1024, 4096})
    for (const bool weighted : {false, true})
      for (const double eps : {1e-6, 1e-20}) {
        std::vector<float> x(static_cast<size_t>(dim)), w(static_cast<size_t>(dim));
        for (float& v : x) v = g(rng);
        for (float& v : w) v = g(rng);
        std::vector<float> want(static_cast<size_t>(dim));
        cpu::rms_norm(x.data(), weighted ? w.data() : nullptr, dim, eps, want.data());
        const std::vector<float> got = rms_row(x, weighted ? w.data() : nullptr, eps);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_TRUE(same_float(got[i], want[i])) << "dim " << dim << " element " << i;
      }
}

// V4-Flash's plain and YaRN frequencies, forwards and back, at positions up to V4's million.
TEST(CudaMath, RopeIsTheCpusBitForBit) {
  std::mt19937_64 rng(24);
  std::normal_distribution<float> g(0.0f, 2.0f);
  const core::ModelConfig c = core::preset_config("deepseek-v4-flash");
  for (const bool compressed : {false, true}) {
    const cpu::Rope rope(c, compressed);
    const std::vector<double>& f = rope.freqs();
    const auto count = static_cast<int64_t>(f.size());
    for (const int64_t pos : {int64_t{0}, int64_t{1}, int64_t{4097}, int64_t{1000003}, int64_t{1} << 20})
      for (const bool inverse : {false, true}) {
        std::vector<float> x(static_cast<size_t>(2 * count));
        for (float& v : x) v = g(rng);
        std::vector<float> want = x;
        cpu::rope_rotate(want.data(), f.data(), count, pos, inverse);
        for (int64_t i = 0; i < count; ++i) {
          float c0 = 0, s0 = 0;
          rope_cos_sin(f[size_t(i)], pos, inverse, c0, s0);
          rope_pair(x[size_t(2 * i)], x[size_t(2 * i + 1)], c0, s0);
        }
        for (size_t i = 0; i < x.size(); ++i)
          ASSERT_TRUE(same_float(x[i], want[i])) << "pos " << pos << " element " << i << (compressed ? " yarn" : "");
      }
  }
}

// ---- the matrix-vector kernel's lanes ----

// Every step j of every lane reads a float4 group of its chunk once, and the 8 lanes of each quarter-warp read
// float4s of 8 different bank groups at every step (no shared-memory bank conflicts).
TEST(CudaMath, MatvecLanesReadEachGroupOnceWithoutBankConflicts) {
  for (const int groups : {1, 2, 4, 8})
    for (int j = 0; j < groups; ++j)
      for (int quarter = 0; quarter < 4; ++quarter) {
        std::vector<int> banks;
        for (int lane = 8 * quarter; lane < 8 * quarter + 8; ++lane)
          banks.push_back((groups * lane + rotated_group(j, lane, groups)) % 8);
        std::sort(banks.begin(), banks.end());
        EXPECT_EQ(std::unique(banks.begin(), banks.end()), banks.end()) << groups << " groups, step " << j;
      }
  for (const int groups : {1, 2, 4, 8})
    for (int lane = 0; lane < 32; ++lane) {
      std::vector<int> seen;
      for (int j = 0; j < groups; ++j) seen.push_back(rotated_group(j, lane, groups));
      std::sort(seen.begin(), seen.end());
      for (int g = 0; g < groups; ++g) EXPECT_EQ(seen[size_t(g)], g) << groups << " groups, lane " << lane;
    }
}

// A random stored weight of `rows` rows and its values decoded by planner/core's codecs.
struct TestWeight {
  MatvecFormat format;
  int64_t rows, cols;
  std::vector<uint8_t> codes, scales;
  std::vector<double> values;  // [rows, cols]
};

TestWeight test_weight(MatvecFormat f, int64_t rows, int64_t cols, std::mt19937_64& rng) {
  TestWeight w{f, rows, cols, {}, {}, std::vector<double>(size_t(rows * cols))};
  std::uniform_int_distribution<int> byte(0, 255), scale(120, 130);
  std::normal_distribution<float> g(0.0f, 0.05f);
  auto at = [&](int64_t r, int64_t k) -> double& { return w.values[size_t(r * cols + k)]; };
  switch (f) {
    case MatvecFormat::F32:
      w.codes.resize(size_t(4 * rows * cols));
      for (int64_t i = 0; i < rows * cols; ++i) {
        const float v = g(rng);
        std::memcpy(&w.codes[size_t(4 * i)], &v, 4);
        w.values[size_t(i)] = v;
      }
      break;
    case MatvecFormat::BF16:
      for (int64_t i = 0; i < rows * cols; ++i) {
        const uint16_t b = core::float_to_bf16(g(rng));
        w.codes.push_back(static_cast<uint8_t>(b & 0xFF)), w.codes.push_back(static_cast<uint8_t>(b >> 8));
        w.values[size_t(i)] = core::bf16_to_float(b);
      }
      break;
    case MatvecFormat::FP8: {
      const int64_t scale_cols = (cols + 127) / 128;
      for (int64_t i = 0; i < ((rows + 127) / 128) * scale_cols; ++i) w.scales.push_back(uint8_t(scale(rng)));
      for (int64_t i = 0; i < rows * cols; ++i) {
        uint8_t c;
        do c = static_cast<uint8_t>(byte(rng));
        while ((c & 0x7F) == 0x7F);
        w.codes.push_back(c);
        const int64_t r = i / cols, k = i % cols;
        at(r, k) =
            double(core::e4m3_to_float(c)) * core::e8m0_to_float(w.scales[size_t(r / 128 * scale_cols + k / 128)]);
      }
      break;
    }
    case MatvecFormat::MXFP4:
      for (int64_t i = 0; i < rows * cols / 32; ++i) w.scales.push_back(uint8_t(scale(rng)));
      for (int64_t i = 0; i < rows * cols / 2; ++i) w.codes.push_back(static_cast<uint8_t>(byte(rng)));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols; ++k) {
          const uint8_t b = w.codes[size_t((r * cols + k) / 2)];
          at(r, k) = double(core::e2m1_to_float(k % 2 ? core::fp4_high(b) : core::fp4_low(b))) *
                     core::e8m0_to_float(w.scales[size_t(r * cols / 32 + k / 32)]);
        }
      break;
  }
  return w;
}

// The warp's result for one row: all 32 lanes as the kernel runs them, their sums added.
template <class F>
std::vector<float> warp_row(const TestWeight& w, int64_t row, const std::vector<float>& xs, int nt, bool chunks) {
  const WeightRows rows{w.codes.data(), w.scales.data(), w.cols};
  std::vector<float> y(size_t(nt), 0.0f);
  for (int lane = 0; lane < 32; ++lane) {
    float acc[4] = {};
    if (chunks)
      lane_row_chunks<F, 4>(rows, row, xs.data(), nt, lane, acc);
    else
      lane_row_values<F, 4>(rows, row, xs.data(), nt, lane, acc);
    for (int t = 0; t < nt; ++t) y[size_t(t)] += acc[t];
  }
  return y;
}

// Every format, both lane paths, three tokens of a tile of four, rows at and around FP8's 128-row scale
// blocks: each warp sum within 2e-6 of sum |w·x| (the op suite's CUDA dot tolerance) of the float64 product of
// the values planner/core's codecs decode; an MXFP4 input is rounded per block of 32 first, as the kernel
// stages it. A value decoded from the wrong bits, or a chunk matched with the wrong inputs, misses by far more.
TEST(CudaMath, MatvecWarpSumsAreTheDecodedProducts) {
  std::mt19937_64 rng(25);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int64_t rows = 260, cols = 4096;
  const int nt = 3;
  for (const MatvecFormat f : {MatvecFormat::F32, MatvecFormat::BF16, MatvecFormat::FP8, MatvecFormat::MXFP4}) {
    const TestWeight w = test_weight(f, rows, cols, rng);
    std::vector<float> xs(size_t(nt * cols));
    for (float& v : xs) v = g(rng);
    if (f == MatvecFormat::MXFP4)
      for (int64_t b = 0; b < nt * cols / 32; ++b) {
        float amax = 0;
        for (int64_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xs[size_t(b * 32 + i)]));
        const int k = activation_exponent(amax, 16);
        for (int64_t i = 0; i < 32; ++i) xs[size_t(b * 32 + i)] = activation_round(xs[size_t(b * 32 + i)], k);
      }
    for (const int64_t row : {int64_t{0}, int64_t{127}, int64_t{128}, int64_t{259}})
      for (const bool chunks : {true, false}) {
        std::vector<float> y;
        switch (f) {
          case MatvecFormat::F32: y = warp_row<F32Format>(w, row, xs, nt, chunks); break;
          case MatvecFormat::BF16: y = warp_row<Bf16Format>(w, row, xs, nt, chunks); break;
          case MatvecFormat::FP8: y = warp_row<Fp8Format>(w, row, xs, nt, chunks); break;
          case MatvecFormat::MXFP4: y = warp_row<Mxfp4Format>(w, row, xs, nt, chunks); break;
        }
        for (int t = 0; t < nt; ++t) {
          double want = 0, mag = 0;
          for (int64_t k = 0; k < cols; ++k) {
            const double p = w.values[size_t(row * cols + k)] * xs[size_t(t * cols + k)];
            want += p, mag += std::fabs(p);
          }
          EXPECT_NEAR(y[size_t(t)], want, 2e-6 * mag)
              << "format " << int(f) << " row " << row << " token " << t << (chunks ? " chunks" : " values");
        }
      }
  }
}

}  // namespace
}  // namespace ferry::runtime::cuda
