#include "runtime/cpu/matvec.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <array>
#include <string>

#include "planner/error.h"
#include "runtime/dtype_codec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FERRY_MATVEC_X86 1
#endif

namespace ferry::runtime::cpu {

namespace {

constexpr int64_t kFp4Block = 32;    // MXFP4: one E8M0 scale per 32 elements of a row
constexpr int64_t kFp8Block = 128;   // FP8: one E8M0 scale per 128x128 tile
constexpr int64_t kChunkBytes = 64 << 10;  // weight bytes per TBB task: big enough to amortise scheduling

// Decode tables built once from dtype_codec, so every path agrees with the reference decoders bit for bit.
struct Tables {
  std::array<float, 16> e2m1{};
  std::array<float, 256> e4m3{};
  std::array<float, 256> e8m0{};
  Tables() {
    for (int i = 0; i < 16; ++i) e2m1[i] = e2m1_to_float(static_cast<uint8_t>(i));
    for (int i = 0; i < 256; ++i) e4m3[i] = e4m3_to_float(static_cast<uint8_t>(i));
    for (int i = 0; i < 256; ++i) e8m0[i] = e8m0_to_float(static_cast<uint8_t>(i));
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

void check_shape(int64_t rows, int64_t cols, const char* what) {
  FERRY_CHECK(rows >= 0 && cols >= 0, std::string(what) + ": negative shape " + std::to_string(rows) + "x" +
                                          std::to_string(cols));
}

// Runs row(r) for every row, in parallel once the weight is large enough for tasks to pay off.
template <class Row>
void for_each_row(int64_t rows, int64_t row_bytes, const Row& row) {
  if (rows * row_bytes <= kChunkBytes) {
    for (int64_t r = 0; r < rows; ++r) row(r);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(row_bytes, 1));
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows, grain), [&](const tbb::blocked_range<int64_t>& range) {
    for (int64_t r = range.begin(); r != range.end(); ++r) row(r);
  });
}

// ---- portable rows ----

float fp4_row_portable(const uint8_t* codes, const uint8_t* scales, int64_t cols, const float* x) {
  const Tables& t = tables();
  float total = 0.0f;
  for (int64_t b = 0; b < cols / kFp4Block; ++b) {
    const uint8_t* c = codes + b * kFp4Block / 2;
    const float* xb = x + b * kFp4Block;
    float s0 = 0.0f, s1 = 0.0f;  // two chains: the even and the odd elements
    for (int64_t k = 0; k < kFp4Block / 2; ++k) {
      s0 += t.e2m1[fp4_low(c[k])] * xb[2 * k];
      s1 += t.e2m1[fp4_high(c[k])] * xb[2 * k + 1];
    }
    total += (s0 + s1) * t.e8m0[scales[b]];
  }
  return total;
}

float fp8_row_portable(const uint8_t* w, const uint8_t* scales, int64_t cols, const float* x) {
  const Tables& t = tables();
  float total = 0.0f;
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kFp8Block, ++b) {
    const int64_t c1 = std::min(cols, c0 + kFp8Block);
    float s = 0.0f;
    for (int64_t c = c0; c < c1; ++c) s += t.e4m3[w[c]] * x[c];
    total += s * t.e8m0[scales[b]];
  }
  return total;
}

// ---- AVX2 rows ----

#ifdef FERRY_MATVEC_X86

__attribute__((target("avx2,fma"))) float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight FP4 codes (one little-endian 32-bit word, element j in bits 4j..4j+3) to floats: the E2M1 magnitude
// comes from an 8-entry table with vpermps (which reads only the low 3 bits of each index), the sign bit is
// moved to bit 31. One shuffle per 8 elements: fewer than byte-shuffle + widening conversions.
__attribute__((target("avx2,fma"))) inline __m256 fp4_decode8(uint32_t word, __m256 magnitudes) {
  const __m256i v = _mm256_set1_epi32(static_cast<int>(word));
  const __m256i index = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
  const __m256i sign = _mm256_and_si256(_mm256_sllv_epi32(v, _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0)),
                                        _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm256_xor_ps(_mm256_permutevar8x32_ps(magnitudes, index), _mm256_castsi256_ps(sign));
}

__attribute__((target("avx2,fma"))) float fp4_row_avx2(const uint8_t* codes, const uint8_t* scales, int64_t cols,
                                                       const float* x) {
  const Tables& t = tables();
  const __m256 magnitudes = _mm256_loadu_ps(t.e2m1.data());
  __m256 total = _mm256_setzero_ps();
  for (int64_t b = 0; b < cols / kFp4Block; ++b) {
    const uint8_t* c = codes + b * kFp4Block / 2;
    const float* xb = x + b * kFp4Block;
    uint32_t words[4];
    __builtin_memcpy(words, c, sizeof(words));
    // Two independent chains per block so the FMAs overlap.
    __m256 s0 = _mm256_mul_ps(fp4_decode8(words[0], magnitudes), _mm256_loadu_ps(xb));
    __m256 s1 = _mm256_mul_ps(fp4_decode8(words[1], magnitudes), _mm256_loadu_ps(xb + 8));
    s0 = _mm256_fmadd_ps(fp4_decode8(words[2], magnitudes), _mm256_loadu_ps(xb + 16), s0);
    s1 = _mm256_fmadd_ps(fp4_decode8(words[3], magnitudes), _mm256_loadu_ps(xb + 24), s1);
    total = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(t.e8m0[scales[b]]), total);
  }
  return hsum(total);
}

// Sixteen E4M3 bytes to F16 bit patterns: E4M3 is F16 with the exponent bias 7 instead of 15 and 3 mantissa
// bits instead of 10, so (sign << 15) | (magnitude << 7) is an F16 holding value * 2^-8, subnormals included.
// F16C then converts to float exactly; every result is a normal float, so no slow denormal arithmetic.
__attribute__((target("avx2,fma,f16c"))) inline void fp8_decode16(const uint8_t* p, __m256& lo, __m256& hi) {
  const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  // w << 8 puts the sign at bit 15; an arithmetic >> 1 copies it into bit 14, which the mask clears.
  const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w, 8), 1), _mm256_set1_epi16(
                                                                                         static_cast<short>(0xBF80)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

__attribute__((target("avx2,fma,f16c"))) float fp8_row_avx2(const uint8_t* w, const uint8_t* scales, int64_t cols,
                                                            const float* x) {
  const Tables& t = tables();
  float total = 0.0f;
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kFp8Block, ++b) {
    const int64_t c1 = std::min(cols, c0 + kFp8Block);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
      __m256 lo, hi;
      fp8_decode16(w + c, lo, hi);
      s0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + c), s0);
      s1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + c + 8), s1);
    }
    float tail = 0.0f;  // fewer than 16 columns left in the last block: exact values from the table
    for (; c < c1; ++c) tail += t.e4m3[w[c]] * x[c];
    const float block = hsum(_mm256_add_ps(s0, s1)) * 256.0f + tail;  // undo the 2^-8 of the F16 trick
    total += block * t.e8m0[scales[b]];
  }
  return total;
}

#endif  // FERRY_MATVEC_X86

using Fp4Row = float (*)(const uint8_t*, const uint8_t*, int64_t, const float*);
using Fp8Row = float (*)(const uint8_t*, const uint8_t*, int64_t, const float*);

struct Kernels {
  Fp4Row fp4 = fp4_row_portable;
  Fp8Row fp8 = fp8_row_portable;
  const char* isa = "portable";
};

const Kernels& kernels() {
  static const Kernels k = [] {
    Kernels k;
#ifdef FERRY_MATVEC_X86
    __builtin_cpu_init();  // we may run before the runtime's own CPU detection
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      k.fp4 = fp4_row_avx2;
      k.fp8 = fp8_row_avx2;
      k.isa = "avx2";
    }
#endif
    return k;
  }();
  return k;
}

void run_mxfp4(Fp4Row row_fn, const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols,
               const float* x, float* y) {
  check_shape(rows, cols, "matvec_mxfp4");
  FERRY_CHECK(cols % kFp4Block == 0,
              "matvec_mxfp4: cols must be a multiple of 32 (the MXFP4 block), got " + std::to_string(cols));
  const int64_t row_bytes = cols / 2, row_scales = cols / kFp4Block;
  for_each_row(rows, row_bytes, [&](int64_t r) {
    y[r] = row_fn(codes + r * row_bytes, scales + r * row_scales, cols, x);
  });
}

void run_fp8(Fp8Row row_fn, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
             float* y) {
  check_shape(rows, cols, "matvec_fp8");
  const int64_t scale_cols = (cols + kFp8Block - 1) / kFp8Block;
  for_each_row(rows, cols, [&](int64_t r) {
    y[r] = row_fn(w + r * cols, scales + (r / kFp8Block) * scale_cols, cols, x);
  });
}

}  // namespace

void matvec_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y) {
  run_mxfp4(kernels().fp4, codes, scales, rows, cols, x, y);
}

void matvec_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y) {
  run_fp8(kernels().fp8, w, scales, rows, cols, x, y);
}

const char* matvec_isa() { return kernels().isa; }

namespace detail {

void matvec_mxfp4_portable(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                           float* y) {
  run_mxfp4(fp4_row_portable, codes, scales, rows, cols, x, y);
}

void matvec_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                         float* y) {
  run_fp8(fp8_row_portable, w, scales, rows, cols, x, y);
}

}  // namespace detail

}  // namespace ferry::runtime::cpu
