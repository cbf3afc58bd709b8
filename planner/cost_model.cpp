// The cost model: a roofline over the placement (../shared/spec/hardware.md, "Bytes per decode token"):
//   t_token = bytes read on the GPU / BW_vram + (1 - h) * routed bytes / (eta * BW_dram) + syncs.
// Decode at batch 1 is memory-bound; prefill is compute-bound on the GPU and bound by PCIe or CPU FLOPs for the
// routed experts that live in host RAM, whichever path is cheaper per layer.
#include <algorithm>
#include <cmath>

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

}  // namespace

void estimate_cost(const ModelSpec& spec, Plan& plan) {
  const core::ModelConfig& c = spec.config;
  const Hardware& hw = plan.hardware;
  const PlanOptions& o = plan.options;
  CostEstimate& e = plan.cost;
  const double eb = double(spec.expert_bytes());
  const double topk = double(c.num_experts_per_tok);
  const double nodes = hw.nodes;
  const bool has_gpu = !hw.gpus.empty();
  const double host_bw = hw.host.memory_bandwidth * kHostBandwidthEfficiency;
  const double host_flops = std::max(1.0, hw.host.cores * hw.host.gflops_per_core * 1e9);

  // ---- decode, batch 1 ----
  double gpu_s = 0, cpu_s = 0, sync_s = 0, routed_uses = 0, hits = 0, routed_bytes_per_token = 0;
  for (const LayerPlan& lp : plan.layers) {
    if (lp.mtp) continue;  // MTP runs beside decoding (speculation), not in the base token time
    const auto& w = spec.layers[static_cast<size_t>(lp.layer)];
    const double read = double(w.non_routed()) + kv_read_bytes(c, lp.layer, plan.kv_type, o.ctx);
    const auto& dev = runner(plan, lp);
    const ExpertCounts node0 = expert_counts(plan, lp, 0);
    const double dev_bw = dev.kind == DeviceKind::Gpu
                              ? hw.gpus[static_cast<size_t>(dev.index)].memory_bandwidth * kGpuBandwidthEfficiency
                              : host_bw;
    gpu_s += read / dev_bw;
    if (node0.held == 0) continue;
    const double h = hit_rate(o, node0);
    routed_uses += topk;
    hits += topk * h;
    routed_bytes_per_token += topk * eb;
    // Each node computes the uses that land on its experts, the nodes in parallel: 1/nodes of the uses each.
    if (dev.kind == DeviceKind::Gpu) gpu_s += topk * h * eb / nodes / dev_bw;
    cpu_s += topk * (1 - h) * eb / nodes / host_bw;
    if (has_gpu && h < 1) sync_s += kGpuCpuHandoffS;
    if (hw.nodes > 1) sync_s += 2 * hw.network.latency_s + 2 * double(c.hidden_size) * 4 / hw.network.bandwidth;
  }
  {
    const double head = double(spec.global[static_cast<size_t>(core::WeightClass::Head)]);
    gpu_s += head / (has_gpu ? hw.gpus.back().memory_bandwidth * kGpuBandwidthEfficiency : host_bw);
  }
  e.decode_gpu_ms = gpu_s * 1e3;
  e.decode_cpu_ms = cpu_s * 1e3;
  e.decode_sync_ms = sync_s * 1e3;
  e.decode_tok_s = 1 / std::max(1e-9, gpu_s + cpu_s + sync_s);
  e.expert_hit_rate = routed_uses > 0 ? hits / routed_uses : 0;
  e.decode_ceiling_tok_s = routed_bytes_per_token > 0 ? hw.host.memory_bandwidth * nodes / routed_bytes_per_token : 0;
  if (cpu_s >= gpu_s && cpu_s >= sync_s)
    e.decode_bottleneck = "host RAM bandwidth (routed experts computed by the CPU)";
  else if (gpu_s >= sync_s)
    e.decode_bottleneck = has_gpu ? "GPU memory bandwidth (non-routed weights, KV cache, cached experts)"
                                  : "host RAM bandwidth (every weight read by the CPU)";
  else
    e.decode_bottleneck =
        hw.nodes > 1 ? "latency of GPU-CPU hand-offs and network collectives" : "latency of GPU-CPU hand-offs";

  // ---- prefill: chunks of ubatch tokens at mean position `pos` ----
  const double u = double(o.ubatch);
  auto prefill_rate = [&](double pos, std::string* bottleneck, std::string* path) {
    double total = 0, compute_total = 0, expert_total = 0;
    int streamed = 0, cpu_layers = 0;
    for (const LayerPlan& lp : plan.layers) {
      if (lp.mtp) continue;
      const LayerFlops f = layer_flops(c, lp.layer);
      const auto& dev = runner(plan, lp);
      const ExpertCounts node0 = expert_counts(plan, lp, 0);
      const double flops_rate = dev.kind == DeviceKind::Gpu
                                    ? hw.gpus[static_cast<size_t>(dev.index)].bf16_tflops * 1e12 * kGpuFlopsEfficiency
                                    : host_flops;
      const double h = node0.held > 0 ? hit_rate(o, node0) : 0;
      double compute = u * (f.dense + attention_flops(c, lp.layer, pos) + topk * h * f.expert) / flops_rate;
      double experts = 0;
      if (node0.in_ram > 0) {
        const double share = 1 - h;
        const double uses = u * topk * share / nodes;
        // Distinct experts a chunk touches on one node, of those in its RAM.
        const double touched = node0.in_ram * (1 - std::pow(1 - topk / double(c.n_routed_experts), u));
        const double stream =
            has_gpu ? touched * eb / pcie_h2d_bandwidth(hw.gpus[0].pcie) + uses * f.expert / flops_rate : INFINITY;
        const double cpu = std::max(uses * f.expert / host_flops, touched * eb / host_bw);
        if (stream < cpu)
          ++streamed;
        else
          ++cpu_layers;
        experts = std::min(stream, cpu);
        if (hw.nodes > 1) experts += 2 * hw.network.latency_s + 2 * u * c.hidden_size * 4 / hw.network.bandwidth;
      }
      // Streaming and CPU experts overlap the GPU's work on the same layer (copy stream, CPU threads).
      total += std::max(compute, experts);
      compute_total += compute;
      expert_total += experts;
    }
    const double head = 2.0 * c.vocab_size * c.hidden_size * (o.logits_all ? u : 1) /
                        (has_gpu ? hw.gpus.back().bf16_tflops * 1e12 * kGpuFlopsEfficiency : host_flops);
    total += head;
    if (bottleneck) {
      if (expert_total > compute_total)
        *bottleneck = streamed >= cpu_layers ? "PCIe (routed experts streamed to the GPU)"
                                             : "CPU FLOPs (routed experts computed by the CPU)";
      else
        *bottleneck = has_gpu ? "GPU compute" : "CPU FLOPs";
    }
    if (path)
      *path = streamed + cpu_layers == 0 ? "GPU (no expert in RAM)" : streamed >= cpu_layers ? "stream to GPU" : "CPU";
    return u / std::max(1e-12, total);
  };
  e.prefill_tok_s = prefill_rate(u / 2, &e.prefill_bottleneck, &e.prefill_expert_path);
  e.prefill_full_tok_s = prefill_rate(double(o.ctx) / 2, nullptr, nullptr);
}

}  // namespace ferry::planner
