// BF16 weights (the compressors, the indexer's head weights): a fused kernel that streams the weight and gives
// every output the bits of cpu::dot over the decoded row, the result linear() has always had for BF16.
#include <algorithm>
#include <bit>
#include <vector>

#include "runtime/kernels/cpu/matvec.h"
#include "runtime/kernels/cpu/matvec_rows.h"
#include "runtime/kernels/cpu/vec.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FERRY_BF16_X86 1
#endif

namespace ferry::runtime::cpu {

namespace {

constexpr int kRows = 4;    // rows per tile: independent FMA chains, and one x load shared by them
constexpr int kTokens = 2;  // tokens per tile (prefill): one weight decode shared by them

void bf16_rows_portable(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, int64_t x_stride,
                        float* y, int64_t y_stride) {
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < cols; ++k) row[size_t(k)] = std::bit_cast<float>(uint32_t{w[r * cols + k]} << 16);
    for (int64_t t = 0; t < n; ++t) y[t * y_stride + r] = dot(row.data(), x + t * x_stride, cols);
  }
}

#ifdef FERRY_BF16_X86

// cpu::dot's x86-64-v3 order (vec.cpp), step for step: one 8-lane FMA accumulator
// over the whole 8-column steps, the remaining columns fused into lane 0, then the lanes added in order to 0.
// A tile keeps R·T such accumulators, so the arithmetic of each output is that sequence whatever R and T are.
__attribute__((target("avx2,fma"))) inline __m256 bf16_load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

constexpr int64_t kBf16PrefetchAhead = 1024;  // elements (2 KiB) ahead in each row: see matvec.cpp

// A tile of R weight rows (`w`, `cols` apart) against T tokens: y[t * y_stride + r] = row r . x[t].
template <int R, int T>
__attribute__((target("avx2,fma"))) void bf16_tile_avx2(const uint16_t* w, int64_t cols, const float* x,
                                                        int64_t x_stride, float* y, int64_t y_stride) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    if (c % 32 == 0)
      for (int r = 0; r < R; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(w + r * cols + c + kBf16PrefetchAhead), _MM_HINT_T0);
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + t * x_stride + c);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = bf16_load8(w + r * cols + c);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      alignas(32) float lane[8];
      _mm256_store_ps(lane, acc[r][t]);
      const float* xt = x + t * x_stride;
      for (int64_t i = c; i < cols; ++i) {
        const __m128 wi = _mm_set_ss(std::bit_cast<float>(uint32_t{w[r * cols + i]} << 16));
        lane[0] = _mm_cvtss_f32(_mm_fmadd_ss(wi, _mm_set_ss(xt[i]), _mm_set_ss(lane[0])));
      }
      float s = 0.0f;
      for (int k = 0; k < 8; ++k) s += lane[k];
      y[t * y_stride + r] = s;
    }
  }
}

// Rows [0, rows) in tiles: tokens outermost so that a tile of tokens stays in L1 while the rows stream past it.
template <int T>
void bf16_token_tile(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t x_stride, float* y,
                     int64_t y_stride) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) bf16_tile_avx2<kRows, T>(w + r * cols, cols, x, x_stride, y + r, y_stride);
  for (; r < rows; ++r) bf16_tile_avx2<1, T>(w + r * cols, cols, x, x_stride, y + r, y_stride);
}

void bf16_rows_avx2(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, int64_t x_stride,
                    float* y, int64_t y_stride) {
  int64_t t = 0;
  for (; t + kTokens <= n; t += kTokens)
    bf16_token_tile<kTokens>(w, rows, cols, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
  for (; t < n; ++t) bf16_token_tile<1>(w, rows, cols, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
}

#endif  // FERRY_BF16_X86

using Bf16Rows = void (*)(const uint16_t*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t);

// The fused kernel copies cpu::dot's x86-64-v3 order, so it runs exactly where dot takes that order.
Bf16Rows bf16_kernel() {
  static const Bf16Rows k = [] {
#ifdef FERRY_BF16_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v3")) return &bf16_rows_avx2;
#endif
    return &bf16_rows_portable;
  }();
  return k;
}

void run_bf16(Bf16Rows kernel, const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n,
              int64_t x_stride, float* y, int64_t y_stride) {
  detail::check_matvec_shape(rows, cols, "matmul_bf16");
  FERRY_CHECK(n >= 0, "matmul_bf16: negative token count");
  if (n == 0) return;
  detail::for_each_row_range(rows, cols * 2, [&](int64_t r0, int64_t r1) {
    kernel(w + r0 * cols, r1 - r0, cols, x, n, x_stride, y + r0, y_stride);
  });
}

}  // namespace

void matmul_bf16(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, int64_t x_stride, float* y,
                 int64_t y_stride) {
  run_bf16(bf16_kernel(), w, rows, cols, x, n, x_stride, y, y_stride);
}

namespace detail {

void matmul_bf16_portable(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, int64_t x_stride,
                          float* y, int64_t y_stride) {
  run_bf16(&bf16_rows_portable, w, rows, cols, x, n, x_stride, y, y_stride);
}

}  // namespace detail

}  // namespace ferry::runtime::cpu
