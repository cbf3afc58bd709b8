// The placement solver and cost model: what fits where, exact memory accounting, and speeds within the
// physical ceilings of ../shared/spec/hardware.md.
#include <gtest/gtest.h>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/memory.h"
#include "planner/plan.h"

using namespace ferry;
using namespace ferry::planner;

namespace {

Hardware workstation(int nodes = 1, const char* gpu = "rtx3090", int64_t ram = 256 * core::kGiB) {
  Hardware hw;
  hw.gpus.push_back(parse_gpu_spec(gpu));
  hw.host.ram_bytes = ram;
  hw.host.memory_bandwidth = kDefaultHostBandwidth;
  hw.host.numa_nodes = 1;
  hw.host.cores = kDefaultHostCores;
  hw.host.gflops_per_core = kDefaultGflopsPerCore;
  hw.nodes = nodes;
  hw.gpu_reserve_bytes = kDefaultGpuReserve;
  hw.host_reserve_bytes = kDefaultHostReserve;
  hw.source = "test";
  return hw;
}

PlanOptions at_ctx(int64_t ctx) {
  PlanOptions o;
  o.ctx = ctx;
  return o;
}

int64_t sum_prefix(const Plan& p, const std::string& prefix, DeviceKind kind) {
  int64_t s = 0;
  for (const auto& d : p.devices)
    if (d.kind == kind)
      for (const auto& [c, b] : d.use)
        if (c.name.rfind(prefix, 0) == 0) s += b;
  return s;
}

bool suggests(const Plan& p, const std::string& text) {
  for (const auto& s : p.suggestions)
    if (s.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(Placement, FlashOn3090At1MFitsWithKvOnGpuAndExpertsInRam) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const Plan p = make_plan(s, workstation(), at_ctx(1048576));
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.kv_type, KvType::FP8);
  // Every KV byte on the GPU, exactly the KV formula's total.
  EXPECT_EQ(sum_prefix(p, "kv.", DeviceKind::Gpu), kv_total(kv_cache_bytes(s.config, KvType::FP8, 1048576, 1, false)));
  EXPECT_EQ(sum_prefix(p, "kv.", DeviceKind::Host), 0);
  EXPECT_GT(p.kv[size_t(KvKind::CsaIndexer)], 0);
  // Every weight exactly once: non-routed on the GPU, embedding + routed experts in RAM (MTP not loaded).
  const int64_t on_gpu = sum_prefix(p, "weights.", DeviceKind::Gpu);
  const int64_t on_host = sum_prefix(p, "weights.", DeviceKind::Host);
  EXPECT_EQ(on_gpu + on_host, s.held_bytes_total() - s.mtp_bytes());
  EXPECT_EQ(on_host, s.global[size_t(core::WeightClass::Embedding)] + 43 * 256 * s.expert_bytes());
  // The leftover VRAM became an expert cache, within capacity.
  const auto& gpu = p.devices[0];
  EXPECT_EQ(gpu.kind, DeviceKind::Gpu);
  EXPECT_GT(gpu.bytes_of("expert_cache"), 0);
  EXPECT_LE(gpu.used(), gpu.capacity);
  EXPECT_LT(gpu.capacity - gpu.used(), 43 * s.expert_bytes());  // less than one more slot per layer is left
  for (const auto& l : p.layers) {
    ASSERT_EQ(l.runs.size(), 1u);
    EXPECT_EQ(l.runs[0].device, 0);
    EXPECT_EQ(expert_counts(p, l, 0).in_ram, 256);
    EXPECT_GT(l.runs[0].cache_slots, 0);
  }
}

TEST(Placement, FlashDecodeSpeedIsWithinHardwareCeilings) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const Plan p = make_plan(s, workstation(), at_ctx(1048576));
  // hardware.md: 3.45 GB of routed experts per token from 2-channel DDR5 (76.8 GB/s) caps decode at 22.3 tok/s
  // with no cache; a GPU cache may lift it, but not past the 3090's VRAM ceiling (271 tok/s).
  EXPECT_NEAR(p.cost.decode_ceiling_tok_s, 22.3, 0.1);
  EXPECT_GT(p.cost.decode_tok_s, 5);
  EXPECT_LT(p.cost.decode_tok_s, 271);
  EXPECT_GT(p.cost.expert_hit_rate, 0.0);
  EXPECT_LT(p.cost.expert_hit_rate, 1.0);
  EXPECT_NE(p.cost.decode_bottleneck.find("host RAM"), std::string::npos);
  // Without a cache the routed experts alone bound decode by the RAM ceiling.
  PlanOptions off = at_ctx(1048576);
  off.expert_cache = ExpertCacheMode::Off;
  const Plan q = make_plan(s, workstation(), off);
  EXPECT_LT(q.cost.decode_tok_s, 22.3);
  EXPECT_LT(q.cost.decode_tok_s, p.cost.decode_tok_s);
  EXPECT_EQ(q.cost.expert_hit_rate, 0.0);
  // Prefill here is bound by the experts in RAM, whatever the prompt length.
  EXPECT_GE(p.cost.prefill_tok_s, p.cost.prefill_full_tok_s);
}

TEST(Placement, LongPromptsPayForTheIndexerWhenComputeBound) {
  // With every expert on two H200s, prefill is GPU compute: a 1M-token prompt's mean position costs the
  // indexer a scan of 128K compressed keys per CSA layer and token, so the average rate falls.
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  Hardware hw = workstation(1, "h200");
  hw.gpus.push_back(parse_gpu_spec("h200"));
  const Plan p = make_plan(s, hw, at_ctx(1048576));
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.cost.prefill_bottleneck, "GPU compute");
  EXPECT_LT(p.cost.prefill_full_tok_s, 0.5 * p.cost.prefill_tok_s);
}

TEST(Placement, BigChunkPrefillStreamsExpertsAndIsBoundedByTheIndexer) {
  // V4-Flash on one RTX 3090 at 1M: with 512-token chunks the CPU computes the experts; the planner's chunk
  // streams every expert of a layer once per chunk instead.
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  PlanOptions o = at_ctx(1048576);
  const Plan small = make_plan(s, workstation(), o);
  o.choose_ubatch = true;
  const Plan p = make_plan(s, workstation(), o);
  ASSERT_TRUE(p.fits);
  EXPECT_GT(p.options.ubatch, 512);
  EXPECT_LE(p.options.ubatch, kMaxPrefillChunk);
  EXPECT_EQ(p.cost.prefill_full_expert_path, "stream to GPU");
  EXPECT_GT(p.cost.prefill_full_tok_s, 5 * small.cost.prefill_full_tok_s);
  EXPECT_GE(p.cost.decode_tok_s, 0.95 * small.cost.decode_tok_s);
  EXPECT_NEAR(p.cost.prefill_full_s * p.cost.prefill_full_tok_s, 1048576, 1);
  // An upper bound from the indexer alone: each CSA layer scores pos / 4 compressed keys with 64 heads x 128
  // dims per token, 2 x 64 x 128 x pos / 4 FLOPs; summed over a 1M prompt, at the 3090's dense INT8 peak
  // (284 TOPS, GA102 whitepaper), no plan can be faster.
  const core::ModelConfig& c = s.config;
  int64_t csa = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) csa += c.compress_ratio(l) == 4;
  const double n = 1048576;
  const double index_flops = double(csa) * 2 * 64 * 128 * (n * n / 2) / 4;
  EXPECT_LT(p.cost.prefill_full_s, 2 * 3600);
  EXPECT_GT(p.cost.prefill_full_s, index_flops / 284e12);
  // --ubatch keeps its chunk.
  o.ubatch = 1024;
  o.choose_ubatch = false;
  EXPECT_EQ(make_plan(s, workstation(), o).options.ubatch, 1024);
}

TEST(Placement, PrefillSplitIsEachPartsFlopsAtTheGpusRates) {
  // V4-Flash on one RTX 3090 (71 dense BF16 TFLOPS) at 1M with 16K chunks: a token at mid-context (position
  // 512K) costs, summed over the layers, at half of peak (attention, routed experts' grouped GEMM) and at the
  // GeForce card's 4x INT8 rate for the indexer:
  //   attention  4 x heads x head_dim x keys, keys = window + top-k (CSA), window + pos/128 (HCA), window (SWA);
  //   indexer    2 x index heads x index dim x pos/4 (CSA);
  //   experts    top-k x 2 x 3 x hidden x moe_inter (MoE layers), every use on the GPU (cached or streamed).
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  PlanOptions o = at_ctx(1048576);
  o.ubatch = 16384;
  const Plan p = make_plan(s, workstation(), o);
  ASSERT_TRUE(p.fits);
  const core::ModelConfig& c = s.config;
  const double pos = 1048576 / 2, half_peak = 71e12 / 2;
  double attn = 0, index = 0, experts = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    double keys = double(c.sliding_window);
    if (c.compress_ratio(l) == 4) keys += double(c.index_topk);
    if (c.compress_ratio(l) == 128) keys += pos / 128;
    attn += 4.0 * double(c.num_attention_heads * c.head_dim) * keys / half_peak;
    if (c.compress_ratio(l) == 4)
      index += 2.0 * double(c.index_n_heads * c.index_head_dim) * (pos / 4) / (4 * half_peak);
    if (c.is_moe_layer(l))
      experts += double(c.num_experts_per_tok) * 6 * double(c.hidden_size * c.moe_intermediate_size) / half_peak;
  }
  const PrefillSplit& split = p.cost.prefill_full_split;
  EXPECT_NEAR(split.attention, attn, 1e-9 * attn);
  EXPECT_NEAR(split.indexer, index, 1e-9 * index);
  EXPECT_NEAR(split.experts, experts, 1e-9 * experts);
  EXPECT_GT(split.projections, 0);
  // Compute-bound with the copies hidden: the parts are the chunk's time but for the head and the first copy.
  const double per_token = 1 / p.cost.prefill_full_tok_s;
  EXPECT_LE(split.total(), per_token);
  EXPECT_GT(split.total(), 0.97 * per_token);
}

TEST(Placement, ProOnOneWorkstationDoesNotFitAndFourNodesDo) {
  const ModelSpec s = load_model_spec("deepseek-v4-pro");
  const Plan p = make_plan(s, workstation(), PlanOptions{});
  EXPECT_FALSE(p.fits);
  bool host_short = false;
  for (const auto& sf : p.shortfalls)
    if (sf.device == "host") host_short = sf.need > 700 * core::kGiB;
  EXPECT_TRUE(host_short);
  // The nearest node count that fits is suggested, and it does fit.
  int suggested_nodes = 0;
  for (const auto& sg : p.suggestions)
    if (sg.rfind("--nodes ", 0) == 0) suggested_nodes = std::stoi(sg.substr(8));
  ASSERT_GE(suggested_nodes, 2);
  EXPECT_TRUE(make_plan(s, workstation(suggested_nodes), PlanOptions{}).fits);
  EXPECT_FALSE(make_plan(s, workstation(suggested_nodes - 1), PlanOptions{}).fits);

  const Plan q = make_plan(s, workstation(4), PlanOptions{});
  ASSERT_TRUE(q.fits);
  // Experts sharded: every node's RAM holds 96 of each layer's 384 experts.
  for (const auto& d : q.devices) {
    if (d.kind != DeviceKind::Host) continue;
    EXPECT_EQ(d.bytes_of("weights.routed_experts") % s.expert_bytes(), 0);
  }
  int64_t experts_in_ram = 0;
  for (const auto& d : q.devices)
    if (d.kind == DeviceKind::Host) experts_in_ram += d.bytes_of("weights.routed_experts");
  int64_t experts_on_gpu = 0;
  for (const auto& d : q.devices)
    if (d.kind == DeviceKind::Gpu) experts_on_gpu += d.bytes_of("weights.routed_experts");
  EXPECT_EQ(experts_in_ram + experts_on_gpu, 61 * 384 * s.expert_bytes());
  for (const auto& l : q.layers)
    for (int n = 0; n < 4; ++n) EXPECT_EQ(expert_counts(q, l, n).held, 96);
}

TEST(Placement, WorkspaceDependsOnUbatchNotContext) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const Plan a = make_plan(s, workstation(), at_ctx(1024));
  const Plan b = make_plan(s, workstation(), at_ctx(65536));
  EXPECT_EQ(a.devices[0].bytes_of("workspace"), b.devices[0].bytes_of("workspace"));
  EXPECT_EQ(a.devices[0].bytes_of("workspace"),
            cpu_forward_workspace(s.config, a.kv_type, 512, workstation().host.cores, false).bytes());
  // A bigger chunk's workspace is held throughout when its prefill may not borrow the expert cache.
  PlanOptions big = at_ctx(1024);
  big.ubatch = 2048;
  big.borrow_cache_for_prefill = false;
  const Plan c = make_plan(s, workstation(), big);
  EXPECT_EQ(c.devices[0].bytes_of("workspace"),
            cpu_forward_workspace(s.config, c.kv_type, 1024, workstation().host.cores, false).bytes());
  EXPECT_EQ(c.prefill_borrowed(), 0);
}

TEST(Placement, APrefillChunkBorrowsTheExpertCacheSoDecodeKeepsAllOfIt) {
  // V4-Flash on an RTX 3090 at 1M: a 16K-token chunk's workspace (9 GiB) would take most of the expert cache
  // through decode; borrowed from the cache while a prompt is fed, it takes none of it.
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const int cores = workstation().host.cores;
  PlanOptions o = at_ctx(1048576);
  const Plan small = make_plan(s, workstation(), o);
  o.ubatch = 16384;
  const Plan big = make_plan(s, workstation(), o);
  o.borrow_cache_for_prefill = false;
  const Plan held = make_plan(s, workstation(), o);
  ASSERT_TRUE(small.fits && big.fits && held.fits);
  const DevicePlan& gpu = big.devices[0];
  ASSERT_EQ(gpu.kind, DeviceKind::Gpu);
  const int64_t chunk_ws = cpu_forward_workspace(s.config, big.kv_type, 16384, cores, false).bytes();
  const int64_t resident_ws = cpu_forward_workspace(s.config, big.kv_type, 512, cores, false).bytes();
  EXPECT_EQ(gpu.prefill_borrowed, chunk_ws);
  EXPECT_EQ(big.prefill_borrowed(), chunk_ws);
  EXPECT_EQ(big.resident_chunk(), 512);
  EXPECT_EQ(gpu.bytes_of("workspace"), resident_ws);
  EXPECT_LE(gpu.prefill_borrowed, gpu.bytes_of("expert_cache"));
  // Decode sees the 512-token plan's cache and speed; holding the chunk's workspace costs both.
  EXPECT_EQ(gpu.bytes_of("expert_cache"), small.devices[0].bytes_of("expert_cache"));
  EXPECT_DOUBLE_EQ(big.cost.decode_tok_s, small.cost.decode_tok_s);
  EXPECT_EQ(held.prefill_borrowed(), 0);
  EXPECT_EQ(held.resident_chunk(), 16384);
  EXPECT_EQ(held.devices[0].bytes_of("workspace"), chunk_ws);
  EXPECT_LT(held.devices[0].bytes_of("expert_cache"), gpu.bytes_of("expert_cache"));
  EXPECT_LT(held.cost.decode_tok_s, big.cost.decode_tok_s);
}

TEST(Placement, WithoutACacheToBorrowTheChunksWorkspaceIsHeld) {
  // No expert cache (every expert in RAM, none cached), or several nodes: nothing to borrow.
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  PlanOptions o = at_ctx(65536);
  o.ubatch = 4096;
  o.expert_cache = ExpertCacheMode::Off;
  const Plan off = make_plan(s, workstation(), o);
  ASSERT_TRUE(off.fits);
  EXPECT_EQ(off.prefill_borrowed(), 0);
  EXPECT_EQ(off.devices[0].bytes_of("workspace"),
            cpu_forward_workspace(s.config, off.kv_type, 4096, workstation().host.cores, false).bytes());
  o.expert_cache = ExpertCacheMode::Auto;
  const Plan nodes = make_plan(s, workstation(2), o);
  EXPECT_EQ(nodes.prefill_borrowed(), 0);
  EXPECT_EQ(nodes.resident_chunk(), 4096);
}

TEST(Placement, ProOnAnRtxPro6000PrefillsA1MPromptAtOver1000TokensPerSecond) {
  // Issue 18's target: with the chunk's workspace borrowed from the 64 GiB expert cache, the planner can take a
  // 16K-token chunk, which halves the copies of every expert per token against 8K, without slowing decode.
  const ModelSpec s = load_model_spec("deepseek-v4-pro");
  PlanOptions o = at_ctx(1048576);
  const Plan small = make_plan(s, workstation(1, "rtxpro6000", 1536 * core::kGiB), o);
  o.choose_ubatch = true;
  const Plan p = make_plan(s, workstation(1, "rtxpro6000", 1536 * core::kGiB), o);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.options.ubatch, 16384);
  EXPECT_GT(p.prefill_borrowed(), 0);
  EXPECT_GE(p.cost.prefill_full_tok_s, 1000);
  EXPECT_DOUBLE_EQ(p.cost.decode_tok_s, small.cost.decode_tok_s);
}

TEST(Placement, KvAutoPicksHighestFidelityThatFits) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  PlanOptions o = at_ctx(1048576);
  o.kv_auto = true;
  EXPECT_EQ(make_plan(s, workstation(), o).kv_type, KvType::BF16);  // 6.7 GiB still fits a 3090
  // A 12 GiB card cannot hold bf16 at 1M but holds fp8.
  const Plan small = make_plan(s, workstation(1, "12GiB"), o);
  EXPECT_TRUE(small.fits);
  EXPECT_EQ(small.kv_type, KvType::FP8);
  // The longest context per type shrinks with the type's row size.
  int64_t bf16 = 0, fp8 = 0, q4 = 0;
  for (const auto& f : small.kv_fits) {
    if (f.type == KvType::BF16) bf16 = f.max_ctx;
    if (f.type == KvType::FP8) fp8 = f.max_ctx;
    if (f.type == KvType::Q4_0) q4 = f.max_ctx;
  }
  EXPECT_LT(bf16, 1048576);
  EXPECT_GT(bf16, 0);
  EXPECT_EQ(fp8, 1048576);
  EXPECT_EQ(q4, 1048576);
  // The boundary is exact: bf16 fits at its max and not one token later.
  PlanOptions edge = at_ctx(bf16);
  edge.kv_type = KvType::BF16;
  EXPECT_TRUE(make_plan(s, workstation(1, "12GiB"), edge).fits);
  edge.ctx = bf16 + 1;
  EXPECT_FALSE(make_plan(s, workstation(1, "12GiB"), edge).fits);
}

TEST(Placement, TooSmallGpuSaysWhatIsShortAndSuggestsSmallerKv) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  PlanOptions o = at_ctx(1048576);
  o.kv_type = KvType::BF16;
  const Plan p = make_plan(s, workstation(1, "12GiB"), o);
  ASSERT_FALSE(p.fits);
  ASSERT_FALSE(p.shortfalls.empty());
  EXPECT_EQ(p.shortfalls[0].device, "gpu0");
  EXPECT_GT(p.shortfalls[0].need, p.shortfalls[0].have);
  EXPECT_TRUE(suggests(p, "--kv-type fp8"));
  EXPECT_TRUE(suggests(p, "--ctx "));
}

TEST(Placement, TwoGpusSplitLayersAndBothCacheExperts) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  Hardware hw = workstation();
  hw.gpus.push_back(parse_gpu_spec("rtx3090"));
  const Plan p = make_plan(s, hw, at_ctx(1048576));
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.layers.front().runs.at(0).device, 0);
  EXPECT_EQ(p.layers.back().runs.at(0).device, 1);
  EXPECT_GT(p.devices[0].bytes_of("expert_cache"), 0);
  EXPECT_GT(p.devices[1].bytes_of("expert_cache"), 0);
  EXPECT_GT(p.devices[1].bytes_of("weights.head"), 0);
  EXPECT_EQ(p.devices[0].bytes_of("weights.head"), 0);
}

TEST(Placement, BigGpuHoldsEveryExpertAndNeedsNoStreaming) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  Hardware hw = workstation(1, "h200");
  hw.gpus.push_back(parse_gpu_spec("h200"));
  const Plan p = make_plan(s, hw, at_ctx(65536));
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(sum_prefix(p, "weights.routed_experts", DeviceKind::Host), 0);
  EXPECT_EQ(sum_prefix(p, "expert_stream", DeviceKind::Gpu), 0);
  EXPECT_DOUBLE_EQ(p.cost.expert_hit_rate, 1.0);
}

TEST(Placement, CpuOnlyPutsEverythingInRam) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  Hardware hw = workstation();
  hw.gpus.clear();
  hw.host.numa_nodes = 2;
  const Plan p = make_plan(s, hw, at_ctx(32768));
  ASSERT_TRUE(p.fits);
  ASSERT_EQ(p.devices.size(), 2u);
  EXPECT_EQ(sum_prefix(p, "weights.", DeviceKind::Host), s.held_bytes_total() - s.mtp_bytes());
  // Experts split evenly across the two NUMA nodes.
  EXPECT_EQ(p.devices[0].bytes_of("weights.routed_experts"), p.devices[1].bytes_of("weights.routed_experts"));
}

TEST(Placement, MtpAddsItsWeightsAndRing) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  PlanOptions o = at_ctx(8192);
  const Plan without = make_plan(s, workstation(), o);
  o.mtp = true;
  const Plan with = make_plan(s, workstation(), o);
  EXPECT_EQ(with.weights_bytes - without.weights_bytes, s.mtp_bytes());
  EXPECT_EQ(kv_total(with.kv) - kv_total(without.kv), 128 * 584);
  EXPECT_TRUE(with.layers.back().mtp);
}

TEST(Placement, RejectsOutOfRangeOptions) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  EXPECT_THROW(make_plan(s, workstation(), at_ctx(1048577)), ferry::Error);
  EXPECT_THROW(make_plan(s, workstation(), at_ctx(-1)), ferry::Error);
  PlanOptions o;
  o.ubatch = 0;
  EXPECT_THROW(make_plan(s, workstation(), o), ferry::Error);
}

namespace {

Plan forced(const ModelSpec& s, const Hardware& hw, PlanOptions o, Split split) {
  o.split = split;
  return make_plan(s, hw, o);
}

// Auto's plan is the forced plan of the layout it names, and no other layout that fits decodes faster.
void expect_fastest_that_fits(const ModelSpec& s, const Hardware& hw, const PlanOptions& o, Split want) {
  const Plan chosen = make_plan(s, hw, o);
  ASSERT_TRUE(chosen.fits);
  EXPECT_EQ(chosen.split, want) << chosen.split_reason;
  EXPECT_EQ(chosen.options.split, Split::Auto);
  EXPECT_EQ(chosen.split_reason.rfind("auto: the fastest layout that fits", 0), 0u) << chosen.split_reason;
  const Plan same = forced(s, hw, o, want);
  EXPECT_EQ(same.layout, chosen.layout);
  EXPECT_DOUBLE_EQ(same.cost.decode_tok_s, chosen.cost.decode_tok_s);
  for (const Split other : {Split::Experts, Split::Layers, Split::LayersExperts}) {
    if (other == want) continue;
    const Plan p = forced(s, hw, o, other);
    EXPECT_EQ(p.split, other);
    if (p.fits) {
      EXPECT_LT(p.cost.decode_tok_s, chosen.cost.decode_tok_s) << split_name(other);
    }
  }
}

}  // namespace

// Experts in host RAM: expert parallel reads each token's experts with every node's RAM bandwidth at once.
TEST(Placement, AutoSplitShardsExpertsInRamOverTheNodes) {
  expect_fastest_that_fits(load_model_spec("deepseek-v4-flash"), workstation(2), at_ctx(65536), Split::Experts);
}

// Every expert resident on the GPUs: nothing left to aggregate, so the per-layer exchanges of expert parallel
// cost more than a pipeline's one hidden-state send per stage boundary.
TEST(Placement, AutoSplitPipelinesWholeLayersWhenExpertsFitTheGpus) {
  Hardware hw = workstation(2, "h200");
  hw.gpus.push_back(parse_gpu_spec("h200"));
  expect_fastest_that_fits(load_model_spec("deepseek-v4-flash"), hw, at_ctx(65536), Split::Layers);
}

// V4-Pro on 4 x (3090 + 256 GB): one node's GPU cannot hold every non-routed layer, so expert parallel does not
// fit; the non-routed layers are a pipeline over the 4 GPUs and the experts stay sharded.
TEST(Placement, AutoSplitPipelinesNonRoutedLayersWhenOneGpuIsTooSmall) {
  const ModelSpec s = load_model_spec("deepseek-v4-pro");
  expect_fastest_that_fits(s, workstation(4), PlanOptions{}, Split::LayersExperts);
  const Plan experts = forced(s, workstation(4), PlanOptions{}, Split::Experts);
  EXPECT_FALSE(experts.fits);
  EXPECT_EQ(experts.split_reason, "--split experts");
  EXPECT_TRUE(suggests(experts, "--split layers+experts"));
}

// The network's latency decides between the layouts for the same machine: expert parallel pays an exchange per
// MoE layer, a pipeline one per stage boundary.
TEST(Placement, AutoSplitFollowsTheNetworkCost) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  Hardware hw = workstation(2);
  hw.network.latency_s = 20e-6;
  EXPECT_EQ(make_plan(s, hw, PlanOptions{}).split, Split::Experts);
  hw.network.latency_s = 500e-6;
  expect_fastest_that_fits(s, hw, PlanOptions{}, Split::Layers);
  const Plan slow = forced(s, hw, PlanOptions{}, Split::Experts);
  hw.network.latency_s = 20e-6;
  const Plan fast = forced(s, hw, PlanOptions{}, Split::Experts);
  // 43 MoE layers, one combine each (every node runs every layer: nothing to dispatch), 480 us more each.
  EXPECT_NEAR(slow.cost.decode_sync_ms - fast.cost.decode_sync_ms, 43 * 0.48, 1e-6);
}

TEST(Placement, OneNodeHasNothingToSplit) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  const Plan p = make_plan(s, workstation(), at_ctx(65536));
  EXPECT_EQ(p.split, Split::Experts);
  EXPECT_EQ(p.split_reason, "one node: nothing to split");
  EXPECT_EQ(forced(s, workstation(), at_ctx(65536), Split::Layers).layout, p.layout);
}
