// The decode cost model's attention term: a decode token's attention and indexer are a roofline of their KV reads
// and their arithmetic, so their FLOPs (planner::attention_flops at the context's end) bound the step when the
// bandwidth is plentiful, and the bytes alone when the FLOP rate is.
#include <gtest/gtest.h>

#include "planner/core/units.h"
#include "planner/plan.h"

using namespace ferry;
using namespace ferry::planner;

namespace {

// A CPU-only machine whose every rate is the calibration's: decode's non-routed part reads at `bw` and computes
// attention at `flops`.
Hardware cpu_with_rates(double bw, double flops) {
  Hardware hw;
  hw.host.ram_bytes = int64_t{2} << 40;
  hw.host.memory_bandwidth = kDefaultHostBandwidth;
  hw.host.cores = kDefaultHostCores;
  hw.host.gflops_per_core = kDefaultGflopsPerCore;
  hw.host_reserve_bytes = kDefaultHostReserve;
  hw.source = "test";
  hw.calibration.source = "test";
  hw.calibration.triad = kDefaultHostBandwidth;
  hw.calibration.host_dense_bw = bw;
  hw.calibration.host_expert_bw = 1e12;
  hw.calibration.host_dense_flops = flops;
  hw.calibration.host_expert_flops = 1e12;
  return hw;
}

Plan plan_at(const ModelSpec& s, const Hardware& hw, int64_t ctx) {
  PlanOptions o;
  o.ctx = ctx;
  o.kv_type = KvType::FP8;
  return make_plan(s, hw, o);
}

// The attention and indexer FLOPs of one decode token at `ctx`, over the layers decoding runs (MTP aside).
double decode_attention_flops(const ModelSpec& s, const Plan& p, int64_t ctx) {
  double f = 0;
  for (const LayerPlan& l : p.layers) {
    if (l.mtp) continue;
    const AttnFlops a = attention_flops(s.config, l.layer, double(ctx));
    f += a.attn + a.index;
  }
  return f;
}

}  // namespace

TEST(DecodeCost, WithBandwidthToSpareTheAttentionTermIsItsFlopsAtTheRate) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const double flops = 500e9;
  for (int64_t ctx : {int64_t{65536}, int64_t{1} << 20}) {
    const Plan p = plan_at(s, cpu_with_rates(1e18, flops), ctx);
    ASSERT_TRUE(p.fits) << ctx;
    const double expected_ms = 1e3 * decode_attention_flops(s, p, ctx) / flops;
    EXPECT_NEAR(p.cost.decode_attention_ms, expected_ms, 1e-6 * expected_ms) << ctx;
    // The weights' reads at 1 EB/s are nanoseconds: the non-routed step is the arithmetic.
    EXPECT_NEAR(p.cost.decode_gpu_ms, expected_ms, 1e-3 * expected_ms) << ctx;
    EXPECT_TRUE(p.cost.decode_attention_compute_bound) << ctx;
    EXPECT_NE(p.cost.decode_bottleneck.find("arithmetic"), std::string::npos) << p.cost.decode_bottleneck;
  }
}

TEST(DecodeCost, WithArithmeticToSpareDecodeIsItsBytesOverTheBandwidth) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const Plan a = plan_at(s, cpu_with_rates(20e9, 1e21), 1 << 20);
  const Plan b = plan_at(s, cpu_with_rates(10e9, 1e21), 1 << 20);
  EXPECT_FALSE(a.cost.decode_attention_compute_bound);
  EXPECT_NEAR(b.cost.decode_gpu_ms, 2 * a.cost.decode_gpu_ms, 1e-9 * a.cost.decode_gpu_ms);
  EXPECT_NEAR(b.cost.decode_attention_ms, 2 * a.cost.decode_attention_ms, 1e-9 * a.cost.decode_attention_ms);
  // Halving the FLOP rate changes nothing while the reads bound every layer.
  EXPECT_DOUBLE_EQ(plan_at(s, cpu_with_rates(20e9, 5e20), 1 << 20).cost.decode_gpu_ms, a.cost.decode_gpu_ms);
}

TEST(DecodeCost, EachLayerPaysTheSlowerOfItsReadsAndItsArithmetic) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const double bw = 20e9;
  const Plan reads = plan_at(s, cpu_with_rates(bw, 1e21), 1 << 20);
  const double kv_reads = reads.cost.decode_attention_ms;
  // The FLOP rate at which the arithmetic takes as long as the reads, summed over the layers: each layer's
  // slower part then saves about half of the sum of both.
  const double flops = 1e9 * plan_at(s, cpu_with_rates(1e18, 1e9), 1 << 20).cost.decode_attention_ms / kv_reads;
  const double compute = plan_at(s, cpu_with_rates(1e18, flops), 1 << 20).cost.decode_attention_ms;
  const Plan both = plan_at(s, cpu_with_rates(bw, flops), 1 << 20);
  EXPECT_GE(both.cost.decode_attention_ms, std::max(kv_reads, compute));
  EXPECT_LT(both.cost.decode_attention_ms, 0.75 * (kv_reads + compute));
  // The weights' reads come on top, unchanged.
  EXPECT_NEAR(both.cost.decode_gpu_ms - both.cost.decode_attention_ms,
              reads.cost.decode_gpu_ms - reads.cost.decode_attention_ms, 1e-9 * reads.cost.decode_gpu_ms);
}

TEST(DecodeCost, ALongContextSlowsA3090sDecodeByTheIndexersArithmetic) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  Hardware hw;
  hw.gpus.push_back(parse_gpu_spec("rtx3090"));
  hw.host.ram_bytes = 256 * core::kGiB;
  hw.host.memory_bandwidth = kDefaultHostBandwidth;
  hw.host.cores = kDefaultHostCores;
  hw.host.gflops_per_core = kDefaultGflopsPerCore;
  hw.gpu_reserve_bytes = kDefaultGpuReserve;
  hw.host_reserve_bytes = kDefaultHostReserve;
  hw.source = "test";
  const Plan p = plan_at(s, hw, 1 << 20);
  ASSERT_TRUE(p.fits);
  EXPECT_TRUE(p.cost.decode_attention_compute_bound);
  // At least the indexer's FLOPs at the 3090's reachable INT8 rate: half of its 284 dense TOPS.
  double index = 0;
  for (const LayerPlan& l : p.layers)
    if (!l.mtp) index += attention_flops(s.config, l.layer, double(1 << 20)).index;
  EXPECT_GE(p.cost.decode_attention_ms, 1e3 * index / (0.5 * 284e12));
  EXPECT_LT(p.cost.decode_attention_ms, p.cost.decode_gpu_ms);
}
