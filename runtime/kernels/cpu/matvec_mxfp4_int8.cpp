// MXFP4 matrix-vector and multi-token products on Int8 activations (mxfp4_activation.h).
//
// With one byte per activation value a byte dot product forms whole products, and a block's 32 products sum to
// |S_b| <= 32 * 127 * 12 < 2^16: exact in an int32 lane and in float. So the kernels regroup the weight codes
// (a dword transpose of each group of 16 blocks, matching the activation's `lanes` layout) until one int32 lane
// holds one whole block: 8 byte dot products give a group's 16 block sums, and one conversion and one FMA per
// group apply the scales, where the int24 kernels spend 24 dot products, shifts and 4 conversions.
//
// The arithmetic, per row and token: acc = 0 per lane; for each group g in order, acc = fma(float(S),
// xs * ws, acc) with xs = 2^(k_b - 1) (lane_scale) and ws = 2^(e_b - 127) (the weight's E8M0; 0 flushes to 0,
// 255 is inf); y = the sum of acc's lanes. Every term S_b * xs * ws is exact (powers of two), so the paths
// differ only in the order of the float additions: AVX-512 keeps 16 lanes, AVX2 8 (a group's two halves in
// turn). Each weight row is decoded once and applied to all n tokens, each token with its own accumulators, so
// a token's result is the same sequence of operations whatever n is. The decoded group stays in registers,
// except on AVX2 with several tokens, where up to 8 groups of four rows go to an L1 buffer (rows_avx2).
#include "runtime/kernels/cpu/matvec_mxfp4_int8.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "planner/core/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FERRY_INT8_X86 1
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace ferry::runtime::cpu::detail {

namespace {

constexpr int64_t kGroupBlocks = 16, kGroupCodes = 256;

// 2 e2m1(code) + 12 for the 16 E2M1 codes: 2 e2m1 is 0 1 2 3 4 6 8 12, then the negatives (the +12 makes it
// the unsigned byte the dot products need; lane_bias takes 12 * sum q back off).
alignas(16) constexpr uint8_t kOffset[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

// Bytes ahead of the group being decoded to prefetch into L2: rows are contiguous, so this runs into the
// next rows and keeps several DRAM requests in flight per thread.
constexpr int64_t kPrefetchAhead = 2048;

// Per token: the activation's Int8 layout as plain pointers.
struct Token {
  const int8_t* lanes;
  const int32_t* bias;
  const float* scale;
};

// A group's codes and scales, in place or (the row's last, partial group) copied into zeroed storage: zero
// codes and zero activations make the padding contribute nothing.
struct GroupSource {
  alignas(64) uint8_t codes[kGroupCodes];
  alignas(16) uint8_t scales[kGroupBlocks];
};
inline void group_source(const uint8_t*& codes, const uint8_t*& scales, int64_t nb, GroupSource& tail) {
  if (nb >= kGroupBlocks) return;
  std::memset(&tail, 0, sizeof tail);
  std::memcpy(tail.codes, codes, static_cast<size_t>(16 * nb));
  std::memcpy(tail.scales, scales, static_cast<size_t>(nb));
  codes = tail.codes;
  scales = tail.scales;
}

#ifdef FERRY_INT8_X86

#define FERRY_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// vpermt2d indices taking dword d (0/1 for k01, 2/3 for k23) of blocks kLaneBlock[0..7] from two registers
// holding blocks 0-3 and 4-7, into lanes 0-7 (d = 0 or 2) and 8-15 (d = 1 or 3).
struct Transpose {
  alignas(64) int32_t k01[16], k23[16];
};
constexpr Transpose make_transpose() {
  Transpose t{};
  for (int p = 0; p < 16; ++p) {
    const int b = kLaneBlock[p % 8], d = p / 8;
    const int at = b < 4 ? 4 * b + d : 16 + 4 * (b - 4) + d;
    t.k01[p] = at;
    t.k23[p] = at + 2;
  }
  return t;
}
constexpr Transpose kTranspose = make_transpose();
alignas(16) constexpr uint8_t kLaneBlockBytes[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};

// One group of 16 blocks of a row: w[0..3] the even elements, w[4..7] the odd ones, in the lane layout;
// ws[p] = 2^(e - 127) of the block at lane p.
FERRY_T512 inline void decode_group512(const uint8_t* codes, const uint8_t* scales, __m512i* w, __m512& ws) {
  const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kOffset)));
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i k01 = _mm512_load_si512(kTranspose.k01), k23 = _mm512_load_si512(kTranspose.k23);
  const __m512i c0 = _mm512_loadu_si512(codes), c1 = _mm512_loadu_si512(codes + 64);
  const __m512i c2 = _mm512_loadu_si512(codes + 128), c3 = _mm512_loadu_si512(codes + 192);
  const __m512i p01 = _mm512_permutex2var_epi32(c0, k01, c1), p23 = _mm512_permutex2var_epi32(c0, k23, c1);
  const __m512i q01 = _mm512_permutex2var_epi32(c2, k01, c3), q23 = _mm512_permutex2var_epi32(c2, k23, c3);
  const __m512i t[4] = {_mm512_shuffle_i64x2(p01, q01, 0x44), _mm512_shuffle_i64x2(p01, q01, 0xEE),
                        _mm512_shuffle_i64x2(p23, q23, 0x44), _mm512_shuffle_i64x2(p23, q23, 0xEE)};
  for (int v = 0; v < 4; ++v) {
    w[v] = _mm512_shuffle_epi8(table, _mm512_and_si512(t[v], nibble));
    w[4 + v] = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(t[v], 4), nibble));
  }
  const __m128i sb = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)),
                                      _mm_load_si128(reinterpret_cast<const __m128i*>(kLaneBlockBytes)));
  ws = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu8_epi32(sb), 23));
}

// R rows against n tokens; acc holds n * R * 16 floats.
template <int R>
FERRY_T512 void rows512(const uint8_t* codes, const uint8_t* scales, int64_t blocks, const Token* x, int64_t n,
                        float* acc, float* y, int64_t y_stride) {
  const int64_t row_bytes = blocks * 16, groups = (blocks + kGroupBlocks - 1) / kGroupBlocks;
  for (int64_t i = 0; i < n * R; ++i) _mm512_store_ps(acc + 16 * i, _mm512_setzero_ps());
  GroupSource tail[R];
  for (int64_t g = 0; g < groups; ++g) {
    __m512i w[R][8];
    __m512 ws[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* c = codes + r * row_bytes + kGroupCodes * g;
      const uint8_t* s = scales + r * blocks + kGroupBlocks * g;
      for (int64_t at = 0; at < kGroupCodes; at += 64)
        _mm_prefetch(reinterpret_cast<const char*>(c + kPrefetchAhead + at), _MM_HINT_T1);
      group_source(c, s, blocks - kGroupBlocks * g, tail[r]);
      decode_group512(c, s, w[r], ws[r]);
    }
    for (int64_t t = 0; t < n; ++t) {
      const __m512i bias = _mm512_load_si512(x[t].bias + 16 * g);
      const __m512 xs = _mm512_load_ps(x[t].scale + 16 * g);
      const int8_t* lanes = x[t].lanes + 512 * g;
      // Two chains of dot products per row, so that one token's latency does not serialise a group.
      __m512i sum[R][2];
      for (int r = 0; r < R; ++r) sum[r][0] = bias, sum[r][1] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) {
        const __m512i xv = _mm512_load_si512(lanes + 64 * v);
        for (int r = 0; r < R; ++r) sum[r][v % 2] = _mm512_dpbusd_epi32(sum[r][v % 2], w[r][v], xv);
      }
      for (int r = 0; r < R; ++r) {
        float* a = acc + 16 * (t * R + r);
        const __m512 s = _mm512_cvtepi32_ps(_mm512_add_epi32(sum[r][0], sum[r][1]));
        _mm512_store_ps(a, _mm512_fmadd_ps(s, _mm512_mul_ps(xs, ws[r]), _mm512_load_ps(a)));
      }
    }
  }
  for (int64_t t = 0; t < n; ++t)
    for (int r = 0; r < R; ++r) y[t * y_stride + r] = _mm512_reduce_add_ps(_mm512_load_ps(acc + 16 * (t * R + r)));
}

FERRY_T512 void run512(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t blocks, const Token* x,
                       int64_t n, float* acc, float* y, int64_t y_stride) {
  // Two rows share each token's loads in the multi-token case; one token alone runs a row at a time (measured
  // faster: two rows' decoded groups crowd the registers).
  int64_t r = 0;
  if (n > 1)
    for (; r + 2 <= rows; r += 2)
      rows512<2>(codes + r * blocks * 16, scales + r * blocks, blocks, x, n, acc, y + r, y_stride);
  for (; r < rows; ++r) rows512<1>(codes + r * blocks * 16, scales + r * blocks, blocks, x, n, acc, y + r, y_stride);
}

// Half h of a group (blocks 8h .. 8h+7) on 256-bit registers: the 4x4 dword transpose within each 128-bit
// lane yields the lane layout's block order directly.
#define DECODE_HALF256                                                                                               \
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kOffset)));      \
  const __m256i nibble = _mm256_set1_epi8(0x0F);                                                                     \
  const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));                                    \
  const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32));                               \
  const __m256i r2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 64));                               \
  const __m256i r3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 96));                               \
  const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);                              \
  const __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);                              \
  const __m256i t[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2), _mm256_unpacklo_epi64(t1, t3), \
                        _mm256_unpackhi_epi64(t1, t3)};                                                              \
  for (int v = 0; v < 4; ++v) {                                                                                      \
    w[v] = _mm256_shuffle_epi8(table, _mm256_and_si256(t[v], nibble));                                               \
    w[4 + v] = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(t[v], 4), nibble));                     \
  }                                                                                                                  \
  const __m128i sb = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales)),                     \
                                      _mm_load_si128(reinterpret_cast<const __m128i*>(kLaneBlockBytes)));            \
  ws = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(sb), 23));

// One row against n tokens on 256-bit registers; `DOT` forms the 8 block sums of a half group from the bias.
#define ROW256_BODY(DOT)                                                                                               \
  const int64_t groups = (blocks + kGroupBlocks - 1) / kGroupBlocks;                                                   \
  for (int64_t i = 0; i < n; ++i) _mm256_store_ps(acc + 8 * i, _mm256_setzero_ps());                                   \
  GroupSource tail;                                                                                                    \
  for (int64_t g = 0; g < groups; ++g) {                                                                               \
    const uint8_t* cg = codes + kGroupCodes * g;                                                                       \
    const uint8_t* sg = scales + kGroupBlocks * g;                                                                     \
    for (int64_t at = 0; at < kGroupCodes; at += 64)                                                                   \
      _mm_prefetch(reinterpret_cast<const char*>(cg + kPrefetchAhead + at), _MM_HINT_T1);                              \
    group_source(cg, sg, blocks - kGroupBlocks * g, tail);                                                             \
    for (int h = 0; h < 2; ++h) {                                                                                      \
      __m256i w[8];                                                                                                    \
      __m256 ws;                                                                                                       \
      decode_half(cg + 128 * h, sg + 8 * h, w, ws);                                                                    \
      const int64_t at = 16 * g + 8 * h;                                                                               \
      for (int64_t t = 0; t < n; ++t) {                                                                                \
        const int8_t* lanes = x[t].lanes + 512 * g + 32 * h;                                                           \
        const __m256i bias = _mm256_load_si256(reinterpret_cast<const __m256i*>(x[t].bias + at));                      \
        DOT;                                                                                                           \
        const __m256 xs = _mm256_load_ps(x[t].scale + at);                                                             \
        _mm256_store_ps(acc + 8 * t,                                                                                   \
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(xs, ws), _mm256_load_ps(acc + 8 * t))); \
      }                                                                                                                \
    }                                                                                                                  \
  }                                                                                                                    \
  for (int64_t t = 0; t < n; ++t) y[t * y_stride] = hsum(_mm256_load_ps(acc + 8 * t));

#define X256(v) _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes + 64 * (v)))

// AVX2: vpmaddubsw pairs, four of them summed in int16 (|sum| <= 4 * 2 * 24 * 127 < 2^15), folded by vpmaddwd.
#define DOT_AVX2                                                                                                    \
  const __m256i ones = _mm256_set1_epi16(1);                                                                        \
  __m256i e =                                                                                                       \
      _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(w[0], X256(0)), _mm256_maddubs_epi16(w[1], X256(1))),  \
                       _mm256_add_epi16(_mm256_maddubs_epi16(w[2], X256(2)), _mm256_maddubs_epi16(w[3], X256(3)))); \
  __m256i o =                                                                                                       \
      _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(w[4], X256(4)), _mm256_maddubs_epi16(w[5], X256(5))),  \
                       _mm256_add_epi16(_mm256_maddubs_epi16(w[6], X256(6)), _mm256_maddubs_epi16(w[7], X256(7)))); \
  const __m256i sum = _mm256_add_epi32(bias, _mm256_add_epi32(_mm256_madd_epi16(e, ones), _mm256_madd_epi16(o, ones)));

#define DOT_AVXVNNI                                                                          \
  __m256i s2[2] = {bias, _mm256_setzero_si256()};                                            \
  for (int v = 0; v < 8; ++v) s2[v % 2] = _mm256_dpbusd_avx_epi32(s2[v % 2], w[v], X256(v)); \
  const __m256i sum = _mm256_add_epi32(s2[0], s2[1]);

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"), always_inline)) inline void decode_half(const uint8_t* codes, const uint8_t* scales,
                                                                           __m256i* w, __m256& ws) {
  DECODE_HALF256
}

__attribute__((target("avx2,fma"))) void row_avx2(const uint8_t* codes, const uint8_t* scales, int64_t blocks,
                                                  const Token* x, int64_t n, float* acc, float* y, int64_t y_stride) {
  ROW256_BODY(DOT_AVX2)
}

// Groups of R rows decoded at once into rows_avx2's `dec` (L1): 16 KiB of decoded bytes; each row's groups
// kDecRowVecs vectors apart.
template <int R>
constexpr int64_t kDecGroups = (16 << 10) / (R * kGroupCodes * 2);
template <int R>
constexpr int64_t kDecRowVecs = kDecGroups<R> * 16;

// The 8 block sums of a half group of R rows against one token: w points at row 0's 8 decoded vectors, the
// next row's kDecRowVecs on. The even elements (v 0-3), then the odd ones, each four pairs summed in int16 as
// in DOT_AVX2.
template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void half_sums(const __m256i* w, const int8_t* lanes,
                                                                         const int32_t* bias, __m256i* sum) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(bias));
  for (int r = 0; r < R; ++r) sum[r] = b;
  for (int v0 = 0; v0 < 8; v0 += 4) {
    __m256i part[R];
    for (int v = v0; v < v0 + 4; ++v) {
      const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes + 64 * v));
      for (int r = 0; r < R; ++r) {
        const __m256i m = _mm256_maddubs_epi16(_mm256_load_si256(w + r * kDecRowVecs<R> + v), xv);
        part[r] = v == v0 ? m : _mm256_add_epi16(part[r], m);
      }
    }
    for (int r = 0; r < R; ++r) sum[r] = _mm256_add_epi32(sum[r], _mm256_madd_epi16(part[r], ones));
  }
}

// token_avx2's loop for 4 rows in assembly: loads bound it (Zen 3 takes two 256-bit loads a cycle), and the
// compiler's schedule spills partial sums to the stack, about 77 loads and stores per half group where this
// one has 46: the token's 8 activation vectors, the 32 weight vectors, its bias, its scale and the 4 rows' ws,
// each once (llvm-mca -mcpu=znver3: 38.6 cycles per half group compiled, 27.5 here). ymm0-3 the rows' block sums,
// ymm4-7 their int16 pairs, ymm8 the activation (then xs), ymm9 a weight (then xs * ws), ymm10 the bias, ymm11 int16
// ones. Operands: %[L] the lanes, %[W] row 0's decoded groups (rows %c[S] bytes apart), %[B] bias, %[X] scale, %[WS]
// row 0's ws (rows %c[WSS] bytes apart), all at the chunk's first group; %[i] 64 bytes per group.
#define MT_X(h, v) "vmovdqa " #h "*32+" #v "*64(%[L],%[i],8), %%ymm8\n"
#define MT_W(r, h, v) "vmovdqa " #r "*%c[S]+" #h "*256+" #v "*32(%[W],%[i],8), %%ymm9\n"
#define MT_M0(r, p, h, v) MT_W(r, h, v) "vpmaddubsw %%ymm8, %%ymm9, %%ymm" #p "\n"
#define MT_M1(r, p, h, v) MT_W(r, h, v) "vpmaddubsw %%ymm8, %%ymm9, %%ymm9\nvpaddw %%ymm9, %%ymm" #p ", %%ymm" #p "\n"
#define MT_V0(h, v) MT_X(h, v) MT_M0(0, 4, h, v) MT_M0(1, 5, h, v) MT_M0(2, 6, h, v) MT_M0(3, 7, h, v)
#define MT_V1(h, v) MT_X(h, v) MT_M1(0, 4, h, v) MT_M1(1, 5, h, v) MT_M1(2, 6, h, v) MT_M1(3, 7, h, v)
#define MT_PARITY(h, v0, v1, v2, v3) MT_V0(h, v0) MT_V1(h, v1) MT_V1(h, v2) MT_V1(h, v3)
#define MT_E(s, p) "vpmaddwd %%ymm11, %%ymm" #p ", %%ymm" #s "\nvpaddd %%ymm10, %%ymm" #s ", %%ymm" #s "\n"
#define MT_O(s, p) "vpmaddwd %%ymm11, %%ymm" #p ", %%ymm" #p "\nvpaddd %%ymm" #p ", %%ymm" #s ", %%ymm" #s "\n"
#define MT_F(r, h)                                                \
  "vcvtdq2ps %%ymm" #r ", %%ymm" #r "\nvmulps " #r "*%c[WSS]+" #h \
  "*32(%[WS],%[i]), %%ymm8, %%ymm9\n"                             \
  "vfmadd231ps %%ymm9, %%ymm" #r ", %[a" #r "]\n"
#define MT_HALF(h)                                                                                               \
  "vmovdqa " #h "*32(%[B],%[i]), %%ymm10\n" MT_PARITY(h, 0, 1, 2, 3) MT_E(0, 4) MT_E(1, 5) MT_E(2, 6) MT_E(3, 7) \
      MT_PARITY(h, 4, 5, 6, 7) MT_O(0, 4) MT_O(1, 5) MT_O(2, 6)                                                  \
          MT_O(3, 7) "vmovaps " #h "*32(%[X],%[i]), %%ymm8\n" MT_F(0, h) MT_F(1, h) MT_F(2, h) MT_F(3, h)

// Token x through `chunk` decoded groups (group g0 onwards) of R rows, the R accumulators in registers: from
// zero at g0 = 0, else from `acc`; to y (hsum) after the row's last group, else back to `acc`.
template <int R>
__attribute__((target("avx2,fma"))) void token_avx2(const __m256i* dec, const __m256* dws, int64_t g0, int64_t chunk,
                                                    bool last, const Token& x, float* acc, float* y) {
  constexpr int64_t kChunk = kDecGroups<R>;
  __m256 a[R];
  for (int r = 0; r < R; ++r) a[r] = g0 == 0 ? _mm256_setzero_ps() : _mm256_load_ps(acc + 8 * r);
  if constexpr (R == 4) {
    int64_t i = 0;
    __asm__(
        "vpcmpeqw %%ymm11, %%ymm11, %%ymm11\nvpsrlw $15, %%ymm11, %%ymm11\n"
        "1:\n" MT_HALF(0) MT_HALF(1) "add $64, %[i]\ncmp %[end], %[i]\njne 1b\n"
        : [a0] "+x"(a[0]), [a1] "+x"(a[1]), [a2] "+x"(a[2]), [a3] "+x"(a[3]), [i] "+r"(i)
        : [end] "r"(64 * chunk), [L] "r"(x.lanes + 512 * g0), [W] "r"(dec), [B] "r"(x.bias + 16 * g0),
          [X] "r"(x.scale + 16 * g0), [WS] "r"(dws), [S] "i"(32 * kDecRowVecs<R>), [WSS] "i"(64 * kChunk)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "memory",
          "cc");
  } else {
    for (int64_t j = 0; j < chunk; ++j)
      for (int h = 0; h < 2; ++h) {
        const int64_t at = 16 * (g0 + j) + 8 * h;
        __m256i sum[R];
        half_sums<R>(dec + (2 * j + h) * 8, x.lanes + 512 * (g0 + j) + 32 * h, x.bias + at, sum);
        const __m256 xs = _mm256_load_ps(x.scale + at);
        for (int r = 0; r < R; ++r)
          a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r]), _mm256_mul_ps(xs, dws[(r * kChunk + j) * 2 + h]), a[r]);
      }
  }
  for (int r = 0; r < R; ++r)
    if (last)
      y[r] = hsum(a[r]);
    else
      _mm256_store_ps(acc + 8 * r, a[r]);
}

// R rows against n tokens on AVX2 (no dot-product unit, 16 registers): up to kDecGroups groups of the R rows
// are decoded once into `dec` (L1), then each token runs through them with its R accumulators in registers,
// reading its activations as one stream (which the hardware prefetcher follows); the accumulators go to `acc`
// only between two such chunks of a long row. Per token, row and half group the operations and their order
// are row_avx2's, so the result is bitwise the same.
template <int R>
__attribute__((target("avx2,fma"))) void rows_avx2(const uint8_t* codes, const uint8_t* scales, int64_t blocks,
                                                   const Token* x, int64_t n, float* acc, float* y, int64_t y_stride) {
  constexpr int64_t kChunk = kDecGroups<R>;
  const int64_t row_bytes = blocks * 16, groups = (blocks + kGroupBlocks - 1) / kGroupBlocks;
  alignas(32) __m256i dec[R][kDecRowVecs<R>];
  __m256 dws[R][kChunk][2];
  GroupSource tail;
  for (int64_t g0 = 0; g0 < groups; g0 += kChunk) {
    const int64_t chunk = std::min(kChunk, groups - g0);
    for (int r = 0; r < R; ++r)
      for (int64_t j = 0; j < chunk; ++j) {
        const uint8_t* cg = codes + r * row_bytes + kGroupCodes * (g0 + j);
        const uint8_t* sg = scales + r * blocks + kGroupBlocks * (g0 + j);
        // The same groups of the next R rows: read from RAM while the tokens run.
        for (int64_t at = 0; at < kGroupCodes; at += 64)
          _mm_prefetch(reinterpret_cast<const char*>(cg + R * row_bytes + at), _MM_HINT_T1);
        group_source(cg, sg, blocks - kGroupBlocks * (g0 + j), tail);
        for (int h = 0; h < 2; ++h) decode_half(cg + 128 * h, sg + 8 * h, dec[r] + (2 * j + h) * 8, dws[r][j][h]);
      }
    for (int64_t t = 0; t < n; ++t)
      token_avx2<R>(dec[0], dws[0][0], g0, chunk, g0 + chunk == groups, x[t], acc + 8 * R * t, y + t * y_stride);
  }
}

__attribute__((target("avx2,fma,avxvnni"))) void row_avxvnni(const uint8_t* codes, const uint8_t* scales,
                                                             int64_t blocks, const Token* x, int64_t n, float* acc,
                                                             float* y, int64_t y_stride) {
  ROW256_BODY(DOT_AVXVNNI)
}

// Several tokens: rows in fours (then two, then one) share each token's loads (at 64 tokens on a Zen 3 EPYC,
// about 2x row_avx2's rate with the accumulators in memory, 2.7x with rows_avx2's chunks and assembly). One
// token runs row_avx2: nothing to share, and the buffer costs stores.
__attribute__((target("avx2,fma"))) void run_avx2(const uint8_t* codes, const uint8_t* scales, int64_t rows,
                                                  int64_t blocks, const Token* x, int64_t n, float* acc, float* y,
                                                  int64_t y_stride) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    rows_avx2<4>(codes + r * blocks * 16, scales + r * blocks, blocks, x, n, acc, y + r, y_stride);
  if (r + 2 <= rows) {
    rows_avx2<2>(codes + r * blocks * 16, scales + r * blocks, blocks, x, n, acc, y + r, y_stride);
    r += 2;
  }
  if (r < rows) rows_avx2<1>(codes + r * blocks * 16, scales + r * blocks, blocks, x, n, acc, y + r, y_stride);
}

#undef X256
#undef MT_X
#undef MT_W
#undef MT_M0
#undef MT_M1
#undef MT_V0
#undef MT_V1
#undef MT_PARITY
#undef MT_E
#undef MT_O
#undef MT_F
#undef MT_HALF
#undef DOT_AVX2
#undef DOT_AVXVNNI
#undef ROW256_BODY
#undef DECODE_HALF256

#endif  // FERRY_INT8_X86

}  // namespace

void mxfp4_int8_rows(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* x,
                     int64_t n, float* y, int64_t y_stride) {
#ifdef FERRY_INT8_X86
  const int64_t blocks = x[0].blocks;
  std::vector<Token> tokens(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    FERRY_CHECK(x[t].parts == 1 && !x[t].lanes.empty(), "matvec_mxfp4: an Int8 kernel got another precision");
    tokens[size_t(t)] = {x[t].lanes.data(), x[t].lane_bias.data(), x[t].lane_scale.data()};
  }
  CacheLineVector<float> acc(static_cast<size_t>(n * 2 * 16));  // n R 16 (AVX-512) or n R 8 (AVX2) floats
  switch (isa) {
    case CpuIsa::Avx512: run512(codes, scales, rows, blocks, tokens.data(), n, acc.data(), y, y_stride); return;
    case CpuIsa::Avx2:
      if (n > 1) {
        run_avx2(codes, scales, rows, blocks, tokens.data(), n, acc.data(), y, y_stride);
        return;
      }
      [[fallthrough]];
    case CpuIsa::AvxVnni:
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* c = codes + r * blocks * 16;
        const uint8_t* s = scales + r * blocks;
        if (isa == CpuIsa::Avx2)
          row_avx2(c, s, blocks, tokens.data(), n, acc.data(), y + r, y_stride);
        else
          row_avxvnni(c, s, blocks, tokens.data(), n, acc.data(), y + r, y_stride);
      }
      return;
    default: break;
  }
#endif
  (void)codes, (void)scales, (void)rows, (void)x, (void)n, (void)y, (void)y_stride;
  FERRY_THROW("matvec_mxfp4: no Int8 kernel for the {} path", isa_name(isa));
}

}  // namespace ferry::runtime::cpu::detail
