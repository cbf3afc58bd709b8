// The KV-row encodings of the CUDA kernels (runtime/kernels/cuda/kv_math.h through runtime/backend/cuda/kv_row.h),
// compiled by g++ and run on the CPU unit by unit as the kernel's threads run them: for every --kv-type, main
// rows and indexer keys, the stored bytes and the rounded values must be bitwise what the CPU's encode_kv_row
// writes; the encoders under them must be planner/core's codecs bit for bit. The device computes the same IEEE
// float operations (no transcendental function), so these are its results too.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/model_config.h"
#include "planner/kv_cache.h"
#include "runtime/backend/cuda/kv_row.h"
#include "runtime/kernels/cpu/kv_rows.h"
#include "same_float.h"

namespace ferry::runtime::cuda {
namespace {

// Floats from every exponent, with the codecs' rounding midpoints and limits among them.
std::vector<float> test_floats() {
  std::vector<float> v = {0.0f,      -0.0f,    448.0f,   464.0f,   480.0f,   6.0f,          7.0f,      65504.0f,
                          65519.99f, 65520.0f, 0x1p-14f, 0x1p-24f, 0x1p-25f, 0x1.8p-24f,    0x1p-126f, 0x1p-149f,
                          1e-4f,     0.25f,    0.75f,    1.25f,    5.0f,     std::nanf(""), INFINITY,  -INFINITY};
  std::mt19937_64 rng(51);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 300000; ++i) v.push_back(std::bit_cast<float>(bits(rng)));
  std::normal_distribution<float> g(0.0f, 100.0f);
  for (int i = 0; i < 300000; ++i) v.push_back(g(rng));
  for (int c = 0; c < 127; ++c) {  // E4M3 and E2M1 midpoints: ties to even
    const float a = core::e4m3_to_float(uint8_t(c)), b = core::e4m3_to_float(uint8_t(c + 1));
    v.push_back((a + b) / 2), v.push_back(-(a + b) / 2);
  }
  for (int c = 0; c < 7; ++c) v.push_back((core::e2m1_to_float(uint8_t(c)) + core::e2m1_to_float(uint8_t(c + 1))) / 2);
  return v;
}

TEST(CudaMath, KvEncodersAreTheCodecs) {
  for (const float f : test_floats()) {
    ASSERT_EQ(float_to_bf16_rn(f), core::float_to_bf16(f)) << f;
    ASSERT_EQ(float_to_f16_rn(f), core::float_to_f16(f)) << f;
    ASSERT_EQ(float_to_e4m3_rn(f), core::float_to_e4m3(f)) << f;
    ASSERT_EQ(float_to_e2m1_rn(f), core::float_to_e2m1(f)) << f;
    if (std::isfinite(f) && f > 0) {
      int e = 0;
      const float m = std::frexp(f, &e);
      ASSERT_EQ(ceil_log2(f), m == 0.5f ? e - 1 : e) << f;
    }
  }
  for (uint32_t h = 0; h < 65536; ++h)
    ASSERT_TRUE(same_float(f16_to_float(uint16_t(h)), core::f16_to_float(uint16_t(h)))) << "f16 code " << h;
}

// V4-Flash's rows, and rows whose nope dims end in a partial FP8 block and whose dims end in a partial q block.
std::vector<core::ModelConfig> configs() {
  core::ModelConfig flash = core::preset_config("deepseek-v4-flash"), odd = flash;
  odd.head_dim = 200, odd.qk_rope_head_dim = 64, odd.index_head_dim = 96;
  return {flash, odd};
}

// f(layout, kernel row, name) for every test config, --kv-type, and main row / indexer key.
template <class F>
void for_every_layout(F f) {
  for (const core::ModelConfig& c : configs())
    for (const planner::KvType t : planner::kKvTypesByFidelity)
      for (const bool indexer : {false, true}) {
        const planner::KvRowLayout l =
            indexer ? planner::KvRowLayout::indexer_row(c, t) : planner::KvRowLayout::main_row(c, t);
        f(l, kv_row(l, "test"),
          std::string(planner::kv_type_name(t)) + (indexer ? " indexer " : " main ") + std::to_string(l.dims));
      }
}

TEST(CudaMath, KvRowsAreTheCpusBitForBit) {
  std::mt19937_64 rng(52);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const float range[] = {1, 30, 1e-3f, 0, 1e-7f, 2, 1e30f, 3e-39f};
  for_every_layout([&](const planner::KvRowLayout& l, const KvRow& row, const std::string& what) {
    for (const float r : range) {
      std::vector<float> x(static_cast<size_t>(l.dims));
      for (float& v : x) v = g(rng) * r;
      // A NaN, which the block maxima skip as std::max does (not in q rows: the CPU casts q to int).
      if (r == 2 && (l.type == planner::KvType::BF16 || l.type == planner::KvType::FP8)) x[1] = std::nanf("");
      std::vector<float> want_x = x, got_x = x;
      std::vector<uint8_t> want(static_cast<size_t>(l.bytes), 0xAB),
          got = want;  // bytes no unit writes stay as they were, as on the CPU
      encode_kv_row(l, want_x.data(), want.data());
      std::vector<int64_t> units(static_cast<size_t>(kv_units(row)));
      for (size_t u = 0; u < units.size(); ++u) units[u] = static_cast<int64_t>(u);
      std::shuffle(units.begin(), units.end(), rng);  // threads run in any order
      for (const int64_t u : units) encode_kv_unit(row, got_x.data(), got.data(), u);
      const auto diff = std::mismatch(got.begin(), got.end(), want.begin());
      ASSERT_TRUE(diff.first == got.end())
          << what << " range " << r << ": stored byte " << (diff.first - got.begin()) << " of " << l.bytes << " is "
          << int(*diff.first) << ", want " << int(*diff.second);
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_TRUE(same_float(got_x[i], want_x[i])) << what << " range " << r << " value " << i;
    }
  });
}

// Every stored byte pattern, not only what the encoder writes: random rows decode value by value to what the CPU's
// decode_kv_row returns for the whole row.
TEST(CudaMath, KvValuesDecodeAsTheCpuDecodesRows) {
  std::mt19937_64 rng(53);
  std::uniform_int_distribution<int> byte(0, 255);
  for_every_layout([&](const planner::KvRowLayout& l, const KvRow& row, const std::string& what) {
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<uint8_t> bytes(static_cast<size_t>(l.bytes));
      for (uint8_t& b : bytes) b = static_cast<uint8_t>(byte(rng));
      std::vector<float> want(static_cast<size_t>(l.dims));
      decode_kv_row(l, bytes.data(), want.data());
      for (int64_t i = 0; i < l.dims; ++i)
        ASSERT_TRUE(same_float(decode_kv_value(row, bytes.data(), i), want[static_cast<size_t>(i)]))
            << what << " value " << i;
    }
  });
}

}  // namespace
}  // namespace ferry::runtime::cuda
