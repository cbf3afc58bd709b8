// The multi-token kernels (matmul_mxfp4, matmul_fp8) against the per-token matvec of the same code path, bit for
// bit: linear() promises that a token's output does not depend on the chunk it was in, so prefill with any
// ubatch and one-token decode agree exactly. Every path the CPU has, int8, int16 and int24, row counts that are not
// a multiple of the tile, token counts 1..9 and 64, rows that start at odd offsets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/kernels/cpu/matvec.h"
#include "runtime/kernels/cpu/vec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace ferry::runtime::cpu {
namespace {

const int64_t kTokenCounts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 64};

std::vector<uint8_t> random_bytes(std::mt19937& rng, size_t n, bool fp8) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<uint8_t> v(n);
  for (auto& b : v) {
    do b = static_cast<uint8_t>(byte(rng));
    while (fp8 && (b & 0x7F) == 0x7F);  // E4M3 NaN codes never occur in weights
  }
  return v;
}

std::vector<uint8_t> random_scales(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> k(-10, -2);
  std::vector<uint8_t> s(n);
  for (auto& v : s) v = core::e8m0_from_exponent(k(rng));
  return s;
}

// Activations of varied magnitude per 32-block, so that block exponents differ between tokens and blocks.
std::vector<float> random_tokens(std::mt19937& rng, int64_t n, int64_t cols) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::uniform_int_distribution<int> e(-6, 6);
  std::vector<float> x(size_t(n * cols));
  for (size_t b = 0; b < x.size(); b += 32) {
    const float scale = std::ldexp(1.0f, e(rng));
    for (size_t i = b; i < std::min(x.size(), b + 32); ++i) x[i] = d(rng) * scale;
  }
  return x;
}

// Bitwise equality of float arrays (NaN-safe, and -0 differs from +0).
::testing::AssertionResult same_bits(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i];
  return ::testing::AssertionSuccess();
}

struct Shape {
  int64_t rows, cols;
};
std::string name(Shape s, int64_t offset) {
  return std::to_string(s.rows) + "x" + std::to_string(s.cols) + " from row " + std::to_string(offset);
}

// Rows 1 .. 300 (not multiples of the tile, one large enough for the parallel row ranges; 7 and 10 leave the
// AVX2 Int8 kernel's 4-row blocks 3 and 2 rows), 1 .. 513 blocks
// (4096 columns: tiles of 2 (int24) and 3 (int16) tokens, which is what fits in L1). Rows longer than the AVX2
// Int8 kernel decodes at once (8 groups of 4 rows, 16 of 2, 32 of 1) carry its sums from one chunk to the next:
// 145 blocks (4 rows: chunks of 8 and 2 groups, the last one partial), 257 (2 rows: 16 and 1), 513 (1 row).
const Shape kMxfp4Shapes[] = {{1, 32},     {7, 96},   {10, 64},  {37, 160}, {13, 544},
                              {300, 2176}, {5, 4096}, {7, 4640}, {3, 8224}, {1, 16416}};

TEST(CpuMatmul, Mxfp4MatchesTheMatvecBitwiseOnEveryPath) {
  for (const Shape s : kMxfp4Shapes) {
    std::mt19937 rng(17 + static_cast<unsigned>(s.rows * 31 + s.cols));
    const int64_t offset = 3, all_rows = s.rows + 2 * offset;  // a view starting at an odd row
    const std::vector<uint8_t> codes = random_bytes(rng, size_t(all_rows * s.cols / 2), false);
    const std::vector<uint8_t> scales = random_scales(rng, size_t(all_rows * s.cols / 32));
    const uint8_t* c = codes.data() + offset * s.cols / 2;
    const uint8_t* sc = scales.data() + offset * s.cols / 32;
    const std::vector<float> x = random_tokens(rng, 64, s.cols);
    for (core::ActivationBits bits :
         {core::ActivationBits::Int8, core::ActivationBits::Int16, core::ActivationBits::Int24}) {
      std::vector<Mxfp4Activation> a(64);
      for (int64_t t = 0; t < 64; ++t) quantize_mxfp4_activation(x.data() + t * s.cols, s.cols, a[size_t(t)], bits);
      for (CpuIsa isa : mxfp4_isas()) {
        SCOPED_TRACE(name(s, offset) + " " + core::activation_bits_name(bits) + " " + isa_name(isa));
        std::vector<float> want(size_t(64 * s.rows));
        for (int64_t t = 0; t < 64; ++t)
          detail::matvec_mxfp4_on(isa, c, sc, s.rows, a[size_t(t)], want.data() + t * s.rows);
        for (int64_t n : kTokenCounts) {
          // Rows of y wider than the weight: the gaps must stay untouched.
          const int64_t stride = s.rows + 5;
          std::vector<float> y(size_t(n * stride), -7.0f);
          detail::matmul_mxfp4_on(isa, c, sc, s.rows, a.data(), n, y.data(), stride);
          for (int64_t t = 0; t < n; ++t) {
            ASSERT_TRUE(same_bits(y.data() + t * stride, want.data() + t * s.rows, s.rows))
                << "n " << n << " token " << t;
            for (int64_t r = s.rows; r < stride; ++r) ASSERT_EQ(y[size_t(t * stride + r)], -7.0f);
          }
        }
      }
    }
  }
}

// Columns that leave a partial 16-column step and a partial 128-column block; rows past one 128-row scale block,
// rows that are not a multiple of the AVX-512 path's 4-row tile, whole blocks only.
const Shape kFp8Shapes[] = {{1, 1}, {9, 77}, {37, 200}, {130, 129}, {300, 1000}, {19, 512}};

// Every path: its multi-token kernel against its matvec; and every vector path against the AVX2 one, whose
// order of float additions the AVX-512 path keeps.
TEST(CpuMatmul, Fp8MatchesTheMatvecBitwiseOnEveryPath) {
  const std::vector<CpuIsa> isas = fp8_isas();
  const bool have_avx2 = std::find(isas.begin(), isas.end(), CpuIsa::Avx2) != isas.end();
  for (const Shape s : kFp8Shapes) {
    std::mt19937 rng(29 + static_cast<unsigned>(s.rows * 7 + s.cols));
    const int64_t scale_cols = (s.cols + 127) / 128;
    const std::vector<uint8_t> w = random_bytes(rng, size_t((s.rows + 5) * s.cols), true);
    const std::vector<uint8_t> scales = random_scales(rng, size_t(((s.rows + 5 + 127) / 128) * scale_cols));
    const int64_t n_max = 64, x_stride = s.cols + 3;
    const std::vector<float> x = random_tokens(rng, n_max, x_stride);
    // Odd row offsets within the first scale block: the kernels take the scale rows as given.
    for (int64_t offset : {int64_t{0}, int64_t{5}}) {
      const uint8_t* wr = w.data() + offset * s.cols;
      auto matvecs = [&](CpuIsa isa) {
        std::vector<float> y(size_t(n_max * s.rows));
        for (int64_t t = 0; t < n_max; ++t)
          detail::matvec_fp8_on(isa, wr, scales.data(), s.rows, s.cols, x.data() + t * x_stride, y.data() + t * s.rows);
        return y;
      };
      const std::vector<float> avx2 = have_avx2 ? matvecs(CpuIsa::Avx2) : std::vector<float>{};
      for (const CpuIsa isa : isas) {
        SCOPED_TRACE(name(s, offset) + " " + isa_name(isa));
        const std::vector<float> want = matvecs(isa);
        if (isa != CpuIsa::Portable && have_avx2) {
          ASSERT_TRUE(same_bits(want.data(), avx2.data(), n_max * s.rows)) << "matvec vs avx2";
        }
        for (int64_t n : kTokenCounts) {
          std::vector<float> y(size_t(n * s.rows), NAN);
          detail::matmul_fp8_on(isa, wr, scales.data(), s.rows, s.cols, x.data(), n, x_stride, y.data(), s.rows);
          ASSERT_TRUE(same_bits(y.data(), want.data(), n * s.rows)) << "n " << n;
        }
      }
      // The dispatched entry points are one of the paths.
      std::vector<float> y(size_t(s.rows)), y_portable(y);
      matvec_fp8(wr, scales.data(), s.rows, s.cols, x.data(), y.data());
      detail::matvec_fp8_portable(wr, scales.data(), s.rows, s.cols, x.data(), y_portable.data());
      const CpuIsa dispatched =
          *std::find_if(isas.begin(), isas.end(), [](CpuIsa i) { return matvec_isa() == std::string(isa_name(i)); });
      const std::vector<float> chosen = matvecs(dispatched), portable = matvecs(CpuIsa::Portable);
      EXPECT_TRUE(same_bits(y.data(), chosen.data(), s.rows));
      EXPECT_TRUE(same_bits(y_portable.data(), portable.data(), s.rows));
    }
  }
}

// The vector paths' order of float operations, one row at a time, written out with std::fma. Per 128-column
// block: lane j of s0 sums the columns c + j and lane j of s1 the columns c + 8 + j of each whole 16-column step,
// fusing value * 2^-8 times x; the block's sum is hsum's of s0 + s1, ((0+4) + (2+6)) + ((1+5) + (3+7)); its other
// columns fuse onto 0; then block = sum * 256 + those, total = block * scale + total, each fused.
std::vector<float> fp8_vector_order(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols,
                                    const float* x) {
  const int64_t scale_cols = (cols + 127) / 128;
  std::vector<float> y(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * cols;
    auto lane = [&](int64_t c, float s) { return std::fma(std::ldexp(core::e4m3_to_float(row[c]), -8), x[c], s); };
    float total = 0.0f;
    for (int64_t c0 = 0; c0 < cols; c0 += 128) {
      const int64_t c1 = std::min(cols, c0 + 128);
      float s0[8] = {}, s1[8] = {}, v[8];
      int64_t c = c0;
      for (; c + 16 <= c1; c += 16)
        for (int j = 0; j < 8; ++j) {
          s0[j] = lane(c + j, s0[j]);
          s1[j] = lane(c + 8 + j, s1[j]);
        }
      for (int j = 0; j < 8; ++j) v[j] = s0[j] + s1[j];
      const float sum = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
      float tail = 0.0f;
      for (; c < c1; ++c) tail = std::fma(core::e4m3_to_float(row[c]), x[c], tail);
      const float scale = core::e8m0_to_float(scales[(r / 128) * scale_cols + c0 / 128]);
      total = std::fma(std::fma(sum, 256.0f, tail), scale, total);
    }
    y[size_t(r)] = total;
  }
  return y;
}

// Every vector path against that order, bit for bit: row counts around the tiles (AVX-512: 4 rows; AVX2: 2 for
// two or three tokens) and past a 128-row scale block, one weight large enough for parallel row ranges, columns
// with partial steps and blocks and odd block counts (AVX2, one token: two blocks at a time), every code but
// E4M3's NaNs. Tokens of the magnitudes for which one token's AVX2 rows read the weight bytes as floats directly
// (|x| < 2^16, subnormal x too), and one with a larger x, for which they go through F16.
TEST(CpuMatmul, Fp8VectorPathsKeepTheOneRowOrder) {
  const Shape shapes[] = {{7, 200}, {6, 77}, {13, 1000}, {130, 129}, {9, 2048}, {5, 4096}, {262, 1000}};
  for (const Shape s : shapes) {
    std::mt19937 rng(31 + static_cast<unsigned>(s.rows * 5 + s.cols));
    const std::vector<uint8_t> w = random_bytes(rng, size_t(s.rows * s.cols), true);
    const std::vector<uint8_t> scales = random_scales(rng, size_t(((s.rows + 127) / 128) * ((s.cols + 127) / 128)));
    const int64_t n = 6;
    std::vector<float> x = random_tokens(rng, n, s.cols);
    x[size_t(s.cols + 3)] = 1e-40f;  // token 1: two subnormal x
    x[size_t(2 * s.cols - 1)] = -3e-42f;
    x[size_t(5 * s.cols + s.cols / 2)] = 70000.0f;  // token 5: past 2^16
    std::vector<float> want(size_t(n * s.rows));
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<float> yt = fp8_vector_order(w.data(), scales.data(), s.rows, s.cols, x.data() + t * s.cols);
      std::copy(yt.begin(), yt.end(), want.begin() + t * s.rows);
    }
    for (const CpuIsa isa : fp8_isas()) {
      if (isa == CpuIsa::Portable) continue;
      SCOPED_TRACE(name(s, 0) + " " + isa_name(isa));
      std::vector<float> y(want.size(), NAN);
      for (int64_t t = 0; t < n; ++t)
        detail::matvec_fp8_on(isa, w.data(), scales.data(), s.rows, s.cols, x.data() + t * s.cols,
                              y.data() + t * s.rows);
      ASSERT_TRUE(same_bits(y.data(), want.data(), n * s.rows)) << "matvec";
      for (int64_t m = 2; m <= n; ++m) {
        std::fill(y.begin(), y.end(), NAN);
        detail::matmul_fp8_on(isa, w.data(), scales.data(), s.rows, s.cols, x.data(), m, s.cols, y.data(), s.rows);
        ASSERT_TRUE(same_bits(y.data(), want.data(), m * s.rows)) << "matmul of " << m;
      }
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)
// With MXCSR's denormals-are-zero set on the calling thread, the AVX2 matvec must not read the subnormal E4M3
// codes as float subnormals (they would count as zero): its bits stay the order's.
TEST(CpuMatmul, Fp8Avx2MatvecIgnoresDenormalsAreZero) {
  const std::vector<CpuIsa> isas = fp8_isas();
  if (std::find(isas.begin(), isas.end(), CpuIsa::Avx2) == isas.end()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(3);
  const int64_t rows = 5, cols = 160;  // small enough to run on this thread
  std::vector<uint8_t> w = random_bytes(rng, size_t(rows * cols), true);
  for (auto& b : w) b &= 0x87;  // exponent 0: subnormal codes (and zeros)
  const std::vector<uint8_t> scales = random_scales(rng, 2);
  const std::vector<float> x = random_tokens(rng, 1, cols);
  const std::vector<float> want = fp8_vector_order(w.data(), scales.data(), rows, cols, x.data());
  std::vector<float> y(size_t(rows), NAN);
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | 0x40);
  detail::matvec_fp8_on(CpuIsa::Avx2, w.data(), scales.data(), rows, cols, x.data(), y.data());
  _mm_setcsr(csr);
  EXPECT_TRUE(same_bits(y.data(), want.data(), rows));
}
#endif

// Columns below one 8-column step, a partial step (the tail the dot fuses into lane 0), rows that are not a
// multiple of the 4-row tile, one weight large enough for parallel row ranges.
const Shape kBf16Shapes[] = {{1, 1}, {3, 7}, {5, 8}, {9, 77}, {37, 200}, {130, 1029}, {70, 4096}};

TEST(CpuMatmul, Bf16IsTheDotOfTheDecodedRowBitwise) {
  for (const Shape s : kBf16Shapes) {
    SCOPED_TRACE(name(s, 0));
    std::mt19937 rng(41 + static_cast<unsigned>(s.rows * 7 + s.cols));
    const int64_t n_max = 64, x_stride = s.cols + 3;
    const std::vector<float> wf = random_tokens(rng, s.rows, s.cols);
    std::vector<uint16_t> w(wf.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = core::float_to_bf16(wf[i]);
    const std::vector<float> x = random_tokens(rng, n_max, x_stride);
    std::vector<float> want(size_t(n_max * s.rows)), row(size_t(s.cols));
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t k = 0; k < s.cols; ++k) row[size_t(k)] = core::bf16_to_float(w[size_t(r * s.cols + k)]);
      for (int64_t t = 0; t < n_max; ++t)
        want[size_t(t * s.rows + r)] = dot(row.data(), x.data() + t * x_stride, s.cols);
    }
    for (int64_t n : kTokenCounts) {
      std::vector<float> y(size_t(n * s.rows), NAN), y_portable(y);
      matmul_bf16(w.data(), s.rows, s.cols, x.data(), n, x_stride, y.data(), s.rows);
      detail::matmul_bf16_portable(w.data(), s.rows, s.cols, x.data(), n, x_stride, y_portable.data(), s.rows);
      ASSERT_TRUE(same_bits(y.data(), want.data(), n * s.rows)) << "n " << n;
      ASSERT_TRUE(same_bits(y_portable.data(), want.data(), n * s.rows)) << "portable, n " << n;
    }
  }
}

// dots, which attention's scores use, against dot itself: lengths below, at and past 8-element steps, row counts
// around its 8- and 4-row tiles, a row stride longer than the rows.
TEST(CpuMatmul, DotsAreTheDotBitwise) {
  std::mt19937 rng(17);
  for (const int64_t n : {1, 7, 8, 77, 512, 515}) {
    const int64_t m_max = 21, stride = n + 5;
    const std::vector<float> a = random_tokens(rng, 1, n), b = random_tokens(rng, m_max, stride);
    for (int64_t m = 0; m <= m_max; ++m) {
      std::vector<float> got(size_t(m_max), NAN), want(size_t(m_max), NAN);
      dots(a.data(), b.data(), stride, m, n, got.data());
      for (int64_t i = 0; i < m; ++i) want[size_t(i)] = dot(a.data(), b.data() + i * stride, n);
      ASSERT_TRUE(same_bits(got.data(), want.data(), m_max)) << "n " << n << " m " << m;
    }
  }
}

// axpys, which attention's weighted sums use, against axpy row after row.
TEST(CpuMatmul, AxpysAreTheAxpysBitwise) {
  std::mt19937 rng(19);
  for (const int64_t n : {1, 7, 8, 64, 77, 512, 515}) {
    const int64_t m_max = 9, stride = n + 5;
    const std::vector<float> a = random_tokens(rng, 1, m_max), x = random_tokens(rng, m_max, stride);
    const std::vector<float> y0 = random_tokens(rng, 1, n);
    for (int64_t m = 0; m <= m_max; ++m) {
      std::vector<float> got(y0), want(y0);
      axpys(a.data(), x.data(), stride, m, got.data(), n);
      for (int64_t i = 0; i < m; ++i) axpy(a[size_t(i)], x.data() + i * stride, want.data(), n);
      ASSERT_TRUE(same_bits(got.data(), want.data(), n)) << "n " << n << " m " << m;
    }
  }
}

// indexer_scores over many keys (8 at a time where the dim allows) against one key per call (the one-key order):
// key counts around the 8-key blocks, head dims with and without a remainder, head weights of both signs, and
// dots that are NaN, -0 or negative (relu must map each as the one-key path does).
TEST(CpuMatmul, IndexerScoresOfManyKeysAreThoseOfOneKeyBitwise) {
  std::mt19937 rng(23);
  for (const int64_t dim : {8, 20, 128}) {
    for (const int64_t heads : {1, 5, 64}) {
      const int64_t m_max = 27;
      const std::vector<float> q = random_tokens(rng, heads, dim), w = random_tokens(rng, 1, heads);
      std::vector<float> keys = random_tokens(rng, m_max, dim);
      std::fill_n(keys.begin() + 3 * dim, dim, -0.0f);  // every dot of key 3 is +-0
      keys[size_t(9 * dim + 1)] = NAN;                  // key 9: NaN dots
      keys[size_t(12 * dim)] = INFINITY;                // key 12: +-inf dots
      for (int64_t m = 0; m <= m_max; ++m) {
        std::vector<float> got(size_t(m_max), 7.0f), want(size_t(m_max), 7.0f);
        indexer_scores(q.data(), w.data(), heads, dim, keys.data(), m, got.data());
        for (int64_t j = 0; j < m; ++j)
          indexer_scores(q.data(), w.data(), heads, dim, keys.data() + j * dim, 1, want.data() + j);
        ASSERT_TRUE(same_bits(got.data(), want.data(), m_max)) << "dim " << dim << " heads " << heads << " m " << m;
      }
    }
  }
}

// Through linear(): a chunk of n tokens gives each token the bits of a one-token call, for MXFP4 views at odd
// row offsets (int16 and int24) and FP8 views on 128-row boundaries, with weights large enough for several row
// blocks in parallel.
TEST(CpuMatmul, LinearChunkEqualsOneTokenCalls) {
  std::mt19937 rng(5);
  const int64_t rows = 4200, cols = 256;
  const std::vector<uint8_t> fp4 = random_bytes(rng, size_t(rows * cols / 2), false);
  const std::vector<uint8_t> fp4_scales = random_scales(rng, size_t(rows * cols / 32));
  const std::vector<uint8_t> fp8 = random_bytes(rng, size_t(rows * cols), true);
  const std::vector<uint8_t> fp8_scales = random_scales(rng, size_t(((rows + 127) / 128) * (cols / 128)));
  const core::WeightView w4{core::WeightFormat::MXFP4, fp4.data(), fp4_scales.data(), 0, rows, cols, rows};
  const core::WeightView w8{core::WeightFormat::FP8, fp8.data(), fp8_scales.data(), 0, rows, cols, rows};
  const int64_t n_max = 19;
  const std::vector<float> x = random_tokens(rng, n_max, cols);
  for (core::ActivationBits bits : {core::ActivationBits::Int16, core::ActivationBits::Int24}) {
    for (const core::WeightView& v :
         {w4.slice_rows(1, rows - 2), w4.slice_rows(131, 2999), w8.slice_rows(128, 4000), w8}) {
      SCOPED_TRACE(std::string(v.format == core::WeightFormat::FP8 ? "fp8" : "mxfp4") + " from row " +
                   std::to_string(v.row_begin) + " " + core::activation_bits_name(bits));
      std::vector<float> want(size_t(n_max * v.rows));
      for (int64_t t = 0; t < n_max; ++t)
        linear(v, x.data() + t * cols, 1, cols, want.data() + t * v.rows, v.rows, bits);
      for (int64_t n : {int64_t{2}, int64_t{7}, n_max}) {
        std::vector<float> y(size_t(n * v.rows), NAN);
        linear(v, x.data(), n, cols, y.data(), v.rows, bits);
        ASSERT_TRUE(same_bits(y.data(), want.data(), n * v.rows)) << "n " << n;
      }
    }
  }
}

TEST(CpuMatmul, NoTokensWritesNothing) {
  std::vector<uint8_t> codes(64), scales(4);
  std::vector<float> y(4, -1.0f);
  matmul_mxfp4(codes.data(), scales.data(), 4, nullptr, 0, y.data(), 4);
  matmul_fp8(codes.data(), scales.data(), 4, 16, nullptr, 0, 16, y.data(), 4);
  for (float v : y) EXPECT_EQ(v, -1.0f);
}

}  // namespace
}  // namespace ferry::runtime::cpu
