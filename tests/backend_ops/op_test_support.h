// What every test of tests/backend_ops shares, in the manner of ggml's test-backend-ops: the backends to run
// on (a typed suite over their factories), device memory filled from and read back to the host, weights in
// their stored encodings, seeded inputs, the model shapes (a tiny model's and V4-Flash's), and comparisons
// against the float64 reference (tests/reference) with per-element tolerances.
//
// Each test body runs one case on the backend under test through `OpTest::run`; where that backend computes
// with the host's kernels (sim), the case runs on a host backend too and the outputs must be bitwise equal.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "planner/core/model_config.h"
#include "planner/core/weight_view.h"
#include "planner/kv_cache.h"
#include "reference_ops.h"
#include "reference_weights.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/ops.h"

namespace ferry::runtime::ops_test {

using ops::Kind;
using planner::KvType;
using reference::Vec;

inline size_t sz(int64_t i) { return static_cast<size_t>(i); }

// ---- backends ----

// The tolerances of a backend's kernels where they round differently from the float64 reference, per op, each
// relative to the scale its test names: an RMS-normalised value (of its magnitude), a RoPE-rotated value (of
// |a| + |b| of its pair), a linear layer's output (of sum_k |W[r, k]·x[k]|, the scale of a dot product's float32
// rounding error, whatever the terms cancel to), an mHC weight (absolute: all are of order 1) and a mixed stream
// value (of the sum of its terms' magnitudes), a router score and weight (of its value; the choice, of the
// largest biased score), an MoE-combined value (of the sum of its terms' magnitudes), an attention output (of the
// largest |value| of the rows attended). Embedding gathers, row gathers, the stream sum, KV encodings (IEEE
// operations only, on CUDA too) and the window store are exact everywhere.
struct OpTolerances {
  double rms_norm = 0, rope = 0, dot = 0, hc = 0, route = 0, combine = 0, attention = 0;
};

// The CPU kernels (host, sim). RMSNorm: three float roundings (the inverse rms, x·r, then ·w) from the exact
// value. RoPE: a·c − b·s with c, s rounded to float. Dot: the SIMD-lane sums stay within 1.2e-7 at K = 4096;
// 2e-6 leaves a margin of ten or more. mHC: the logits are double sums rounded to float; sigmoid, the softmax and
// 20 Sinkhorn iterations in float32 move the weights by under 1e-7, the mixes add hc + 1 rounded products.
// Route: sqrt(softplus(·)) in float32 is a few roundings from the exact score, the weights k of those normalised.
// Combine: a float32 sum of k + 1 rounded products. Attention: each output is a weighted mean of up to ~1200
// rows; the exponentials', the sums' and the inverse RoPE's roundings keep it within 2.5e-7 of the largest |row
// value|, 2e-6 leaves a margin of eight.
inline constexpr OpTolerances kCpuTolerances{1e-6, 1e-6, 2e-6, 1e-6, 1e-6, 1e-6, 2e-6};

// The CUDA kernels (runtime/kernels/cuda), which compute each element with the CPU's own math
// (tests/unit/test_cuda_math*.cpp check it bitwise) and differ only where noted:
//  - rms_norm 1e-6: the sum of squares is a double tree sum instead of a double loop; the order moves only the
//    last bits of a double, far below the three float roundings that follow.
//  - rope 1e-6: cos and sin come from CUDA's double libm (within 2 ulp of a double) instead of glibc's, then are
//    rounded to float as on the CPU; the products are rounded one by one (no FMA), as on the CPU.
//  - dot 3e-5, for the tensor-core GEMM of chunks of 16 tokens or more (kernels.h kGemmMinTokens; below that
//    the matrix-vector kernel: a lane's FMA chains over its 16-byte chunks, then a 5-level shuffle tree, ~45
//    roundings deep at K = 4096, a random walk of about 4e-7 of the scale). The GEMM multiplies exact BF16
//    weights with inputs split into BF16 hi + lo, each within 2^-16 = 1.53e-5 of its value (exact for MXFP4 at
//    int8 and int16): a bound that holds, not a random walk, where a few large products dominate a row (random
//    FP8 codes under random scales make such rows). Its fp32 sums: an MMA chain over a scale block (16 MMAs for
//    FP8 and BF16's 128 columns, 4 for MXFP4's 32), each within an ulp of its sum (tensor cores may truncate:
//    Fasi et al., 2021), then the K/block scaled block sums rounded to nearest: at most 16·2^-23 + 32·2^-24 =
//    3.8e-6 (FP8, K = 4096) or 4·2^-23 + 128·2^-24 = 8.1e-6 (MXFP4) of the scale. 1.53e-5 + 8.1e-6 = 2.3e-5:
//    3e-5 holds the worst case. The expert feed-forward's tolerance is built from it; its SwiGLU adds CUDA's
//    expf (within 2 ulp: 2.4e-7 of silu).
//  - hc 2e-6: CUDA's expf (within 2 ulp, 2.4e-7 relative) in the sigmoids and the softmax, where the CPU has
//    glibc's; the softmax and Sinkhorn normalise relative errors of that size without amplifying them, so the
//    weights move by a few 1e-7 more than the CPU's 1e-6 allows for; the double sums' order moves only the last
//    bits of a double.
//  - route 1e-6: CUDA's expf and log1pf (each within 2 ulp) in the score, halved by the sqrt: about 3e-7
//    relative, inside the CPU's 1e-6; the choice and the weights are the CPU's functions of the scores.
//  - combine 1e-6: the CPU's products and sums in the CPU's order (the positions sorted as it sorts them).
//  - compress and indexer_select take no entry here: their tests bound each value by its own noise (1e-5 of the
//    row's or the largest score's magnitude), which the CUDA kernels meet with room to spare. Compress is the
//    CPU's math (test_cuda_math_indexer checks the stored bytes bitwise) but for CUDA's double exp in the pooling
//    (within 1 ulp of a double) and cos/sin as in rope. The indexer's queries and weights are the CPU's math but
//    for cos/sin; a key's score sums each head's dims in one FMA chain where the CPU sums SIMD lanes: both within
//    (dim + heads + 2)·2^-24 of the sum of the terms' magnitudes in the worst case, about sqrt(194)·6e-8 = 8e-7
//    of it as a random walk at V4's 64 heads of 128 dims, inside the test's 1e-5; the choice is the exact top-k
//    of those scores (the tie rule the CPU's).
//  - attention 3e-6: the kernel's order (scores as 32 lanes' FMA chains and a butterfly, tiles of 16 to 64 rows),
//    run on the CPU by test_cuda_math_attention, is within 3e-7 of float64 at V4-Flash's shapes, as the host is;
//    CUDA's expf (within 2 ulp) moves each weight and the sink's term by up to 2.4e-7 relative, so the output,
//    a weighted mean, by up to 2·2.4e-7 of the largest |row value| more: 3e-6 keeps the CPU's margin.
inline constexpr OpTolerances kCudaTolerances{1e-6, 1e-6, 3e-5, 2e-6, 1e-6, 1e-6, 3e-6};

// A backend factory: its name in test names, whether it computes with the host's CPU kernels (then its
// outputs equal the host's bit for bit), its kernels' tolerances, and make(), which returns null with the
// reason when the backend is absent (no CUDA device).
struct HostFactory {
  static constexpr const char* kName = "host";
  static constexpr bool kHostKernels = true;
  static constexpr OpTolerances kTol = kCpuTolerances;
  static std::unique_ptr<Backend> make(std::string& why_absent);
};
struct SimFactory {
  static constexpr const char* kName = "sim";
  static constexpr bool kHostKernels = true;
  static constexpr OpTolerances kTol = kCpuTolerances;
  static std::unique_ptr<Backend> make(std::string& why_absent);
};
struct CudaFactory {
  static constexpr const char* kName = "cuda";
  static constexpr bool kHostKernels = false;
  static constexpr OpTolerances kTol = kCudaTolerances;
  static std::unique_ptr<Backend> make(std::string& why_absent);
};
// Instances are numbered (BasicOps/1.Rope): CTest's test discovery reads type-parameterized names only in that
// form, and names them by the factory (BasicOps.Rope<ferry::runtime::ops_test::SimFactory>).
using Backends = ::testing::Types<HostFactory, SimFactory, CudaFactory>;

// ---- device memory and outputs ----

// A weight in its stored encoding (host bytes), and the float64 matrix it decodes to.
struct StoredWeight {
  core::WeightFormat format = core::WeightFormat::F32;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> codes, scales;
  reference::Matrix decoded() const;
};
// A random rows × cols weight of typical magnitude sd: F32 and BF16 drawn N(0, sd²); FP8 (one E8M0 scale per
// 128×128 block) and MXFP4 (one per 32 along the row) as random codes under random scales.
StoredWeight stored_weight(core::WeightFormat f, int64_t rows, int64_t cols, double sd, std::mt19937_64& rng);

// The buffers of one case on one backend, freed with it. upload() allocates and fills, read() copies back.
class DeviceMemory {
 public:
  explicit DeviceMemory(Backend& b) : b_(b) {}
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  template <class T>
  T* upload(const std::vector<T>& v, MemoryClass c = MemoryClass::Workspace) {
    return static_cast<T*>(upload_bytes(v.data(), static_cast<int64_t>(v.size() * sizeof(T)), c));
  }
  template <class T>
  T* zeros(int64_t n) {
    return upload(std::vector<T>(static_cast<size_t>(n)));
  }
  core::WeightView weight(const StoredWeight& w);
  template <class T>
  std::vector<T> read(const T* p, int64_t n) const {
    std::vector<T> v(static_cast<size_t>(n));
    read_bytes(p, v.data(), n * static_cast<int64_t>(sizeof(T)));
    return v;
  }
  // Runs the op on the backend and waits for it.
  void run(const ops::Op& op);

 private:
  void* upload_bytes(const void* src, int64_t bytes, MemoryClass c);
  void read_bytes(const void* src, void* dst, int64_t bytes) const;
  Backend& b_;
  std::vector<DeviceBuffer> buffers_;
};

// A case's outputs by name, as bytes: compared bit for bit across backends.
class Outputs {
 public:
  template <class T>
  Outputs& add(std::string name, const std::vector<T>& v) {
    std::vector<uint8_t> bytes(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
    blobs_.emplace_back(std::move(name), std::move(bytes));
    return *this;
  }
  // Not templates: the tests call them on a dependent type.
  std::vector<float> f32(std::string_view name) const { return get<float>(name); }
  std::vector<int32_t> i32(std::string_view name) const { return get<int32_t>(name); }
  std::vector<uint8_t> u8(std::string_view name) const { return get<uint8_t>(name); }
  // "" when both hold the same names with the same bytes; else where they first differ.
  static std::string first_difference(const Outputs& a, const Outputs& b);

 private:
  template <class T>
  std::vector<T> get(std::string_view name) const {
    const std::vector<uint8_t>& b = blob(name);
    std::vector<T> v(b.size() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), b.data(), b.size());
    return v;
  }
  const std::vector<uint8_t>& blob(std::string_view name) const;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> blobs_;
};

// ---- the typed suite ----

template <class Factory>
class OpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    backend_ = Factory::make(why);
    if (!backend_) GTEST_SKIP() << Factory::kName << " is absent: " << why;
  }

  // Runs `body(DeviceMemory&) -> Outputs` on the backend under test; on a backend with the host's kernels
  // (other than the host itself) also on a host backend, expecting bitwise equal outputs. nullopt, with the
  // test marked skipped, when the backend does not run `kind` (host and sim must run every kind).
  template <class Body>
  std::optional<Outputs> run(ops::Kind kind, Body&& body) {
    if (!backend_->supports(kind)) {
      if (Factory::kHostKernels)
        ADD_FAILURE() << Factory::kName << " must run " << ops::kind_name(kind);
      else
        [&] { GTEST_SKIP() << Factory::kName << " does not run " << ops::kind_name(kind) << " yet"; }();
      return std::nullopt;
    }
    Outputs out = [&] {
      DeviceMemory m(*backend_);
      return body(m);
    }();
    if (Factory::kHostKernels && std::string_view(Factory::kName) != HostFactory::kName) {
      cpu::CpuBackend host;
      DeviceMemory m(host);
      const std::string diff = Outputs::first_difference(out, body(m));
      EXPECT_EQ(diff, "") << Factory::kName << " and host differ on " << ops::kind_name(kind);
    }
    return out;
  }
  std::unique_ptr<Backend> backend_;
};

// A typed suite `name` of OpTest over every backend.
#define FERRY_OP_SUITE(name)        \
  template <class F>                \
  class name : public OpTest<F> {}; \
  TYPED_TEST_SUITE(name, Backends)

// ---- shapes and inputs ----

// The shapes every op runs at: the tiny model's (runtime/checkpoint/tiny_model.h, window 16, ratios 4 and 16)
// and V4-Flash's (hidden 4096, 64 heads of 512, window 128, ratios 4 and 128, 256 experts top-6, ...).
struct Shape {
  std::string name;
  core::ModelConfig c;
  int64_t hca_ratio = 0;  // the ratio of the model's HCA layers
};
const std::vector<Shape>& shapes();

std::vector<float> normal(int64_t n, double sd, std::mt19937_64& rng);
Vec to_double(const std::vector<float>& v);
// Rows [row, row + count) of a flat [·, width] array, as doubles.
template <class T>
Vec slice(const std::vector<T>& v, int64_t row, int64_t width, int64_t count = 1) {
  return Vec(v.begin() + row * width, v.begin() + (row + count) * width);
}

// ---- comparisons ----

// Expects |got[i] − ref[i]| <= tol[i] for every i (tol broadcast when it has one element); `what` names the
// output in failures, which show the first few elements out of tolerance and how many there were.
void expect_near(const std::vector<float>& got, const Vec& ref, const Vec& tol, const std::string& what);
// Expects got == float(ref) (−0 equal to 0): outputs the backend computes exactly (copies, decoded weights,
// roundings of exact inputs).
void expect_exact(const std::vector<float>& got, const Vec& ref, const std::string& what);

// Rounded values (KV storage, compressed entries, indexer queries): got[i] must be the reference's rounding
// `ref` up to `noise[i]` (float32's error in the value before rounding, or in a value the KV type leaves
// unrounded), or — where that noise put the exact value `exact` on the other side of a rounding boundary — no
// farther than `ref` from `exact` up to 2·noise[i] (the other neighbour on the grid). At most `max_flips`
// elements may take such a flip.
void expect_rounded(const std::vector<float>& got, const Vec& ref, const Vec& exact, const Vec& noise,
                    int64_t max_flips, const std::string& what);

// A top-k choice (the indexer's, the router's) against the reference scores: the right count, each entry
// once and in range, and a set that differs from the exact top-k only by entries within `tol` of the cut
// (float32 rounds the scores). Entries of one tie class (tie_class[j] >= 0) score exactly alike: the lower
// entry must be chosen first.
void check_selection(const std::vector<int32_t>& chosen, const Vec& score, int64_t k, double tol,
                     const std::vector<int64_t>& tie_class, const std::string& what);

// sum_k |W[r, k]·x[k]| for every row r: the scale of a dot product's float32 rounding error.
Vec abs_products(const reference::Matrix& w, const Vec& x);

// An op's view of a RoPE frequency table (host memory: `freqs` must outlive the op).
ops::RopeFreqs rope_table(const Vec& freqs);

}  // namespace ferry::runtime::ops_test
