// The linear layers on every backend against the float64 reference: one weight of each stored format (F32,
// BF16, FP8 blocks, MXFP4 with int24 and int16 activations) whole and as a row view, grouped over experts'
// runs of rows, and the SwiGLU expert with and without its limit.
//
// Tolerances: a float32 dot product's rounding error scales with sum_k |w_k·x_k| (the terms' magnitudes,
// whatever their signs cancel to): the backend's dot tolerance of it (OpTolerances, op_test_support.h, per
// backend: the CPU's SIMD lanes and the CUDA warps sum in different orders). The reference applies the MXFP4
// activation rounding to the op's input exactly as the kernels do (the input is exact), so int16 needs no wider
// tolerance there.
#include <cmath>

#include "op_test_support.h"
#include "reference_op_math.h"

namespace ferry::runtime::ops_test {
namespace {

using core::WeightFormat;

int bits_of(core::ActivationBits b) { return static_cast<int>(b); }

FERRY_OP_SUITE(LinearOps);

struct LinearCase {
  WeightFormat format;
  int64_t tensor_rows, cols;
  int64_t row_begin, rows;  // the view
  int64_t n;
  int64_t x_pad = 0, y_pad = 0;  // strides beyond the row
  core::ActivationBits bits = core::ActivationBits::Int24;
  int64_t x_offset = 0, y_offset = 0;  // where each token's input and output start in its row
  std::string text() const {
    static const char* names[] = {"f32", "bf16", "fp8", "mxfp4"};
    return std::string(names[static_cast<int>(format)]) + " [" + std::to_string(rows) + " of " +
           std::to_string(tensor_rows) + " from " + std::to_string(row_begin) + ", " + std::to_string(cols) + "] x" +
           std::to_string(n) +
           (format == WeightFormat::MXFP4 ? " " + std::string(core::activation_bits_name(bits)) : "");
  }
};

// Every format whole and as a view; one token (the matvec kernels) and several (the matmul kernels), up to a
// chunk of 16 and more (CUDA's tensor-core GEMM: one and two 64-token tiles); FP8 views inside a 128-row scale
// block (decoded row by row); MXFP4 at both precisions; and the grouped output projection's use: group 1 of
// wo_a (here two groups of o_lora rows; V4-Flash has 8) on its heads' part of the attention output, into its
// part of z.
std::vector<LinearCase> linear_cases(const core::ModelConfig& c) {
  const int64_t d = c.hidden_size, ql = c.q_lora_rank, inter = c.moe_intermediate_size;
  const int64_t ol = c.o_lora_rank, gin = c.num_attention_heads * c.head_dim / c.o_groups;
  using B = core::ActivationBits;
  return {
      {WeightFormat::F32, 24, d, 0, 24, 2},
      {WeightFormat::BF16, 256, d, 64, 64, 3, 16, 8},
      {WeightFormat::FP8, ql, d, 0, ql, 1},
      {WeightFormat::FP8, ql, d, 0, ql, 4, 0, 5},
      {WeightFormat::FP8, 256, d, 100, 128, 3},
      {WeightFormat::MXFP4, inter, d, 0, inter, 3, 0, 0, B::Int24},
      {WeightFormat::MXFP4, d, inter, 0, d, 2, 32, 0, B::Int16},
      {WeightFormat::MXFP4, inter, d, 0, inter, 1, 0, 0, B::Int16},
      {WeightFormat::FP8, 2 * ol, gin, ol, ol, 2, gin, ol, B::Int24, gin, ol},
      {WeightFormat::BF16, 256, d, 64, 64, 40, 16, 8},
      {WeightFormat::FP8, 256, d, 100, 128, 70},
      {WeightFormat::MXFP4, inter, d, 0, inter, 20, 0, 0, B::Int24},
      {WeightFormat::MXFP4, d, inter, 0, d, 17, 32, 0, B::Int16},
      {WeightFormat::MXFP4, inter, d, 0, inter, 16, 0, 0, B::Int16},
      {WeightFormat::FP8, 2 * ol, gin, ol, ol, 24, gin, ol, B::Int24, gin, ol},
  };
}

TYPED_TEST(LinearOps, Linear) {
  for (const Shape& s : shapes()) {
    for (const LinearCase& k : linear_cases(s.c)) {
      std::mt19937_64 rng(11);
      const StoredWeight w = stored_weight(k.format, k.tensor_rows, k.cols, 0.05, rng);
      const int64_t xs = k.cols + k.x_pad, ys = k.rows + k.y_pad;
      std::vector<float> x = normal(k.n * xs, 1.0, rng);
      std::fill_n(x.begin(), 32, 0.0f);  // an all-zero activation block
      const auto out = this->run(Kind::Linear, [&](DeviceMemory& m) {
        float* y = m.zeros<float>(k.n * ys);
        m.run(ops::Linear{m.weight(w).slice_rows(k.row_begin, k.rows), m.upload(x) + k.x_offset, k.n, xs,
                          y + k.y_offset, ys, k.bits});
        return Outputs().add("y", m.read(y, k.n * ys));
      });
      if (!out) return;
      const reference::Matrix W = w.decoded();
      const reference::Matrix view{
          k.rows, k.cols, Vec(W.w.begin() + k.row_begin * k.cols, W.w.begin() + (k.row_begin + k.rows) * k.cols)};
      Vec ref(sz(k.n * ys), 0.0), tol(sz(k.n * ys), 0.0);  // the padding stays zero
      for (int64_t t = 0; t < k.n; ++t) {
        Vec xt = slice(x, t, xs);
        xt.erase(xt.begin(), xt.begin() + k.x_offset);
        xt.resize(sz(k.cols));
        xt = reference::mxfp4_input(xt, k.format == WeightFormat::MXFP4 ? bits_of(k.bits) : 0);
        const Vec y = view * xt, mag = abs_products(view, xt);
        for (int64_t r = 0; r < k.rows; ++r) {
          ref[sz(t * ys + k.y_offset + r)] = y[sz(r)];
          tol[sz(t * ys + k.y_offset + r)] = TypeParam::kTol.dot * mag[sz(r)];
        }
      }
      expect_near(out->f32("y"), ref, tol, s.name + " linear " + k.text());
    }
  }
}

// Experts' runs of rows through their own weights, an empty run among them; a decode step's few rows and a
// chunk's (CUDA's GEMM: the groups in one launch, a run of two 64-token tiles; an FP8 group in a launch of its
// own).
TYPED_TEST(LinearOps, LinearGrouped) {
  for (const Shape& s : shapes()) {
    const int64_t d = s.c.hidden_size, inter = s.c.moe_intermediate_size;
    const bool real = s.c.hidden_size > 1024;  // V4-Flash: two experts (their float64 copies are 64 MB each)
    const std::vector<std::vector<int64_t>> runs =
        real ? std::vector<std::vector<int64_t>>{{0, 1, 1, 3}, {0, 1, 1, 20}}
             : std::vector<std::vector<int64_t>>{{0, 2, 2, 5, 6}, {0, 2, 2, 70, 90}};
    for (const std::vector<int64_t>& row_begin : runs)
      for (const auto bits : {core::ActivationBits::Int24, core::ActivationBits::Int16}) {
        const int64_t groups = static_cast<int64_t>(row_begin.size()) - 1, n = row_begin.back();
        std::mt19937_64 rng(12);
        std::vector<StoredWeight> w;
        for (int64_t g = 0; g < groups; ++g)
          w.push_back(
              stored_weight(g == groups - 1 && !real ? WeightFormat::FP8 : WeightFormat::MXFP4, inter, d, 0.05, rng));
        const std::vector<float> x = normal(n * d, 1.0, rng);
        const auto out = this->run(Kind::LinearGrouped, [&](DeviceMemory& m) {
          std::vector<core::WeightView> views;
          for (const StoredWeight& sw : w) views.push_back(m.weight(sw));
          float* y = m.zeros<float>(n * inter);
          m.run(ops::LinearGrouped{views.data(), row_begin.data(), groups, m.upload(x), d, y, inter, bits});
          return Outputs().add("y", m.read(y, n * inter));
        });
        if (!out) return;
        Vec ref, tol;
        for (int64_t g = 0; g < groups; ++g) {
          const reference::Matrix W = w[sz(g)].decoded();
          for (int64_t t = row_begin[sz(g)]; t < row_begin[sz(g + 1)]; ++t) {
            const Vec xt =
                reference::mxfp4_input(slice(x, t, d), w[sz(g)].format == WeightFormat::MXFP4 ? bits_of(bits) : 0);
            const Vec y = W * xt, mag = abs_products(W, xt);
            ref.insert(ref.end(), y.begin(), y.end());
            for (double v : mag) tol.push_back(TypeParam::kTol.dot * v);
          }
        }
        expect_near(out->f32("y"), ref, tol,
                    s.name + " linear_grouped " + core::activation_bits_name(bits) + " x" + std::to_string(n));
      }
  }
}

struct ExpertCase {
  WeightFormat format;
  double limit;
  core::ActivationBits bits;
  int64_t m;  // tokens
};

// A routed expert (MXFP4, limit swiglu_limit, inputs large enough that the limit cuts) and, at the tiny
// shapes, the shared one (FP8, no limit); a few tokens and a chunk's (CUDA's GEMM from 16). The hidden vector's
// tolerance carries the gate and up products' (the dot tolerance of sum |w·x| each, through silu' <= 1.1 and the other
// factor); the output's adds the hidden vector's through w2.
TYPED_TEST(LinearOps, ExpertFfn) {
  for (const Shape& s : shapes()) {
    const int64_t d = s.c.hidden_size, inter = s.c.moe_intermediate_size;
    using B = core::ActivationBits;
    std::vector<ExpertCase> cases{{WeightFormat::MXFP4, s.c.swiglu_limit, B::Int24, 3},
                                  {WeightFormat::MXFP4, s.c.swiglu_limit, B::Int16, 17}};
    if (d <= 1024) {
      cases.push_back({WeightFormat::MXFP4, s.c.swiglu_limit, B::Int16, 3});
      cases.push_back({WeightFormat::FP8, 0.0, B::Int24, 3});
      cases.push_back({WeightFormat::FP8, 0.0, B::Int24, 70});
    }
    for (const ExpertCase& k : cases) {
      const int64_t m = k.m;
      std::mt19937_64 rng(13);
      const double sd = 0.15 / std::sqrt(static_cast<double>(d) / 256);  // gate values of ~±10 and beyond
      const StoredWeight w1 = stored_weight(k.format, inter, d, sd, rng),
                         w3 = stored_weight(k.format, inter, d, sd, rng);
      const StoredWeight w2 = stored_weight(k.format, d, inter, 0.05, rng);
      const std::vector<float> x = normal(m * d, 2.0, rng);
      const auto out = this->run(Kind::ExpertFfn, [&](DeviceMemory& dm) {
        ops::ExpertFfn op{dm.weight(w1),
                          dm.weight(w2),
                          dm.weight(w3),
                          dm.upload(x),
                          m,
                          k.limit,
                          dm.zeros<float>(m * inter),
                          dm.zeros<float>(m * inter),
                          dm.zeros<float>(m * d),
                          k.bits};
        dm.run(op);
        return Outputs().add("hidden", dm.read(op.gate, m * inter)).add("out", dm.read(op.out, m * d));
      });
      if (!out) return;
      const reference::ExpertWeights e{w1.decoded(), w2.decoded(), w3.decoded()};
      const int bits = k.format == WeightFormat::MXFP4 ? bits_of(k.bits) : 0;
      Vec ref_h, tol_h, ref_out, tol_out;
      int64_t limited = 0;
      for (int64_t t = 0; t < m; ++t) {
        const Vec xt = slice(x, t, d), xr = reference::mxfp4_input(xt, bits);
        Vec h;
        const Vec y = reference::expert_ffn(e, xt, k.limit, bits, &h);
        const Vec g = e.w1 * xr, u = e.w3 * xr, a1 = abs_products(e.w1, xr), a3 = abs_products(e.w3, xr);
        Vec hmag(sz(inter));
        for (int64_t i = 0; i < inter; ++i) {
          const double gi = k.limit > 0 ? std::min(g[sz(i)], k.limit) : g[sz(i)];
          const double ui = k.limit > 0 ? std::clamp(u[sz(i)], -k.limit, k.limit) : u[sz(i)];
          limited += k.limit > 0 && (g[sz(i)] > k.limit || std::fabs(u[sz(i)]) > k.limit);
          const double err =
              TypeParam::kTol.dot * (1.1 * std::fabs(ui) * a1[sz(i)] + std::fabs(reference::silu(gi)) * a3[sz(i)]);
          tol_h.push_back(err);
          hmag[sz(i)] = std::fabs(h[sz(i)]) + err / TypeParam::kTol.dot;
        }
        ref_h.insert(ref_h.end(), h.begin(), h.end());
        ref_out.insert(ref_out.end(), y.begin(), y.end());
        for (double v : abs_products(e.w2, hmag)) tol_out.push_back(TypeParam::kTol.dot * v);
      }
      const std::string what = s.name + " expert " + (k.format == WeightFormat::FP8 ? "fp8" : "mxfp4 ") +
                               (bits ? core::activation_bits_name(k.bits) : "") + " x" + std::to_string(m);
      if (k.limit > 0) {
        EXPECT_GT(limited, m * inter / 20) << what << ": the limit must cut some values";
      }
      expect_near(out->f32("hidden"), ref_h, tol_h, what + " hidden");
      expect_near(out->f32("out"), ref_out, tol_out, what + " out");
    }
  }
}

}  // namespace
}  // namespace ferry::runtime::ops_test
