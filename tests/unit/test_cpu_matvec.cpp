// The CPU matvec kernels against a float64 reference that dequantizes element by element with dtype_codec,
// for every code path the CPU has (portable, AVX2, AVX-512).
#include "runtime/kernels/cpu/matvec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"

namespace ferry::runtime::cpu {
namespace {

struct Shape {
  int64_t rows, cols;
};

// Scales 2^-10..2^-2, the range real checkpoints use.
std::vector<uint8_t> random_scales(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> k(-10, -2);
  std::vector<uint8_t> s(n);
  for (auto& v : s) v = core::e8m0_from_exponent(k(rng));
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
  EXPECT_TRUE(isa == "avx512" || isa == "avx2" || isa == "portable") << isa;
  const auto fp8 = fp8_isas();
  ASSERT_FALSE(fp8.empty());
  EXPECT_EQ(fp8.front(), CpuIsa::Portable);
  EXPECT_EQ(isa, isa_name(fp8.back()));
  const auto have = mxfp4_isas();
  ASSERT_FALSE(have.empty());
  EXPECT_EQ(have.front(), CpuIsa::Portable);
  EXPECT_EQ(mxfp4_isa(), have.back());
}

struct Mxfp4Case {
  Shape s;
  std::vector<uint8_t> codes, scales;
  std::vector<float> x;
};

Mxfp4Case random_mxfp4(Shape s, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  Mxfp4Case c{s, std::vector<uint8_t>(size_t(s.rows * s.cols / 2)), {}, random_x(rng, s.cols)};
  for (auto& v : c.codes) v = static_cast<uint8_t>(byte(rng));
  c.scales = random_scales(rng, size_t(s.rows * s.cols / 32));
  return c;
}

double weight_at(const Mxfp4Case& c, int64_t r, int64_t k) {
  const uint8_t b = c.codes[size_t(r * c.s.cols / 2 + k / 2)];
  return double(core::e2m1_to_float(k % 2 == 0 ? core::fp4_low(b) : core::fp4_high(b))) *
         core::e8m0_to_float(c.scales[size_t(r * c.s.cols / 32 + k / 32)]);
}

// The activation as the kernels see it, recomputed here from the rounding's definition in double:
// per block, k = the smallest integer with amax <= qmax * 2^k, q = rne(x / 2^k).
std::vector<double> rounded_x(const std::vector<float>& x, core::ActivationBits bits) {
  const double qmax = activation_qmax(bits);
  std::vector<double> q(x.size(), 0.0);
  for (size_t b = 0; b < x.size() / 32; ++b) {
    double amax = 0;
    for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(double(x[b * 32 + i])));
    if (amax == 0) continue;
    int k = -200;
    while (amax > qmax * std::ldexp(1.0, k)) ++k;
    for (size_t i = 0; i < 32; ++i)
      q[b * 32 + i] = std::nearbyint(x[b * 32 + i] / std::ldexp(1.0, k)) * std::ldexp(1.0, k);
  }
  return q;
}

constexpr core::ActivationBits kAllBits[] = {core::ActivationBits::Int8, core::ActivationBits::Int16,
                                             core::ActivationBits::Int24};

std::vector<float> run_on(CpuIsa isa, const Mxfp4Case& c, core::ActivationBits bits) {
  Mxfp4Activation a;
  quantize_mxfp4_activation(c.x.data(), c.s.cols, a, bits);
  std::vector<float> y(size_t(c.s.rows), NAN);
  detail::matvec_mxfp4_on(isa, c.codes.data(), c.scales.data(), c.s.rows, a, y.data());
  return y;
}

// Shapes with 1, 2, 3, 5, 17, 64 and 128 blocks per row: every remainder of the 2- and 4-block steps and of
// the 8- and 16-block scale groups.
const Shape kMxfp4Shapes[] = {{2048, 4096}, {4096, 2048}, {37, 96}, {1, 32}, {9, 64}, {5, 160}, {3, 544}};

// Every path against float64 on the rounded activation: only float additions (and, for int24, the
// conversion of lane sums above 2^24) remain.
TEST(CpuMatvec, Mxfp4MatchesReferenceOnTheRoundedActivation) {
  for (const Shape s : kMxfp4Shapes) {
    SCOPED_TRACE(name(s));
    const Mxfp4Case c = random_mxfp4(s, 1234 + static_cast<unsigned>(s.rows + s.cols));
    for (core::ActivationBits bits : kAllBits) {
      SCOPED_TRACE(core::activation_bits_name(bits));
      const std::vector<double> q = rounded_x(c.x, bits);
      std::vector<double> ref(size_t(s.rows), 0.0);
      for (int64_t r = 0; r < s.rows; ++r)
        for (int64_t k = 0; k < s.cols; ++k) ref[size_t(r)] += weight_at(c, r, k) * q[size_t(k)];
      for (CpuIsa isa : mxfp4_isas()) {
        SCOPED_TRACE(isa_name(isa));
        EXPECT_LE(relative_error(run_on(isa, c, bits), ref), 2e-6);
      }
    }
  }
}

// The default (int24) against the unrounded activation: as close as float arithmetic, like the FP8 kernel.
TEST(CpuMatvec, Mxfp4DefaultIsAsExactAsFloat) {
  for (const Shape s : kMxfp4Shapes) {
    SCOPED_TRACE(name(s));
    const Mxfp4Case c = random_mxfp4(s, 77 + static_cast<unsigned>(s.rows + s.cols));
    std::vector<double> ref(size_t(s.rows), 0.0);
    for (int64_t r = 0; r < s.rows; ++r)
      for (int64_t k = 0; k < s.cols; ++k) ref[size_t(r)] += weight_at(c, r, k) * c.x[size_t(k)];
    std::vector<float> y(size_t(s.rows));
    matvec_mxfp4(c.codes.data(), c.scales.data(), s.rows, s.cols, c.x.data(), y.data(), core::ActivationBits::Int24);
    EXPECT_LE(relative_error(y, ref), 2e-6);
  }
}

// Against the unrounded activation the error is bounded by the rounding: at most half a step 2^(k-1) per
// element, so |y - y_exact| <= sum_k |W[r,k]| 2^(k_b - 1) (plus float noise). Typically (mean over rows, relative
// to sum |W x|): about 2^-20 for int16, 2^-12 for int8.
TEST(CpuMatvec, Mxfp4ActivationRoundingStaysWithinItsBound) {
  const Mxfp4Case c = random_mxfp4({512, 4096}, 99);
  for (const auto& [bits, mean_bound] :
       {std::pair{core::ActivationBits::Int16, 1e-5}, {core::ActivationBits::Int8, 1e-3}}) {
    SCOPED_TRACE(core::activation_bits_name(bits));
    const std::vector<double> q = rounded_x(c.x, bits);
    for (CpuIsa isa : mxfp4_isas()) {
      SCOPED_TRACE(isa_name(isa));
      const std::vector<float> y = run_on(isa, c, bits);
      double mean_rel = 0;
      for (int64_t r = 0; r < 512; ++r) {
        double exact = 0, bound = 0, mag = 0;
        for (int64_t k = 0; k < 4096; ++k) {
          const double w = weight_at(c, r, k);
          exact += w * c.x[size_t(k)];
          bound += std::fabs(w) * std::fabs(q[size_t(k)] - c.x[size_t(k)]);
          mag += std::fabs(w * c.x[size_t(k)]);
        }
        EXPECT_LE(std::fabs(y[size_t(r)] - exact), bound + 1e-6 * mag) << "row " << r;
        mean_rel += std::fabs(y[size_t(r)] - exact) / mag / 512;
      }
      EXPECT_LE(mean_rel, mean_bound);
      if (isa == mxfp4_isa())
        std::printf("%s: mean |y - exact| / sum |W x| = %.2e\n", core::activation_bits_name(bits), mean_rel);
    }
  }
}

// Every code decodes exactly: row i holds one nonzero code, x is all ones (q a power of two), so y[i] is the
// code's value times its scale with no rounding at all, on every path and precision.
TEST(CpuMatvec, Mxfp4DecodesEveryCodeExactly) {
  const int64_t rows = 16, cols = 64;
  std::vector<uint8_t> codes(rows * cols / 2, 0), scales(rows * cols / 32);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t k = (i * 7) % cols;
    codes[i * cols / 2 + k / 2] =
        k % 2 == 0 ? core::fp4_pack(static_cast<uint8_t>(i), 0) : core::fp4_pack(0, static_cast<uint8_t>(i));
    for (int64_t b = 0; b < cols / 32; ++b)
      scales[i * cols / 32 + b] = core::e8m0_from_exponent(static_cast<int>(i % 5) - 3);
  }
  const Mxfp4Case c{{rows, cols}, codes, scales, std::vector<float>(cols, 1.0f)};
  for (CpuIsa isa : mxfp4_isas()) {
    for (core::ActivationBits bits : kAllBits) {
      const std::vector<float> y = run_on(isa, c, bits);
      for (int64_t i = 0; i < rows; ++i) {
        const float want = core::e2m1_to_float(static_cast<uint8_t>(i)) * std::ldexp(1.0f, static_cast<int>(i % 5) - 3);
        EXPECT_EQ(y[size_t(i)], want) << isa_name(isa) << " code " << i;
      }
    }
  }
}

// A block of x holding inf or NaN must not come out finite (the integer path cannot carry a NaN by itself).
TEST(CpuMatvec, Mxfp4NonFiniteActivationGivesNonFiniteOutput) {
  Mxfp4Case c = random_mxfp4({4, 96}, 5);
  c.x[40] = NAN;
  for (CpuIsa isa : mxfp4_isas())
    for (float v : run_on(isa, c, core::ActivationBits::Int24)) EXPECT_FALSE(std::isfinite(v)) << isa_name(isa);
  c.x[40] = INFINITY;
  for (CpuIsa isa : mxfp4_isas())
    for (float v : run_on(isa, c, core::ActivationBits::Int16)) EXPECT_FALSE(std::isfinite(v)) << isa_name(isa);
}

TEST(CpuMatvec, Fp8MatchesReference) {
  for (const Shape s :
       {Shape{2048, 4096}, Shape{4096, 2048}, Shape{130, 200}, Shape{37, 77}, Shape{1, 1}, Shape{129, 129}}) {
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
        const double v = double(core::e4m3_to_float(w[r * s.cols + k])) *
                         core::e8m0_to_float(scales[(r / 128) * scale_cols + k / 128]);
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

TEST(CpuMatvec, Fp8DecodesEveryCodeExactly) {
  const int64_t rows = 256, cols = 48;  // 48 columns: the 16-wide vector loop, no tail
  std::vector<uint8_t> w(rows * cols, 0);
  for (int64_t i = 0; i < rows; ++i) w[i * cols + (i % cols)] = static_cast<uint8_t>(i);
  const std::vector<uint8_t> scales = {core::e8m0_from_exponent(-6), core::e8m0_from_exponent(3)};  // [2, 1]
  const std::vector<float> x(cols, 1.0f);
  std::vector<float> y(rows), y_portable(rows);
  matvec_fp8(w.data(), scales.data(), rows, cols, x.data(), y.data());
  detail::matvec_fp8_portable(w.data(), scales.data(), rows, cols, x.data(), y_portable.data());
  for (int64_t i = 0; i < rows; ++i) {
    if ((i & 0x7F) == 0x7F) continue;  // NaN codes
    const float want = core::e4m3_to_float(static_cast<uint8_t>(i)) * (i < 128 ? std::ldexp(1.0f, -6) : 8.0f);
    EXPECT_EQ(y[i], want) << "code " << i;
    EXPECT_EQ(y_portable[i], want) << "code " << i;
  }
}

TEST(CpuMatvec, Mxfp4RejectsColumnsOffTheBlock) {
  std::vector<uint8_t> codes(24), scales(1);
  std::vector<float> x(48), y(1);
  EXPECT_THROW(matvec_mxfp4(codes.data(), scales.data(), 1, 48, x.data(), y.data(), core::ActivationBits::Int24),
               ferry::Error);
  EXPECT_THROW(matvec_fp8(codes.data(), scales.data(), -1, 4, x.data(), y.data()), ferry::Error);
}

TEST(CpuMatvec, EmptyShapes) {
  std::vector<float> y(3, NAN);
  matvec_fp8(nullptr, nullptr, 3, 0, nullptr, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
  matvec_mxfp4(nullptr, nullptr, 0, 64, nullptr, nullptr, core::ActivationBits::Int24);
}

}  // namespace
}  // namespace ferry::runtime::cpu
