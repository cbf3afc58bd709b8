#include "runtime/cpu/matvec.h"
#include "runtime/cpu/matvec_rows.h"

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

constexpr int64_t kFp8Block = 128;   // FP8: one E8M0 scale per 128x128 tile

// Decode tables built once from dtype_codec, so every path agrees with the reference decoders bit for bit.
struct Tables {
  std::array<float, 256> e4m3{};
  std::array<float, 256> e8m0{};
  Tables() {
    for (int i = 0; i < 256; ++i) e4m3[i] = e4m3_to_float(static_cast<uint8_t>(i));
    for (int i = 0; i < 256; ++i) e8m0[i] = e8m0_to_float(static_cast<uint8_t>(i));
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

// ---- portable rows ----

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

constexpr int64_t kFp8PrefetchAhead = 2048;  // bytes

__attribute__((target("avx2,fma,f16c"))) float fp8_row_avx2(const uint8_t* w, const uint8_t* scales, int64_t cols,
                                                            const float* x) {
  const Tables& t = tables();
  float total = 0.0f;
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kFp8Block, ++b) {
    const int64_t c1 = std::min(cols, c0 + kFp8Block);
    // Software prefetch ahead of the stream, into the next row too (rows are contiguous): the hardware
    // prefetchers stop at 4 KiB pages, and without this the kernel waits on DRAM latency (8 GB/s vs 12 in cache).
    _mm_prefetch(reinterpret_cast<const char*>(w + c0 + kFp8PrefetchAhead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w + c0 + kFp8PrefetchAhead + 64), _MM_HINT_T0);
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

using Fp8Row = float (*)(const uint8_t*, const uint8_t*, int64_t, const float*);

struct Kernels {
  Fp8Row fp8 = fp8_row_portable;
  const char* isa = "portable";
};

const Kernels& kernels() {
  static const Kernels k = [] {
    Kernels k;
#ifdef FERRY_MATVEC_X86
    __builtin_cpu_init();  // we may run before the runtime's own CPU detection
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      k.fp8 = fp8_row_avx2;
      k.isa = "avx2";
    }
#endif
    return k;
  }();
  return k;
}

void run_fp8(Fp8Row row_fn, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
             float* y) {
  detail::check_matvec_shape(rows, cols, "matvec_fp8");
  const int64_t scale_cols = (cols + kFp8Block - 1) / kFp8Block;
  detail::for_each_row(rows, cols, [&](int64_t r) {
    y[r] = row_fn(w + r * cols, scales + (r / kFp8Block) * scale_cols, cols, x);
  });
}

}  // namespace

void matvec_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y) {
  run_fp8(kernels().fp8, w, scales, rows, cols, x, y);
}

const char* matvec_isa() { return kernels().isa; }

namespace detail {

void matvec_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                         float* y) {
  run_fp8(fp8_row_portable, w, scales, rows, cols, x, y);
}

}  // namespace detail

}  // namespace ferry::runtime::cpu
