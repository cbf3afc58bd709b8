// The per-token math of the CUDA mHC kernels (runtime/kernels/cuda/hc_math.h), compiled by g++ and run on the
// CPU in the order the CPU sums: the mix logits, the pre/post/head weights, the Sinkhorn-normalised residual
// mix and the mixed streams must be bitwise what runtime/kernels/cpu's hc_pre, hc_post and hc_head compute. On
// the device only the order of the two double sums (a block's tree) and CUDA's expf differ; the op suite
// (tests/backend_ops) bounds those on a GPU.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cuda/hc_math.h"
#include "runtime/kernels/cuda/norm_rope_math.h"
#include "same_float.h"

namespace ferry::runtime::cuda {
namespace {

// One token's streams and mHC parameters; scales large enough that the softmax and Sinkhorn move every weight.
struct HcCase {
  int64_t hc, d;
  std::vector<float> H, fn, scale, base;
};

std::vector<float> normal(size_t n, float sd, std::mt19937_64& rng) {
  std::normal_distribution<float> g(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = g(rng);
  return v;
}

HcCase hc_case(int64_t hc, int64_t d, int64_t rows, std::mt19937_64& rng) {
  const auto n = static_cast<size_t>(hc * d);
  return {hc,
          d,
          normal(n, 1.0f, rng),
          normal(static_cast<size_t>(rows) * n, 1.0f / std::sqrt(float(n)), rng),
          normal(3, 2.0f, rng),
          normal(static_cast<size_t>(rows), 1.0f, rng)};
}

// The logits as the kernel computes them, with the sums in the CPU's order.
std::vector<float> logits(const HcCase& k, int64_t rows, double eps) {
  const int64_t n = k.hc * k.d;
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += square(k.H[size_t(i)]);
  const double r = hc_inverse_rms(ss, n, eps);
  std::vector<float> out(static_cast<size_t>(rows));
  for (int64_t m = 0; m < rows; ++m) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i)
      acc += dmul_rn(static_cast<double>(k.fn[size_t(m * n + i)]), static_cast<double>(k.H[size_t(i)]));
    out[size_t(m)] = hc_logit(acc, r);
  }
  return out;
}

struct HcShape {
  int64_t hc, d;
};
// The tiny model's and V4-Flash's shapes, and the kernels' extremes (1 and kMaxHc streams).
constexpr HcShape kShapes[] = {{4, 256}, {4, 4096}, {1, 64}, {2, 96}, {kMaxHc, 128}};

TEST(CudaMath, HcPreIsTheCpusBitForBit) {
  std::mt19937_64 rng(31);
  for (const HcShape sh : kShapes)
    for (const int64_t iters : {0, 1, 2, 20})
      for (const double hc_eps : {1e-6, 1e-2}) {
        const int64_t hc = sh.hc, rows = (2 + hc) * hc, mw = 2 * hc + hc * hc;
        const HcCase k = hc_case(hc, sh.d, rows, rng);
        const double norm_eps = 1e-6;
        std::vector<float> want_mix(static_cast<size_t>(mw)), want_x(static_cast<size_t>(sh.d));
        cpu::HcMix m{want_mix.data(), want_mix.data() + hc, want_mix.data() + 2 * hc};
        cpu::hc_pre(k.H.data(), hc, sh.d, k.fn.data(), k.scale.data(), k.base.data(), iters, hc_eps, norm_eps, m,
                    want_x.data());
        std::vector<float> mix(static_cast<size_t>(mw));
        hc_pre_weights(logits(k, rows, norm_eps).data(), hc, k.scale.data(), k.base.data(), iters,
                       static_cast<float>(hc_eps), mix.data(), mix.data() + hc, mix.data() + 2 * hc);
        const std::string what = "hc " + std::to_string(hc) + " d " + std::to_string(sh.d) + " iters " +
                                 std::to_string(iters) + " eps " + std::to_string(hc_eps);
        for (int64_t i = 0; i < mw; ++i)
          ASSERT_TRUE(same_float(mix[size_t(i)], want_mix[size_t(i)])) << what << " mix " << i;
        for (int64_t c = 0; c < sh.d; ++c)
          ASSERT_TRUE(same_float(hc_weighted_sum(mix.data(), k.H.data(), hc, sh.d, c), want_x[size_t(c)]))
              << what << " x " << c;
      }
}

TEST(CudaMath, HcHeadIsTheCpusBitForBit) {
  std::mt19937_64 rng(32);
  for (const HcShape sh : kShapes)
    for (const double hc_eps : {1e-6, 1e-2}) {
      const int64_t hc = sh.hc;
      const HcCase k = hc_case(hc, sh.d, hc, rng);
      std::vector<float> want(static_cast<size_t>(sh.d));
      cpu::hc_head(k.H.data(), hc, sh.d, k.fn.data(), k.scale.data(), k.base.data(), hc_eps, 1e-6, want.data());
      const std::vector<float> logit = logits(k, hc, 1e-6);
      std::vector<float> w(static_cast<size_t>(hc));
      for (int64_t s = 0; s < hc; ++s)
        w[size_t(s)] = hc_gate(logit[size_t(s)], k.scale[0], k.base[size_t(s)], static_cast<float>(hc_eps));
      for (int64_t c = 0; c < sh.d; ++c)
        ASSERT_TRUE(same_float(hc_weighted_sum(w.data(), k.H.data(), hc, sh.d, c), want[size_t(c)]))
            << "hc " << hc << " d " << sh.d << " y " << c;
    }
}

TEST(CudaMath, HcPostIsTheCpusBitForBit) {
  std::mt19937_64 rng(33);
  for (const HcShape sh : kShapes) {
    const int64_t hc = sh.hc, d = sh.d, mw = 2 * hc + hc * hc;
    const std::vector<float> H = normal(size_t(hc * d), 1.0f, rng), y = normal(size_t(d), 1.0f, rng);
    const std::vector<float> mix = normal(size_t(mw), 1.0f, rng);
    std::vector<float> want = H;
    const cpu::HcMix m{const_cast<float*>(mix.data()), const_cast<float*>(mix.data()) + hc,
                       const_cast<float*>(mix.data()) + 2 * hc};
    cpu::hc_post(y.data(), m, hc, d, want.data());
    for (int64_t c = 0; c < d; ++c) {
      float old[kMaxHc];
      for (int64_t s = 0; s < hc; ++s) old[s] = H[size_t(s * d + c)];
      for (int64_t j = 0; j < hc; ++j)
        ASSERT_TRUE(same_float(hc_post_value(mix.data() + hc, mix.data() + 2 * hc, hc, j, y[size_t(c)], old),
                               want[size_t(j * d + c)]))
            << "hc " << hc << " stream " << j << " column " << c;
    }
  }
}

}  // namespace
}  // namespace ferry::runtime::cuda
