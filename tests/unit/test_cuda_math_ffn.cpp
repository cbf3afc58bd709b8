// The SwiGLU of the CUDA expert feed-forward (runtime/kernels/cuda/ffn_math.h), compiled by g++ and run on the
// CPU: bitwise what runtime/backend/host_ops.cpp's ExpertFfn computes from the same gate and up values, with
// and without the limit, at the limit's edges, for large magnitudes (exp overflowing and underflowing), signed
// zeros, infinities and NaN. On the device only expf differs (within 2 ulp; the op suite's tolerance).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cuda/ffn_math.h"

namespace ferry::runtime::cuda {
namespace {

// The host's ExpertFfn middle, element by element (host_ops.cpp).
float host_swiglu(float g, float u, float limit) {
  if (limit > 0) {
    g = std::min(g, limit);
    u = std::clamp(u, -limit, limit);
  }
  return cpu::silu(g) * u;
}

bool same(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) || (std::isnan(a) && std::isnan(b));
}

TEST(CudaFfnMath, SwigluIsTheHostsBitwise) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> values{0.0f,   -0.0f,   1.0f,   -1.0f,   10.0f, -10.0f, 10.000001f, 9.999999f, 88.7f, -88.7f,
                            104.0f, -104.0f, 1e-30f, -1e-30f, 1e30f, -1e30f, inf,        -inf,      nan};
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 6.0f);
  for (int i = 0; i < 4000; ++i) values.push_back(normal(rng));
  int64_t limited = 0;
  for (float limit : {0.0f, 10.0f, 7.0f}) {
    for (size_t i = 0; i < values.size(); ++i) {
      const float g = values[i], u = values[(i * 7 + 3) % values.size()];
      limited += limit > 0 && (g > limit || std::fabs(u) > limit);
      ASSERT_TRUE(same(swiglu(g, u, limit), host_swiglu(g, u, limit)))
          << "gate " << g << " up " << u << " limit " << limit << ": " << swiglu(g, u, limit) << " vs "
          << host_swiglu(g, u, limit);
    }
  }
  EXPECT_GT(limited, 100) << "the cases must reach the limit";
}

}  // namespace
}  // namespace ferry::runtime::cuda
