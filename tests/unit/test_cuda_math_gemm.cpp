// The tensor-core GEMM's per-element math (runtime/kernels/cuda/gemm_math.h), run on the CPU: the BF16 codes of
// every FP8 and FP4 value, the hi + lo split of the inputs and its error, the fragment maps against the PTX
// ISA's tables, shared memory read without bank conflicts, and whole launches simulated block by block — every
// thread's loads, decodes and stores, every warp's MMAs (emulated from the PTX ISA's layout, written out here
// independently of gemm_math.h's maps: fp32 sums of exact BF16 products) and flushes — against the CPU's
// linear op. What only a device shows (the MMA's own accumulation order, barriers, shuffles) the op suite
// checks on a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/weight_view.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/kernels/cuda/gemm_math.h"
#include "same_float.h"

namespace ferry::runtime::cuda {
namespace {

Chunk chunk_of_bytes(const uint8_t* b) {
  Chunk c;
  std::memcpy(&c, b, sizeof c);
  return c;
}

TEST(CudaMathGemm, Fp8AndFp4CodesAreExactInBf16) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;  // NaN
    uint8_t bytes[16] = {};
    bytes[5] = static_cast<uint8_t>(code);
    EXPECT_TRUE(same_float(bf16_to_float(GemmFp8::code(chunk_of_bytes(bytes), 5)),
                           core::e4m3_to_float(static_cast<uint8_t>(code))))
        << "e4m3 " << code;
  }
  for (int code = 0; code < 16; ++code)
    for (const int i : {6, 7}) {  // value 6: byte 3's low nibble, value 7: its high one
      uint8_t bytes[16] = {};
      bytes[3] = static_cast<uint8_t>(i == 6 ? code : code << 4);
      EXPECT_TRUE(same_float(bf16_to_float(GemmMxfp4::code(chunk_of_bytes(bytes), i)),
                             core::e2m1_to_float(static_cast<uint8_t>(code))))
          << "e2m1 " << code << " at " << i;
    }
  uint8_t bytes[16];
  for (int i = 0; i < 16; ++i) bytes[i] = static_cast<uint8_t>(17 * i + 3);
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(GemmBf16::code(chunk_of_bytes(bytes), i), bytes[2 * i] | bytes[2 * i + 1] << 8) << "bf16 " << i;
}

// |x − (hi + lo)| <= 2^-16·|x| over the normal range (each half rounds to 8 significant bits); inf and NaN stay
// in hi.
TEST(CudaMathGemm, HiLoSplitIsWithin2ToMinus16) {
  std::mt19937_64 rng(31);
  std::uniform_real_distribution<double> e(-100, 100);
  std::normal_distribution<double> m(0, 1);
  double worst = 0;
  for (int i = 0; i < 1000000; ++i) {
    const float x = static_cast<float>(m(rng) * std::exp2(e(rng)));
    if (x == 0) continue;
    const HiLo s = split_hi_lo(x);
    const double err = std::fabs(double(x) - bf16_to_float(s.hi) - bf16_to_float(s.lo)) / std::fabs(double(x));
    ASSERT_LE(err, std::exp2(-16)) << x;
    worst = std::max(worst, err);
  }
  EXPECT_GT(worst, std::exp2(-18)) << "the bound is the split's, not a loose one";
  for (const float x : {INFINITY, -INFINITY}) {
    EXPECT_EQ(bf16_to_float(split_hi_lo(x).hi), x);
    EXPECT_EQ(split_hi_lo(x).lo, 0);
  }
  EXPECT_TRUE(std::isnan(bf16_to_float(split_hi_lo(NAN).hi)));
}

// The MXFP4 input grid q·2^k: hi + lo is exact for every q at 8 bits (lo 0) and 16 bits; at 24 bits it is not
// (the split's 2^-16 then applies).
TEST(CudaMathGemm, HiLoSplitIsExactOnTheInt8AndInt16Grids) {
  for (const int bits : {8, 16, 24}) {
    const int32_t qmax = activation_qmax(bits);
    int64_t inexact = 0;
    for (const int k : {-30, -7, 0, 5}) {
      const int32_t step = bits == 24 ? 97 : 1;
      for (int32_t q = -qmax; q <= qmax; q += step) {
        const float x = std::ldexp(static_cast<float>(q), k);
        const HiLo s = split_hi_lo(x);
        inexact += double(bf16_to_float(s.hi)) + bf16_to_float(s.lo) != double(x);
        if (bits == 8) {
          ASSERT_EQ(s.lo, 0) << q;
        }
      }
    }
    if (bits == 24) {
      EXPECT_GT(inexact, 0);
    } else {
      EXPECT_EQ(inexact, 0) << bits << " bits";
    }
  }
}

// The PTX ISA's m16n8k16 .bf16 layouts, element by element: A's a_i (8 a lane), B's b_i (4), C's c_i (4).
FragPos ptx_a(int lane, int i) {
  const int group = lane / 4, tig = lane % 4;
  return {group + ((i % 4) >= 2 ? 8 : 0), tig * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
FragPos ptx_b(int lane, int i) {  // {k, n}
  const int group = lane / 4, tig = lane % 4;
  return {tig * 2 + (i & 1) + (i >= 2 ? 8 : 0), group};
}
FragPos ptx_c(int lane, int i) {
  const int group = lane / 4, tig = lane % 4;
  return {group + (i >= 2 ? 8 : 0), tig * 2 + (i & 1)};
}

TEST(CudaMathGemm, FragmentMapsAreThePtxLayouts) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const FragPos p = a_frag_pos(lane, i / 2), want = ptx_a(lane, i);
      EXPECT_EQ(p.row, want.row) << lane << " a" << i;
      EXPECT_EQ(p.col + i % 2, want.col) << lane << " a" << i;
    }
    for (int i = 0; i < 4; ++i) {
      const FragPos p = b_frag_pos(lane, i / 2), want = ptx_b(lane, i);
      EXPECT_EQ(p.row, want.col) << lane << " b" << i;  // gemm_math.h: {token, k}
      EXPECT_EQ(p.col + i % 2, want.row) << lane << " b" << i;
      const FragPos c = c_frag_pos(lane, i), wc = ptx_c(lane, i);
      EXPECT_EQ(c.row, wc.row) << lane << " c" << i;
      EXPECT_EQ(c.col, wc.col) << lane << " c" << i;
    }
  }
}

// Each fragment register's 32 words (a lane each) fall on 32 different banks of the padded rows.
TEST(CudaMathGemm, FragmentLoadsHaveNoBankConflicts) {
  for (int reg = 0; reg < 4; ++reg) {
    std::set<int> a, b;
    for (int lane = 0; lane < 32; ++lane) {
      const FragPos p = a_frag_pos(lane, reg);
      a.insert((p.row * kGemmStride + p.col) / 2 % 32);
      const FragPos q = b_frag_pos(lane, reg % 2);
      b.insert((q.row * kGemmStride + q.col) / 2 % 32);
    }
    EXPECT_EQ(a.size(), 32u) << "A register " << reg;
    EXPECT_EQ(b.size(), 32u) << "B register " << reg;
  }
}

// ---- a launch, simulated ----

float bf16_lo(uint32_t pair) { return bf16_to_float(static_cast<uint16_t>(pair)); }
float bf16_hi(uint32_t pair) { return bf16_to_float(static_cast<uint16_t>(pair >> 16)); }

// One mma.sync m16n8k16 of a warp: every lane's registers placed by the PTX layouts, d = c + sum_k a·b with
// the exact products added in fp32 in k order (the hardware's order is its own).
void emulate_mma(const uint32_t a[32][4], const uint32_t b[32][2], float* d[32]) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const FragPos p = ptx_a(lane, i);
      A[p.row][p.col] = i % 2 ? bf16_hi(a[lane][i / 2]) : bf16_lo(a[lane][i / 2]);
    }
    for (int i = 0; i < 4; ++i) {
      const FragPos p = ptx_b(lane, i);
      B[p.row][p.col] = i % 2 ? bf16_hi(b[lane][i / 2]) : bf16_lo(b[lane][i / 2]);
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const FragPos p = ptx_c(lane, i);
      float s = d[lane][i];
      for (int k = 0; k < 16; ++k) s += A[p.row][k] * B[k][p.col];
      d[lane][i] = s;
    }
}

// Warp `warp`'s MMAs of a tile, as gemm.cu's mma_tile runs them.
void simulate_mma_tile(const uint16_t* sw, const uint16_t* sx_hi, const uint16_t* sx_lo, int warp, int nt,
                       GemmAcc* part) {
  for (int kk = 0; kk < kGemmK; kk += 16) {
    uint32_t a[kGemmMTiles][32][4], bh[kGemmNTiles][32][2], bl[kGemmNTiles][32][2];
    for (int lane = 0; lane < 32; ++lane) {
      for (int m = 0; m < kGemmMTiles; ++m) load_a_frag(sw, warp, lane, m, kk, a[m][lane]);
      for (int n = 0; n < kGemmNTiles; ++n) {
        load_b_frag(sx_hi, warp, lane, n, kk, bh[n][lane]);
        load_b_frag(sx_lo, warp, lane, n, kk, bl[n][lane]);
      }
    }
    for (int n = 0; n < kGemmNTiles; ++n)
      if (warp_token0(warp) + 8 * n < nt)
        for (int m = 0; m < kGemmMTiles; ++m) {
          float* d[32];
          for (int lane = 0; lane < 32; ++lane) d[lane] = part[32 * warp + lane].v[m][n];
          emulate_mma(a[m], bl[n], d);
          emulate_mma(a[m], bh[n], d);
        }
  }
}

// The arguments of a launch (kernels.h's GemmArgs, which names CUDA's types).
struct Launch {
  std::vector<GemmGroup> groups;
  int tiles = 0;
  int64_t rows = 0, cols = 0;
  const float* x = nullptr;
  int64_t x_stride = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
  int bits = 24;
};

// Block (bx, tile) of gemm_kernel<F>, its 128 threads one after another between the barriers.
template <class F>
void simulate_block(const Launch& a, int bx, int tile) {
  std::vector<uint16_t> sw(kGemmRows * kGemmStride), sx_hi(kGemmTokens * kGemmStride), sx_lo(sx_hi.size());
  std::vector<float> sscale(kGemmRows);
  const GemmGroup& g = a.groups[size_t(find_group(a.groups.data(), int(a.groups.size()), tile))];
  const int64_t t0 = int64_t{tile - g.tile_begin} * kGemmTokens;
  const int nt = static_cast<int>(std::min<int64_t>(g.tokens - t0, kGemmTokens));
  const int64_t r0 = int64_t{bx} * kGemmRows, rows = std::min<int64_t>(a.rows - r0, kGemmRows);
  const float* x = a.x + (g.token_begin + t0) * a.x_stride;
  const WeightRows w{g.codes, g.scales, a.cols};
  std::vector<GemmAcc> acc(kGemmThreads, GemmAcc{}), part(kGemmThreads, GemmAcc{});
  std::vector<WeightPart<F>> wp(kGemmThreads);
  std::vector<InputPart> xp(kGemmThreads);
  for (int tid = 0; tid < kGemmThreads; ++tid) {
    load_weight_part<F>(w, g.row_begin + r0, rows, 0, tid, wp[size_t(tid)]);
    load_input_part(x, a.x_stride, nt, 0, tid, xp[size_t(tid)]);
  }
  for (int64_t k0 = 0; k0 < a.cols; k0 += kGemmK) {
    std::vector<float> amax(kGemmThreads);
    std::vector<char> finite(kGemmThreads);
    for (int tid = 0; tid < kGemmThreads; ++tid) {
      store_weight_part<F>(wp[size_t(tid)], tid, sw.data(), sscale.data());
      bool f = true;
      amax[size_t(tid)] = input_part_amax(xp[size_t(tid)], f);
      finite[size_t(tid)] = f;
    }
    for (int tid = 0; tid < kGemmThreads; ++tid) {  // the pair's shuffle
      const size_t me = size_t(tid), other = size_t(tid ^ 1);
      store_input_part(xp[me], F::kRoundsInput, std::max(amax[me], amax[other]), finite[me] && finite[other], a.bits,
                       tid, sx_hi.data(), sx_lo.data());
    }
    if (k0 + kGemmK < a.cols)
      for (int tid = 0; tid < kGemmThreads; ++tid) {
        load_weight_part<F>(w, g.row_begin + r0, rows, k0 + kGemmK, tid, wp[size_t(tid)]);
        load_input_part(x, a.x_stride, nt, k0 + kGemmK, tid, xp[size_t(tid)]);
      }
    for (int warp = 0; warp < kGemmWarps; ++warp)
      simulate_mma_tile(sw.data(), sx_hi.data(), sx_lo.data(), warp, nt, part.data());
    if (closes_block<F>(k0 + kGemmK, a.cols))
      for (int tid = 0; tid < kGemmThreads; ++tid)
        flush_partial(part[size_t(tid)], acc[size_t(tid)], sscale.data(), tid / 32, tid % 32);
  }
  for (int tid = 0; tid < kGemmThreads; ++tid)
    store_acc(acc[size_t(tid)], tid / 32, tid % 32, r0, a.rows, nt, a.y + (g.token_begin + t0) * a.y_stride,
              a.y_stride);
}

template <class F>
void simulate_launch(const Launch& a) {
  for (int bx = 0; bx < (a.rows + kGemmRows - 1) / kGemmRows; ++bx)
    for (int tile = 0; tile < a.tiles; ++tile) simulate_block<F>(a, bx, tile);
}

// A random stored tensor of a format: BF16 N(0, 0.05²), FP8 and MXFP4 random codes under scales 2^-7 .. 2^3.
struct Tensor {
  core::WeightFormat format;
  int64_t rows, cols;
  std::vector<uint8_t> codes, scales;
  core::WeightView view(int64_t row_begin, int64_t count) const {
    core::WeightView v{format, codes.data(), scales.empty() ? nullptr : scales.data(), 0, rows, cols, rows};
    return v.slice_rows(row_begin, count);
  }
};

Tensor random_tensor(core::WeightFormat f, int64_t rows, int64_t cols, std::mt19937_64& rng) {
  Tensor t{f, rows, cols, {}, {}};
  std::uniform_int_distribution<int> byte(0, 255), scale(120, 130);
  std::normal_distribution<float> g(0.0f, 0.05f);
  switch (f) {
    case core::WeightFormat::BF16:
      for (int64_t i = 0; i < rows * cols; ++i) {
        const uint16_t b = core::float_to_bf16(g(rng));
        t.codes.push_back(static_cast<uint8_t>(b & 0xFF)), t.codes.push_back(static_cast<uint8_t>(b >> 8));
      }
      break;
    case core::WeightFormat::FP8:
      for (int64_t i = 0; i < (rows + 127) / 128 * ((cols + 127) / 128); ++i) t.scales.push_back(uint8_t(scale(rng)));
      for (int64_t i = 0; i < rows * cols; ++i) {
        uint8_t c;
        do c = static_cast<uint8_t>(byte(rng));
        while ((c & 0x7F) == 0x7F);
        t.codes.push_back(c);
      }
      break;
    case core::WeightFormat::MXFP4:
      for (int64_t i = 0; i < rows * cols / 32; ++i) t.scales.push_back(uint8_t(scale(rng)));
      for (int64_t i = 0; i < rows * cols / 2; ++i) t.codes.push_back(static_cast<uint8_t>(byte(rng)));
      break;
    case core::WeightFormat::F32: break;
  }
  return t;
}

// W[r, k] of a view, decoded by planner/core's codecs.
double weight_value(const core::WeightView& w, int64_t r, int64_t k) {
  const int64_t row = w.row_begin + r, i = row * w.cols + k;
  switch (w.format) {
    case core::WeightFormat::BF16:
      return core::bf16_to_float(static_cast<uint16_t>(w.data[2 * i] | w.data[2 * i + 1] << 8));
    case core::WeightFormat::FP8:
      return double(core::e4m3_to_float(w.data[i])) *
             core::e8m0_to_float(w.scales[row / 128 * ((w.cols + 127) / 128) + k / 128]);
    case core::WeightFormat::MXFP4: {
      const uint8_t b = w.data[i / 2];
      return double(core::e2m1_to_float(k % 2 ? core::fp4_high(b) : core::fp4_low(b))) *
             core::e8m0_to_float(w.scales[i / 32]);
    }
    case core::WeightFormat::F32: break;
  }
  return 0;
}

struct GemmCase {
  core::WeightFormat format;
  core::ActivationBits bits;
};

// The input as the MMAs see it: rounded per 32-block for MXFP4 (as the CPU and the matrix-vector kernel round
// it), then hi + lo.
std::vector<double> split_input(const float* x, int64_t cols, bool rounds, int bits) {
  std::vector<double> out(static_cast<size_t>(cols));
  for (int64_t b = 0; b < cols; b += 32) {
    float amax = 0;
    for (int64_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    for (int64_t i = b; i < b + 32; ++i) {
      const float v = rounds && amax > 0 ? activation_round(x[i], activation_exponent(amax, bits)) : x[i];
      const HiLo s = split_hi_lo(v);
      out[size_t(i)] = double(bf16_to_float(s.hi)) + bf16_to_float(s.lo);
    }
  }
  return out;
}

// Two groups in one launch (LinearGrouped's experts; a plain Linear is one group): 200-row views, the second
// starting inside an FP8 scale block (row 100), of 20 tokens (one partial tile) and 70 (a full one and a partial
// one); padded input and output rows; 1024 columns (8 FP8 blocks, 32 MXFP4 ones). Two bounds, each relative to
// sum_k |W[r, k]·x[k]|:
//  - within 2e-6 of the float64 product with the split inputs hi + lo: the emulated MMAs add exact products in
//    fp32, as the CPU's float32 kernels do. A weight decoded wrong, a fragment misplaced, a scale on the wrong
//    block, an MMA without its lo half (2^-9 an input) all miss by far more.
//  - within 2^-16 + 2e-6 of the CPU's linear op: the split's worst case (2^-16 an input, reached where a few
//    large products dominate a row, as random FP8 codes under random scales make them) plus float32 rounding.
// The padding keeps its value.
TEST(CudaMathGemm, SimulatedLaunchIsTheCpusLinear) {
  using core::ActivationBits;
  using core::WeightFormat;
  const int64_t tensor_rows = 328, rows = 200, cols = 1024, xs = cols + 8, ys = rows + 3;
  const int64_t begin[2] = {0, 100}, first[2] = {0, 20}, count[2] = {20, 70}, n = 90;
  for (const GemmCase c :
       {GemmCase{WeightFormat::BF16, ActivationBits::Int24}, GemmCase{WeightFormat::FP8, ActivationBits::Int24},
        GemmCase{WeightFormat::MXFP4, ActivationBits::Int8}, GemmCase{WeightFormat::MXFP4, ActivationBits::Int16},
        GemmCase{WeightFormat::MXFP4, ActivationBits::Int24}}) {
    std::mt19937_64 rng(33);
    const Tensor tensors[2] = {random_tensor(c.format, tensor_rows, cols, rng),
                               random_tensor(c.format, tensor_rows, cols, rng)};
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> x(size_t(n * xs));
    for (float& v : x) v = g(rng);
    std::fill_n(x.begin() + 3 * xs + 64, 32, 0.0f);  // an all-zero MXFP4 block
    const float kPad = 7.0f;
    std::vector<float> got(size_t(n * ys), kPad), want(got);
    Launch a;
    a.rows = rows, a.cols = cols, a.x = x.data(), a.x_stride = xs, a.y = got.data(), a.y_stride = ys;
    a.bits = static_cast<int>(c.bits);
    for (int i = 0; i < 2; ++i) {
      const core::WeightView v = tensors[i].view(begin[i], rows);
      a.groups.push_back({v.data, v.scales, v.row_begin, first[i], int32_t(count[i]), a.tiles});
      a.tiles += int((count[i] + kGemmTokens - 1) / kGemmTokens);
      cpu::linear(v, x.data() + first[i] * xs, count[i], xs, want.data() + first[i] * ys, ys, c.bits);
    }
    switch (c.format) {
      case WeightFormat::BF16: simulate_launch<GemmBf16>(a); break;
      case WeightFormat::FP8: simulate_launch<GemmFp8>(a); break;
      case WeightFormat::MXFP4: simulate_launch<GemmMxfp4>(a); break;
      case WeightFormat::F32: break;
    }
    double worst_split = 0, worst_cpu = 0;
    for (int i = 0; i < 2; ++i) {
      const core::WeightView v = tensors[i].view(begin[i], rows);
      for (int64_t t = first[i]; t < first[i] + count[i]; ++t) {
        const std::vector<double> xt =
            split_input(x.data() + t * xs, cols, c.format == WeightFormat::MXFP4, static_cast<int>(c.bits));
        for (int64_t r = 0; r < rows; ++r) {
          double mag = 0, exact = 0;
          for (int64_t k = 0; k < cols; ++k) {
            const double w = weight_value(v, r, k);
            mag += std::fabs(w * x[size_t(t * xs + k)]), exact += w * xt[size_t(k)];
          }
          const double y = got[size_t(t * ys + r)];
          const double to_split = std::fabs(y - exact), to_cpu = std::fabs(y - want[size_t(t * ys + r)]);
          ASSERT_LE(to_split, 2e-6 * mag) << "format " << int(c.format) << " bits " << int(c.bits) << " group " << i
                                          << " token " << t << " row " << r << ": " << y << " vs " << exact;
          ASSERT_LE(to_cpu, (std::exp2(-16) + 2e-6) * mag)
              << "format " << int(c.format) << " bits " << int(c.bits) << " group " << i << " token " << t << " row "
              << r << ": " << y << " vs the CPU's " << want[size_t(t * ys + r)];
          worst_split = std::max(worst_split, to_split / mag), worst_cpu = std::max(worst_cpu, to_cpu / mag);
        }
        for (int64_t r = rows; r < ys; ++r) ASSERT_EQ(got[size_t(t * ys + r)], kPad) << "padding of token " << t;
      }
    }
    std::printf("format %d bits %d: worst error / sum|w x|: %.3g against hi + lo, %.3g against the CPU\n",
                int(c.format), int(c.bits), worst_split, worst_cpu);
  }
}

}  // namespace
}  // namespace ferry::runtime::cuda
