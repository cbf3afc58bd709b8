// The per-token math of the CUDA MoE kernels (runtime/kernels/cuda/moe_math.h), compiled by g++ and run on the
// CPU as the kernels run it (every expert's rank, every column of the combine): the router's scores, choices
// and weights, and the combined rows, must be bitwise what the host's Route and MoeCombine ops compute
// (runtime/backend/host_ops.cpp), ties at the top-k cut included. On the device only expf and log1pf are
// CUDA's; the op suite (tests/backend_ops) bounds that on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "runtime/backend/host_ops.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cuda/moe_math.h"
#include "same_float.h"

namespace ferry::runtime::cuda {
namespace {

TEST(CudaMath, RouteScoreIsTheCpus) {
  std::vector<float> xs = {
      0.0f,  -0.0f, 20.0f,  std::nextafter(20.0f, 0.0f),      std::nextafter(20.0f, 30.0f), -87.0f, -104.0f, -120.0f,
      88.0f, 1e30f, -1e30f, std::numeric_limits<float>::min()};
  for (float x = -40.0f; x < 40.0f; x += 1.0f / 1024) xs.push_back(x);
  std::mt19937_64 rng(41);
  std::normal_distribution<float> g(0.0f, 3.0f);
  for (int i = 0; i < 200000; ++i) xs.push_back(g(rng));
  for (float x : xs) ASSERT_TRUE(same_float(route_score(x), std::sqrt(cpu::softplus(x)))) << "logit " << x;
}

// The kernel's router for one launch: scores in place, each expert's rank (or the token's tid2eid row), weights.
void kernel_route(std::vector<float>& scores, int64_t n, int64_t E, int64_t k, const std::vector<float>* bias,
                  const std::vector<int32_t>* tid2eid, const std::vector<int32_t>& tokens, float scaling,
                  std::vector<int32_t>& ids, std::vector<float>& weights) {
  for (int64_t t = 0; t < n; ++t) {
    float* score = scores.data() + t * E;
    std::vector<float> biased(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      score[e] = route_score(score[e]);
      if (bias) biased[static_cast<size_t>(e)] = add_rn(score[e], (*bias)[static_cast<size_t>(e)]);
    }
    int32_t* chosen = ids.data() + t * k;
    std::fill(chosen, chosen + k, -1);
    if (tid2eid) {
      for (int64_t i = 0; i < k; ++i)
        chosen[i] = (*tid2eid)[static_cast<size_t>(tokens[static_cast<size_t>(t)] * k + i)];
    } else {
      for (int64_t e = 0; e < E; ++e) {
        const int64_t rank = route_rank(biased.data(), E, e);
        if (rank < k) chosen[rank] = static_cast<int32_t>(e);
      }
    }
    route_weights(score, chosen, k, scaling, weights.data() + t * k);
  }
}

struct RouteShape {
  int64_t E, k;
};

// Random logits and biases, and tokens whose best experts tie: k + 2 at the top, and a class straddling the cut.
TEST(CudaMath, RouteIsTheHostsBitForBit) {
  std::mt19937_64 rng(42);
  std::normal_distribution<float> g(0.0f, 2.0f), gb(0.0f, 0.1f);
  for (const RouteShape sh : {RouteShape{256, 6}, RouteShape{16, 2}, RouteShape{8, 8}, RouteShape{64, 1}})
    for (const bool hash : {false, true}) {
      const int64_t n = 6, E = sh.E, k = sh.k;
      std::vector<float> logits(static_cast<size_t>(n * E)), bias(static_cast<size_t>(E));
      for (float& v : logits) v = g(rng);
      for (float& v : bias) v = gb(rng);
      for (int64_t e = 0; e < E; e += 3) bias[static_cast<size_t>(e)] = 0;
      for (int64_t i = 0, e = 0; i < k + 2 && e < E; ++i, e += 3)
        logits[static_cast<size_t>(4 * E + e)] = 9;                // top tie
      for (int64_t i = 0, e = 0; i < k + 2 && e < E; ++i, e += 3)  // a tie class across the cut
        logits[static_cast<size_t>(5 * E + e)] = i < k / 2 ? 12.0f : 7.0f;
      std::vector<int32_t> tid2eid, tokens(static_cast<size_t>(n));
      for (int64_t v = 0; v < 10; ++v) {
        std::vector<int32_t> all(static_cast<size_t>(E));
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng);
        tid2eid.insert(tid2eid.end(), all.begin(), all.begin() + k);
      }
      for (int64_t t = 0; t < n; ++t) tokens[static_cast<size_t>(t)] = static_cast<int32_t>((7 * t + 3) % 10);
      const float scaling = 1.5f;
      std::vector<float> want_scores = logits, want_w(static_cast<size_t>(n * k));
      std::vector<int32_t> want_ids(static_cast<size_t>(n * k));
      run_on_host(ops::Route{want_scores.data(), n, E, k, hash ? nullptr : bias.data(), hash ? tid2eid.data() : nullptr,
                             hash ? tokens.data() : nullptr, scaling, want_ids.data(), want_w.data()});
      std::vector<float> scores = logits, w(static_cast<size_t>(n * k));
      std::vector<int32_t> ids(static_cast<size_t>(n * k));
      kernel_route(scores, n, E, k, hash ? nullptr : &bias, hash ? &tid2eid : nullptr, tokens, scaling, ids, w);
      const std::string what = "E " + std::to_string(E) + " k " + std::to_string(k) + (hash ? " hash" : " score");
      EXPECT_EQ(ids, want_ids) << what;
      for (size_t i = 0; i < scores.size(); ++i) ASSERT_TRUE(same_float(scores[i], want_scores[i])) << what << " " << i;
      for (size_t i = 0; i < w.size(); ++i) ASSERT_TRUE(same_float(w[i], want_w[i])) << what << " weight " << i;
    }
}

// A chunk's expert outputs in a shuffled sorted order, combined into y (added, and not) as the kernel does: each
// token's positions found by a scan of `order`, sorted, then every column.
TEST(CudaMath, MoeCombineIsTheHostsBitForBit) {
  std::mt19937_64 rng(43);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (const int64_t k : {int64_t{1}, int64_t{6}, int64_t{8}})
    for (const bool add : {true, false}) {
      const int64_t n = 7, d = 96;
      std::vector<float> eo(static_cast<size_t>(n * k * d)), y(static_cast<size_t>(n * d)),
          w(static_cast<size_t>(n * k));
      for (float& v : eo) v = g(rng);
      for (float& v : y) v = g(rng);
      for (float& v : w) v = std::fabs(g(rng));
      std::vector<int32_t> order(static_cast<size_t>(n * k));
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<float> want = y;
      run_on_host(ops::MoeCombine{eo.data(), order.data(), w.data(), n, k, d, want.data(), add});
      for (int64_t t = 0; t < n; ++t) {
        std::vector<int32_t> pos;
        for (int64_t p = n * k - 1; p >= 0; --p)  // the kernel's atomics find them in any order
          if (order[static_cast<size_t>(p)] / k == t) pos.push_back(static_cast<int32_t>(p));
        ASSERT_EQ(static_cast<int64_t>(pos.size()), k);
        sort_positions(pos.data(), k);
        std::vector<float> wt(static_cast<size_t>(k));
        for (int64_t i = 0; i < k; ++i)
          wt[static_cast<size_t>(i)] = w[static_cast<size_t>(order[static_cast<size_t>(pos[static_cast<size_t>(i)])])];
        for (int64_t j = 0; j < d; ++j)
          ASSERT_TRUE(same_float(
              combine_value(wt.data(), pos.data(), k, eo.data(), d, j, y[static_cast<size_t>(t * d + j)], add),
              want[static_cast<size_t>(t * d + j)]))
              << "k " << k << " token " << t << " column " << j << (add ? " add" : "");
      }
    }
}

}  // namespace
}  // namespace ferry::runtime::cuda
