#include "runtime/kernels/cpu/matvec.h"
#include "runtime/kernels/cpu/matvec_rows.h"

#include <algorithm>
#include <array>
#include <string>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FERRY_MATVEC_X86 1
#endif

namespace ferry::runtime::cpu {

namespace {

constexpr int64_t kFp8Block = 128;  // FP8: one E8M0 scale per 128x128 tile

// One weight row against a tile of T tokens x + t * x_stride: out[t] = row . x[t]. Each token's arithmetic is
// the same sequence whatever T is (T = 1 is the matvec), so its result does not depend on the tile; the tile
// only shares the decoding of the weight bytes among its tokens.
using Fp8Tile = void (*)(const uint8_t* w, const uint8_t* scales, int64_t cols, const float* x, int64_t x_stride,
                         float* out);
constexpr int kMaxTile = 4;

// ---- portable rows ----

template <int T>
void fp8_tile_portable(const uint8_t* w, const uint8_t* scales, int64_t cols, const float* x, int64_t x_stride,
                       float* out) {
  const core::Fp8DecodeTables& t = core::fp8_decode_tables();
  float total[T] = {};
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kFp8Block, ++b) {
    const int64_t c1 = std::min(cols, c0 + kFp8Block);
    float s[T] = {};
    for (int64_t c = c0; c < c1; ++c) {
      const float v = t.e4m3[w[c]];
      for (int k = 0; k < T; ++k) s[k] += v * x[k * x_stride + c];
    }
    for (int k = 0; k < T; ++k) total[k] += s[k] * t.e8m0[scales[b]];
  }
  for (int k = 0; k < T; ++k) out[k] = total[k];
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
  const __m256i h =
      _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w, 8), 1), _mm256_set1_epi16(static_cast<short>(0xBF80)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

constexpr int64_t kFp8PrefetchAhead = 2048;  // bytes

template <int T>
__attribute__((target("avx2,fma,f16c"))) void fp8_tile_avx2(const uint8_t* w, const uint8_t* scales, int64_t cols,
                                                            const float* x, int64_t x_stride, float* out) {
  const core::Fp8DecodeTables& t = core::fp8_decode_tables();
  float total[T] = {};
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kFp8Block, ++b) {
    const int64_t c1 = std::min(cols, c0 + kFp8Block);
    // Software prefetch ahead of the stream, into the next row too (rows are contiguous): the hardware
    // prefetchers stop at 4 KiB pages, and without this the kernel waits on DRAM latency (8 GB/s vs 12 in cache).
    _mm_prefetch(reinterpret_cast<const char*>(w + c0 + kFp8PrefetchAhead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w + c0 + kFp8PrefetchAhead + 64), _MM_HINT_T0);
    __m256 s0[T], s1[T];
    for (int k = 0; k < T; ++k) s0[k] = s1[k] = _mm256_setzero_ps();
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
      __m256 lo, hi;
      fp8_decode16(w + c, lo, hi);
#pragma GCC unroll 8
      for (int k = 0; k < T; ++k) {
        s0[k] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + k * x_stride + c), s0[k]);
        s1[k] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + k * x_stride + c + 8), s1[k]);
      }
    }
    for (int k = 0; k < T; ++k) {
      const float* xk = x + k * x_stride;
      float tail = 0.0f;  // fewer than 16 columns left in the last block: exact values from the table
      for (int64_t i = c; i < c1; ++i) tail += t.e4m3[w[i]] * xk[i];
      const float block = hsum(_mm256_add_ps(s0[k], s1[k])) * 256.0f + tail;  // undo the 2^-8 of the F16 trick
      total[k] += block * t.e8m0[scales[b]];
    }
  }
  for (int k = 0; k < T; ++k) out[k] = total[k];
}

#endif  // FERRY_MATVEC_X86

struct Kernels {
  Fp8Tile fp8[kMaxTile] = {fp8_tile_portable<1>, fp8_tile_portable<2>, fp8_tile_portable<3>, fp8_tile_portable<4>};
  const char* isa = "portable";
};

const Kernels& kernels() {
  static const Kernels k = [] {
    Kernels k;
#ifdef FERRY_MATVEC_X86
    __builtin_cpu_init();  // we may run before the runtime's own CPU detection
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      k = Kernels{{fp8_tile_avx2<1>, fp8_tile_avx2<2>, fp8_tile_avx2<3>, fp8_tile_avx2<4>}, "avx2"};
    }
#endif
    return k;
  }();
  return k;
}

// Each tile of up to kMaxTile tokens passes over a range of rows small enough to stay in cache, so the weight
// comes from RAM once for all n tokens and its bytes are decoded once per tile. n = 1 is the matvec.
void run_fp8(const Fp8Tile* tiles, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
             int64_t n, int64_t x_stride, float* y, int64_t y_stride) {
  detail::check_matvec_shape(rows, cols, "matvec_fp8");
  FERRY_CHECK(n >= 0, "matmul_fp8: negative token count");
  const int64_t scale_cols = (cols + kFp8Block - 1) / kFp8Block;
  detail::for_each_row_range(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t t0 = 0; t0 < n; t0 += kMaxTile) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxTile, n - t0));
      for (int64_t r = r0; r < r1; ++r) {
        float out[kMaxTile];
        tiles[nt - 1](w + r * cols, scales + (r / kFp8Block) * scale_cols, cols, x + t0 * x_stride, x_stride, out);
        for (int t = 0; t < nt; ++t) y[(t0 + t) * y_stride + r] = out[t];
      }
    }
  });
}

}  // namespace

void matvec_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y) {
  run_fp8(kernels().fp8, w, scales, rows, cols, x, 1, 0, y, 1);
}

void matmul_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, int64_t n,
                int64_t x_stride, float* y, int64_t y_stride) {
  run_fp8(kernels().fp8, w, scales, rows, cols, x, n, x_stride, y, y_stride);
}

const char* matvec_isa() { return kernels().isa; }

namespace detail {

void matvec_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                         float* y) {
  matmul_fp8_portable(w, scales, rows, cols, x, 1, 0, y, 1);
}

void matmul_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, int64_t n,
                         int64_t x_stride, float* y, int64_t y_stride) {
  run_fp8(Kernels{}.fp8, w, scales, rows, cols, x, n, x_stride, y, y_stride);
}

}  // namespace detail

}  // namespace ferry::runtime::cpu
