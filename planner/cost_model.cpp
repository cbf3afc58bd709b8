// The cost model: a roofline over the placement (../shared/spec/hardware.md, "Bytes per decode token"):
//   t_token = bytes read on the GPU / BW_vram + (1 - h) * routed bytes / (eta * BW_dram) + syncs.
// Decode at batch 1 is memory-bound; prefill is compute-bound on the GPU and bound by PCIe or CPU FLOPs for the
// routed experts that live in host RAM, whichever path is cheaper per layer.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "planner/plan.h"

namespace ferry::planner {
namespace {

// Fractions of datasheet peaks the kernels reach. VRAM: ~90% is a measured copy (hardware.md: H100 3.0 of
// 3.35 TB/s); decode kernels lose a little more. Host: our expert kernels' target is 60% of the triad, which
// itself reaches ~80% of peak. Tensor cores: half of peak on mixed-size prefill GEMMs.
constexpr double kGpuBandwidthEfficiency = 0.8;
constexpr double kHostBandwidthEfficiency = 0.5;
constexpr double kGpuFlopsEfficiency = 0.5;
// One GPU->CPU->GPU hand-off around the CPU experts of a MoE layer (two stream syncs, hardware.md: 20-50 us).
constexpr double kGpuCpuHandoffS = 2 * 30e-6;
// A cache of a fraction f of a layer's experts serves about f^0.35 of the uses: routing is skewed (hardware.md:
// 67% hits with 1/8 cached on another MoE; 0.3-0.5 expected on a 3090). `--expert-hit-rate` overrides.
constexpr double kCacheHitExponent = 0.35;

struct LayerFlops {
  double dense = 0;   // non-routed projections per token
  double expert = 0;  // one routed expert per token
};

LayerFlops layer_flops(const core::ModelConfig& c, int64_t l) {
  const double dim = double(c.hidden_size), h = double(c.num_attention_heads);
  LayerFlops f;
  if (c.arch == core::Arch::DeepseekV4) {
    const double hd = double(c.head_dim);
    f.dense += dim * c.q_lora_rank + c.q_lora_rank * h * hd + dim * hd + h * hd * c.o_lora_rank +
               c.o_groups * c.o_lora_rank * dim;
    const int64_t r = c.compress_ratio(l);
    const double coff = r == 4 ? 2 : 1;
    if (r > 0) f.dense += 2 * coff * hd * dim;
    if (r == 4)
      f.dense += c.q_lora_rank * double(c.index_n_heads * c.index_head_dim) + dim * c.index_n_heads +
                 2 * coff * c.index_head_dim * dim;
    f.dense += 2.0 * (2 + c.hc_mult) * c.hc_mult * c.hc_mult * dim;
  } else {
    const double qh = double(c.qk_nope_head_dim + c.qk_rope_head_dim);
    f.dense += dim * c.q_lora_rank + c.q_lora_rank * h * qh + dim * (c.kv_lora_rank + c.qk_rope_head_dim) +
               c.kv_lora_rank * h * (c.qk_nope_head_dim + c.v_head_dim) + h * c.v_head_dim * dim;
    if (c.arch == core::Arch::DeepseekV32)
      f.dense +=
          c.q_lora_rank * double(c.index_n_heads * c.index_head_dim) + dim * c.index_head_dim + dim * c.index_n_heads;
    if (!c.is_moe_layer(l)) f.dense += 3 * dim * c.intermediate_size;
  }
  if (c.is_moe_layer(l)) {
    f.dense += 3 * dim * c.shared_expert_width() + dim * c.n_routed_experts;
    f.expert = 3 * dim * c.moe_intermediate_size;
  }
  f.dense *= 2;
  f.expert *= 2;
  return f;
}

// Attention and indexer FLOPs of one token at position `pos` (sparse selection makes this grow slowly).
double attention_flops(const core::ModelConfig& c, int64_t l, double pos) {
  const double h = double(c.num_attention_heads);
  if (c.arch == core::Arch::DeepseekV4) {
    const double hd = double(c.head_dim), w = std::min<double>(pos, c.sliding_window);
    const int64_t r = c.compress_ratio(l);
    double keys = w;
    double index = 0;
    if (r == 4) {
      keys += std::min<double>(c.index_topk, pos / 4);
      index = 2.0 * c.index_n_heads * c.index_head_dim * (pos / 4);
    } else if (r > 0) {
      keys += pos / r;
    }
    return 4 * h * hd * keys + index;
  }
  const double row = double(c.kv_lora_rank + c.qk_rope_head_dim);
  if (c.arch == core::Arch::DeepseekV32)
    return 4 * h * row * std::min<double>(c.index_topk, pos) + 2.0 * c.index_n_heads * c.index_head_dim * pos;
  return 4 * h * row * pos;
}

// KV bytes one decode step reads in layer l at context `ctx` (window + selected rows, all indexer keys,
// all HCA rows; MLA reads every row).
double kv_read_bytes(const core::ModelConfig& c, int64_t l, KvType t, int64_t ctx) {
  const KvRowBytes row = kv_row_bytes(c, t);
  if (c.arch == core::Arch::DeepseekV4) {
    double rows = double(std::min(ctx, c.sliding_window));
    double keys = 0;
    const int64_t r = c.compress_ratio(l);
    if (r == 4) {
      rows += double(std::min(c.index_topk, ctx / 4));
      keys = double(ctx / 4);
    } else if (r > 0) {
      rows += double(ctx / r);
    }
    return rows * row.main + keys * row.indexer + double(compressor_state_bytes(c, l));
  }
  if (c.arch == core::Arch::DeepseekV32)
    return double(std::min(c.index_topk, ctx)) * row.main + double(ctx) * row.indexer;
  return double(ctx) * row.main;
}

double hit_rate(const PlanOptions& o, const ExpertCounts& n) {
  if (n.held == 0) return 0;
  if (n.on_gpu == n.held) return 1;
  if (n.on_gpu > 0) return double(n.on_gpu) / n.held;
  if (n.cache_slots == 0) return 0;
  if (o.expert_hit_rate >= 0) return o.expert_hit_rate;
  return std::pow(double(n.cache_slots) / n.held, kCacheHitExponent);
}

// The estimate is node 0's: every node runs alike (replicated layers, an equal share of the experts).
const DevicePlan& runner(const Plan& p, const LayerPlan& lp) {
  return p.devices[static_cast<size_t>(lp.runs.front().device)];
}

// What every term of the estimate reads: the model, the plan and its machine, and the rates derived from them.
struct CostInputs {
  CostInputs(const ModelSpec& model, const Plan& p)
      : spec(model),
        plan(p),
        c(model.config),
        hw(p.hardware),
        o(p.options),
        eb(double(model.expert_bytes())),
        topk(double(c.num_experts_per_tok)),
        nodes(hw.nodes),
        has_gpu(!hw.gpus.empty()),
        host_bw(hw.host.memory_bandwidth * kHostBandwidthEfficiency),
        host_flops(std::max(1.0, hw.host.cores * hw.host.gflops_per_core * 1e9)) {}

  const ModelSpec& spec;
  const Plan& plan;
  const core::ModelConfig& c;
  const Hardware& hw;
  const PlanOptions& o;
  const double eb;    // bytes of one routed expert
  const double topk;  // routed experts per token
  const double nodes;
  const bool has_gpu;
  const double host_bw;     // reachable, bytes/s
  const double host_flops;  // reachable, all cores
};

// Seconds of one decode token by where they are spent, and the routed-expert traffic behind them.
struct DecodeTimes {
  double gpu_s = 0, cpu_s = 0, sync_s = 0;
  double routed_uses = 0, hits = 0, routed_bytes_per_token = 0;
};

DecodeTimes decode_times(const CostInputs& in) {
  const core::ModelConfig& c = in.c;
  const Hardware& hw = in.hw;
  const double topk = in.topk, eb = in.eb, nodes = in.nodes;
  DecodeTimes t;
  for (const LayerPlan& lp : in.plan.layers) {
    if (lp.mtp) continue;  // MTP runs beside decoding (speculation), not in the base token time
    const auto& w = in.spec.layers[static_cast<size_t>(lp.layer)];
    const double read = double(w.non_routed()) + kv_read_bytes(c, lp.layer, in.plan.kv_type, in.o.ctx);
    const auto& dev = runner(in.plan, lp);
    const ExpertCounts node0 = expert_counts(in.plan, lp, 0);
    const double dev_bw = dev.kind == DeviceKind::Gpu
                              ? hw.gpus[static_cast<size_t>(dev.index)].memory_bandwidth * kGpuBandwidthEfficiency
                              : in.host_bw;
    t.gpu_s += read / dev_bw;
    if (node0.held == 0) continue;
    const double h = hit_rate(in.o, node0);
    t.routed_uses += topk;
    t.hits += topk * h;
    t.routed_bytes_per_token += topk * eb;
    // Each node computes the uses that land on its experts, the nodes in parallel: 1/nodes of the uses each.
    if (dev.kind == DeviceKind::Gpu) t.gpu_s += topk * h * eb / nodes / dev_bw;
    t.cpu_s += topk * (1 - h) * eb / nodes / in.host_bw;
    if (in.has_gpu && h < 1) t.sync_s += kGpuCpuHandoffS;
    if (hw.nodes > 1) t.sync_s += 2 * hw.network.latency_s + 2 * double(c.hidden_size) * 4 / hw.network.bandwidth;
  }
  const double head = double(in.spec.global[static_cast<size_t>(core::WeightClass::Head)]);
  t.gpu_s += head / (in.has_gpu ? hw.gpus.back().memory_bandwidth * kGpuBandwidthEfficiency : in.host_bw);
  return t;
}

const char* decode_bottleneck(const CostInputs& in, const DecodeTimes& t) {
  if (t.cpu_s >= t.gpu_s && t.cpu_s >= t.sync_s) return "host RAM bandwidth (routed experts computed by the CPU)";
  if (t.gpu_s >= t.sync_s)
    return in.has_gpu ? "GPU memory bandwidth (non-routed weights, KV cache, cached experts)"
                      : "host RAM bandwidth (every weight read by the CPU)";
  return in.hw.nodes > 1 ? "latency of GPU-CPU hand-offs and network collectives" : "latency of GPU-CPU hand-offs";
}

void estimate_decode(const CostInputs& in, CostEstimate& e) {
  const DecodeTimes t = decode_times(in);
  e.decode_gpu_ms = t.gpu_s * 1e3;
  e.decode_cpu_ms = t.cpu_s * 1e3;
  e.decode_sync_ms = t.sync_s * 1e3;
  e.decode_tok_s = 1 / std::max(1e-9, t.gpu_s + t.cpu_s + t.sync_s);
  e.expert_hit_rate = t.routed_uses > 0 ? t.hits / t.routed_uses : 0;
  e.decode_ceiling_tok_s =
      t.routed_bytes_per_token > 0 ? in.hw.host.memory_bandwidth * in.nodes / t.routed_bytes_per_token : 0;
  e.decode_bottleneck = decode_bottleneck(in, t);
}

// Seconds of one layer's routed experts in RAM for a chunk of `u` tokens, by the cheaper of the two paths.
struct RamExperts {
  double seconds = 0;
  bool streamed = false;  // copied to the GPU and computed there, rather than computed by the CPU
};

RamExperts ram_experts(const CostInputs& in, const ExpertCounts& node0, const LayerFlops& f, double u, double h,
                       double flops_rate) {
  const double topk = in.topk, eb = in.eb;
  const double share = 1 - h;
  const double uses = u * topk * share / in.nodes;
  // Distinct experts a chunk touches on one node, of those in its RAM.
  const double touched = node0.in_ram * (1 - std::pow(1 - topk / double(in.c.n_routed_experts), u));
  const double stream =
      in.has_gpu ? touched * eb / pcie_h2d_bandwidth(in.hw.gpus[0].pcie) + uses * f.expert / flops_rate : INFINITY;
  const double cpu = std::max(uses * f.expert / in.host_flops, touched * eb / in.host_bw);
  RamExperts r;
  r.streamed = stream < cpu;
  r.seconds = std::min(stream, cpu);
  if (in.hw.nodes > 1)
    r.seconds += 2 * in.hw.network.latency_s + 2 * u * in.c.hidden_size * 4 / in.hw.network.bandwidth;
  return r;
}

struct PrefillRate {
  double tok_s = 0;
  std::string bottleneck;
  std::string expert_path;
};

// Chunks of ubatch tokens at mean position `pos`.
PrefillRate prefill_rate(const CostInputs& in, double pos) {
  const core::ModelConfig& c = in.c;
  const Hardware& hw = in.hw;
  const double u = double(in.o.ubatch);
  double total = 0, compute_total = 0, expert_total = 0;
  int streamed = 0, cpu_layers = 0;
  for (const LayerPlan& lp : in.plan.layers) {
    if (lp.mtp) continue;
    const LayerFlops f = layer_flops(c, lp.layer);
    const auto& dev = runner(in.plan, lp);
    const ExpertCounts node0 = expert_counts(in.plan, lp, 0);
    const double flops_rate = dev.kind == DeviceKind::Gpu
                                  ? hw.gpus[static_cast<size_t>(dev.index)].bf16_tflops * 1e12 * kGpuFlopsEfficiency
                                  : in.host_flops;
    const double h = node0.held > 0 ? hit_rate(in.o, node0) : 0;
    double compute = u * (f.dense + attention_flops(c, lp.layer, pos) + in.topk * h * f.expert) / flops_rate;
    double experts = 0;
    if (node0.in_ram > 0) {
      const RamExperts r = ram_experts(in, node0, f, u, h, flops_rate);
      if (r.streamed)
        ++streamed;
      else
        ++cpu_layers;
      experts = r.seconds;
    }
    // Streaming and CPU experts overlap the GPU's work on the same layer (copy stream, CPU threads).
    total += std::max(compute, experts);
    compute_total += compute;
    expert_total += experts;
  }
  const double head = 2.0 * c.vocab_size * c.hidden_size * (in.o.logits_all ? u : 1) /
                      (in.has_gpu ? hw.gpus.back().bf16_tflops * 1e12 * kGpuFlopsEfficiency : in.host_flops);
  total += head;
  PrefillRate r;
  r.tok_s = u / std::max(1e-12, total);
  if (expert_total > compute_total)
    r.bottleneck = streamed >= cpu_layers ? "PCIe (routed experts streamed to the GPU)"
                                          : "CPU FLOPs (routed experts computed by the CPU)";
  else
    r.bottleneck = in.has_gpu ? "GPU compute" : "CPU FLOPs";
  r.expert_path = streamed + cpu_layers == 0 ? "GPU (no expert in RAM)"
                  : streamed >= cpu_layers   ? "stream to GPU"
                                             : "CPU";
  return r;
}

}  // namespace

void estimate_cost(const ModelSpec& spec, Plan& plan) {
  const CostInputs in(spec, plan);
  CostEstimate& e = plan.cost;
  estimate_decode(in, e);
  const double u = double(plan.options.ubatch);
  PrefillRate first_chunk = prefill_rate(in, u / 2);
  e.prefill_tok_s = first_chunk.tok_s;
  e.prefill_bottleneck = std::move(first_chunk.bottleneck);
  e.prefill_expert_path = std::move(first_chunk.expert_path);
  e.prefill_full_tok_s = prefill_rate(in, double(plan.options.ctx) / 2).tok_s;
}

}  // namespace ferry::planner
