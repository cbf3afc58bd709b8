// The cost model: a roofline over the placement (../shared/spec/hardware.md, "Bytes per decode token"):
//   t_token = weight bytes on the GPU / BW_vram + sum over layers of max(KV bytes / BW_vram, attention FLOPs / rate)
//             + (1 - h) * routed bytes / (eta * BW_dram) + syncs.
// Decode at batch 1 is memory-bound but for attention and the indexer, whose arithmetic grows with the context and
// outlasts their reads at long contexts (decode_attention); prefill is compute-bound on the GPU and bound by PCIe or
// CPU FLOPs for the routed experts that live in host RAM, whichever path is cheaper per layer. With several nodes each
// node computes its share of a layer's experts (the slowest counts) and every exchange between nodes the layout makes
// is paid for (docs/plan-schema.md, "Layouts over nodes").
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "planner/plan.h"

namespace ferry::planner {
namespace {

// Fractions of datasheet peaks the kernels reach. VRAM: ~90% is a measured copy (hardware.md: H100 3.0 of
// 3.35 TB/s); decode kernels lose a little more. Host: our expert kernels' target is 60% of the triad, which
// itself reaches ~80% of peak. Tensor cores: half of peak on mixed-size prefill GEMMs.
constexpr double kGpuBandwidthEfficiency = 0.8;
constexpr double kHostBandwidthEfficiency = 0.5;
constexpr double kGpuFlopsEfficiency = 0.5;
// Prefill chunks of thousands of tokens make the non-routed projections tall GEMMs, which cuBLAS runs at 80-90% of
// peak (FlashAttention-2, arXiv 2307.08691, section 1); we take 0.75 from 2K tokens on. Attention and the indexer
// stay at 0.5 (FlashAttention-2 forward: 50-73% of peak on A100), and so does the grouped GEMM of the routed
// experts with MXFP4 dequantized in the kernel (hundreds of rows per expert at 16K tokens).
constexpr double kTallGemmEfficiency = 0.75;
constexpr int64_t kTallGemmTokens = 2048;
// One GPU->CPU->GPU hand-off around the CPU experts of a MoE layer (two stream syncs, hardware.md: 20-50 us).
constexpr double kGpuCpuHandoffS = 2 * 30e-6;
// A cache of a fraction f of a layer's experts serves about f^0.35 of the uses: routing is skewed (hardware.md:
// 67% hits with 1/8 cached on another MoE; 0.3-0.5 expected on a 3090). `--expert-hit-rate` overrides.
constexpr double kCacheHitExponent = 0.35;

}  // namespace

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

// Attention and indexer FLOPs of one token at position `pos`. Both grow with the position: the indexer scores every
// earlier compressed key (V4: pos / 4, V3.2: pos), HCA attends to every pos / 128 row, MLA to every row; only
// CSA's attention is bounded (window + top-k).

AttnFlops attention_flops(const core::ModelConfig& c, int64_t l, double pos) {
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
    return {4 * h * hd * keys, index};
  }
  const double row = double(c.kv_lora_rank + c.qk_rope_head_dim);
  if (c.arch == core::Arch::DeepseekV32)
    return {4 * h * row * std::min<double>(c.index_topk, pos), 2.0 * c.index_n_heads * c.index_head_dim * pos};
  return {4 * h * row * pos, 0};
}

namespace {

// How much faster than its BF16 (FP32-accumulate) figure a GPU runs the indexer's products. V4's indexer queries
// and keys are FP4 E2M1 with a power-of-two scale per 32 (spec/deepseek-v4.md, "Indexer keys"): every product is
// exact in INT8 (x2: integers up to 12) with INT32 sums, and in FP8. Dense INT8/FP8 tensor throughput over dense
// BF16 from the datasheets: GeForce Ampere/Ada/Blackwell 4x (RTX 3090: 284 INT8 TOPS vs 71 BF16 TFLOPS, their
// FP32-accumulate BF16 runs at half rate); workstation and data-center cards 2x (A6000 309.7 vs 154.8, RTX 6000
// Ada 728.5 vs 364.2, RTX PRO 6000 FP8 1000 vs 500, H100 1979 vs 989). Unknown cards: 1x.
double low_precision_speedup(const GpuSpec& g) {
  for (const char* n : {"rtx3090", "rtx3090ti", "rtx4090", "rtx5090"})
    if (g.name == n) return 4;
  for (const char* n : {"a6000", "rtx6000ada", "rtxpro6000", "h100", "h200"})
    if (g.name == n) return 2;
  return 1;
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

// The device that runs a layer's non-routed part; every run of a layer is alike (replicated layouts run it on
// the same kind of device on every node).
const DevicePlan& runner(const Plan& p, const LayerPlan& lp) {
  return p.devices[static_cast<size_t>(lp.runs.front().device)];
}

std::vector<int> runner_nodes(const Plan& p, const LayerPlan& lp) {
  std::vector<int> nodes;
  for (const LayerRun& r : lp.runs) nodes.push_back(p.devices[static_cast<size_t>(r.device)].node);
  std::sort(nodes.begin(), nodes.end());
  return nodes;
}

bool has(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

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
        has_gpu(!hw.gpus.empty()),
        host_bw(or_default(hw.calibration.host_dense_bw, hw.host.memory_bandwidth * kHostBandwidthEfficiency)),
        host_flops(
            or_default(hw.calibration.host_dense_flops, std::max(1.0, hw.host.cores * hw.host.gflops_per_core * 1e9))),
        host_expert_bw(or_default(hw.calibration.host_expert_bw, host_bw)),
        host_expert_flops(or_default(hw.calibration.host_expert_flops, host_flops)) {}

  // A measured rate where the calibration has one (planner/calibration.h), else the default.
  static double or_default(double measured, double fallback) { return measured > 0 ? measured : fallback; }
  double link_bw(const DevicePlan& d) const {
    return or_default(hw.calibration.link_bw, pcie_h2d_bandwidth(hw.gpus[static_cast<size_t>(d.index)].pcie));
  }

  double gpu_bw(const DevicePlan& d) const {
    return hw.gpus[static_cast<size_t>(d.index)].memory_bandwidth * kGpuBandwidthEfficiency;
  }
  double gpu_flops(const DevicePlan& d) const {
    return hw.gpus[static_cast<size_t>(d.index)].bf16_tflops * 1e12 * kGpuFlopsEfficiency;
  }
  // Seconds of a chunk's non-routed work in one layer on the device `dev` that runs it: the projections (tall
  // GEMMs from kTallGemmTokens on), attention, and the indexer on low-precision tensor cores.
  PrefillSplit dense_split(const DevicePlan& dev, double u, double dense_flops, const AttnFlops& a) const {
    if (dev.kind != DeviceKind::Gpu)
      return {u * dense_flops / host_flops, u * a.attn / host_flops, u * a.index / host_flops, 0};
    const GpuSpec& g = hw.gpus[static_cast<size_t>(dev.index)];
    const double peak = g.bf16_tflops * 1e12;
    const double gemm = peak * (u >= double(kTallGemmTokens) ? kTallGemmEfficiency : kGpuFlopsEfficiency);
    return {u * dense_flops / gemm, u * a.attn / (peak * kGpuFlopsEfficiency),
            u * a.index / (peak * kGpuFlopsEfficiency * low_precision_speedup(g)), 0};
  }
  double dense_s(const DevicePlan& dev, double u, double dense_flops, const AttnFlops& a) const {
    return dense_split(dev, u, dense_flops, a).total();
  }

  const ModelSpec& spec;
  const Plan& plan;
  const core::ModelConfig& c;
  const Hardware& hw;
  const PlanOptions& o;
  const double eb;    // bytes of one routed expert
  const double topk;  // routed experts per token
  const bool has_gpu;
  const double host_bw;         // reachable, bytes/s: the non-routed part on the CPU
  const double host_flops;      // reachable, all cores
  const double host_expert_bw;  // the same for routed experts on the CPU (a kernel of their own)
  const double host_expert_flops;
};

// One node's share of a layer's routed experts: routing being uniform on average, also its share of the uses.
struct NodeShare {
  int node = 0;
  ExpertCounts counts;
  double share = 0;
  double hit = 0;                   // of its uses, served on a GPU
  const DevicePlan* gpu = nullptr;  // the GPU holding or caching them; nullptr: none may take them
};

std::vector<NodeShare> node_shares(const CostInputs& in, const LayerPlan& lp) {
  std::vector<NodeShare> out;
  const double experts = double(lp.n_experts());
  for (int node = 0; node < in.hw.nodes; ++node) {
    NodeShare s;
    s.node = node;
    s.counts = expert_counts(in.plan, lp, node);
    if (s.counts.held == 0) continue;
    s.share = double(s.counts.held) / experts;
    s.hit = hit_rate(in.o, s.counts);
    for (const ExpertHome& h : lp.experts) {
      const DevicePlan& d = in.plan.devices[static_cast<size_t>(h.device)];
      if (d.node != node) continue;
      if (d.kind == DeviceKind::Gpu)
        s.gpu = &d;
      else if (h.cache >= 0)
        s.gpu = &in.plan.devices[static_cast<size_t>(h.cache)];
    }
    out.push_back(s);
  }
  return out;
}

// Seconds of the exchanges between nodes at layer lp for `n` tokens (transport/rank_exchange.cpp): the hidden
// streams (hc·d floats a token) to its runners that did not run the layer before, the MoE inputs to the holders
// of its experts that do not run it, and each holder's rows of expert outputs to every other runner. An
// exchange's transfers go at once: one latency, and its bytes through the busiest node's link.
double exchange_s(const CostInputs& in, const LayerPlan& lp, const LayerPlan* prev,
                  const std::vector<NodeShare>& shares, double n) {
  if (in.hw.nodes == 1) return 0;
  const double latency = in.hw.network.latency_s, bw = in.hw.network.bandwidth, d = double(in.c.hidden_size);
  const std::vector<int> runners = runner_nodes(in.plan, lp);
  double s = 0;
  if (prev) {
    const std::vector<int> before = runner_nodes(in.plan, *prev);
    const double fresh = double(std::count_if(runners.begin(), runners.end(), [&](int r) { return !has(before, r); }));
    if (fresh > 0) s += latency + fresh * n * double(std::max<int64_t>(1, in.c.hc_mult)) * d * 4 / bw;
  }
  const double outside =
      double(std::count_if(shares.begin(), shares.end(), [&](const NodeShare& h) { return !has(runners, h.node); }));
  if (outside > 0) s += latency + outside * n * (d + in.topk) * 4 / bw;
  std::vector<double> sent(static_cast<size_t>(in.hw.nodes), 0), received = sent;
  bool any = false;
  for (const NodeShare& h : shares)
    for (int r : runners) {
      if (r == h.node) continue;
      const double bytes = n * in.topk * h.share * d * 4;
      sent[static_cast<size_t>(h.node)] += bytes;
      received[static_cast<size_t>(r)] += bytes;
      any = true;
    }
  if (any)
    s +=
        latency +
        std::max(*std::max_element(sent.begin(), sent.end()), *std::max_element(received.begin(), received.end())) / bw;
  return s;
}

const LayerPlan& last_layer(const Plan& p) {
  for (auto it = p.layers.rbegin(); it != p.layers.rend(); ++it)
    if (!it->mtp) return *it;
  return p.layers.back();
}

// The logits of `rows` positions from the head's node to node 0's, when the head runs elsewhere.
double logits_s(const CostInputs& in, double rows) {
  if (in.hw.nodes == 1 || in.plan.layers.empty() || has(runner_nodes(in.plan, last_layer(in.plan)), 0)) return 0;
  return in.hw.network.latency_s + rows * double(in.c.vocab_size) * 4 / in.hw.network.bandwidth;
}

// Seconds of one decode token by where they are spent, and the routed-expert traffic behind them.
struct DecodeTimes {
  double gpu_s = 0, cpu_s = 0, sync_s = 0;
  double attention_s = 0;      // of gpu_s, the KV reads and the attention and indexer arithmetic
  double compute_bound_s = 0;  // of attention_s, the layers whose arithmetic outlasts their reads
  double routed_uses = 0, hits = 0;
  double ceiling_s = 0;  // routed experts alone, each node reading its share from RAM at peak
};

// One token's routed experts of a layer: every node computes the uses that land on its experts, the nodes in
// parallel, so the slowest node's time counts.
void decode_experts(const CostInputs& in, const std::vector<NodeShare>& shares, DecodeTimes& t) {
  double worst = -1, gpu = 0, cpu = 0, sync = 0, ceiling = 0;
  for (const NodeShare& h : shares) {
    const double uses = in.topk * h.share;
    const double g = h.gpu ? uses * h.hit * in.eb / in.gpu_bw(*h.gpu) : 0;
    const double c = uses * (1 - h.hit) * in.eb / in.host_expert_bw;
    const double handoff = in.has_gpu && h.hit < 1 ? kGpuCpuHandoffS : 0;
    if (g + c + handoff > worst) {
      worst = g + c + handoff;
      gpu = g, cpu = c, sync = handoff;
    }
    ceiling = std::max(ceiling, uses * in.eb / in.hw.host.memory_bandwidth);
    t.hits += uses * h.hit;
  }
  t.gpu_s += gpu;
  t.cpu_s += cpu;
  t.sync_s += sync;
  t.ceiling_s += ceiling;
  t.routed_uses += in.topk;
}

// The token's attention and indexer in layer lp: a roofline of the KV bytes they read at `bw` and their
// arithmetic at the device's attention rates (the prefill's, at one token). The indexer scores every compressed
// key with each of its heads (V4: 64 x 128 products on a 68-byte FP4 key, ~240 FLOP a byte) and attention every
// selected row with all 64 heads, so at long contexts the arithmetic outlasts the reads: on the CPU always, on a
// 3090 about evenly (its reachable low-precision FLOP/s over its reachable bandwidth is ~190).
void decode_attention(const CostInputs& in, const LayerPlan& lp, const DevicePlan& dev, double bw, DecodeTimes& t) {
  const double read = kv_read_bytes(in.c, lp.layer, in.plan.kv_type, in.o.ctx) / bw;
  const double compute = in.dense_split(dev, 1, 0, attention_flops(in.c, lp.layer, double(in.o.ctx))).total();
  const double s = std::max(read, compute);
  t.gpu_s += s;
  t.attention_s += s;
  t.compute_bound_s += compute > read ? s : 0;
}

DecodeTimes decode_times(const CostInputs& in) {
  const Hardware& hw = in.hw;
  DecodeTimes t;
  const LayerPlan* prev = nullptr;
  for (const LayerPlan& lp : in.plan.layers) {
    if (lp.mtp) continue;  // MTP runs beside decoding (speculation), not in the base token time
    const auto& dev = runner(in.plan, lp);
    const double bw = dev.kind == DeviceKind::Gpu ? in.gpu_bw(dev) : in.host_bw;
    t.gpu_s += double(in.spec.layers[static_cast<size_t>(lp.layer)].non_routed()) / bw;
    decode_attention(in, lp, dev, bw, t);
    const std::vector<NodeShare> shares = node_shares(in, lp);
    t.sync_s += exchange_s(in, lp, prev, shares, 1);
    prev = &lp;
    if (!shares.empty()) decode_experts(in, shares, t);
  }
  const double head = double(in.spec.global[static_cast<size_t>(core::WeightClass::Head)]);
  t.gpu_s += head / (in.has_gpu ? hw.gpus.back().memory_bandwidth * kGpuBandwidthEfficiency : in.host_bw);
  t.sync_s += logits_s(in, 1);
  return t;
}

const char* decode_bottleneck(const CostInputs& in, const DecodeTimes& t) {
  if (t.cpu_s >= t.gpu_s && t.cpu_s >= t.sync_s) return "host RAM bandwidth (routed experts computed by the CPU)";
  if (t.gpu_s >= t.sync_s) {
    if (t.compute_bound_s > t.gpu_s / 2)
      return in.has_gpu ? "GPU arithmetic (attention and indexer over the context)"
                        : "CPU arithmetic (attention and indexer over the context)";
    return in.has_gpu ? "GPU memory bandwidth (non-routed weights, KV cache, cached experts)"
                      : "host RAM bandwidth (every weight read by the CPU)";
  }
  if (in.hw.nodes > 1) return in.has_gpu ? "latency of GPU-CPU hand-offs and network exchanges" : "network exchanges";
  return "latency of GPU-CPU hand-offs";
}

void estimate_decode(const CostInputs& in, CostEstimate& e) {
  const DecodeTimes t = decode_times(in);
  e.decode_gpu_ms = t.gpu_s * 1e3;
  e.decode_attention_ms = t.attention_s * 1e3;
  e.decode_attention_compute_bound = t.compute_bound_s > t.attention_s / 2;
  e.decode_cpu_ms = t.cpu_s * 1e3;
  e.decode_sync_ms = t.sync_s * 1e3;
  e.decode_tok_s = 1 / std::max(1e-9, t.gpu_s + t.cpu_s + t.sync_s);
  e.expert_hit_rate = t.routed_uses > 0 ? t.hits / t.routed_uses : 0;
  e.decode_ceiling_tok_s = t.ceiling_s > 0 ? 1 / t.ceiling_s : 0;
  e.decode_bottleneck = decode_bottleneck(in, t);
}

// One node's routed experts in RAM of a layer for a chunk of `u` tokens, by the cheaper of two paths. Streamed:
// during prefill the GPU's expert-cache VRAM and stream slots are one ring of streaming slots; every expert the
// chunk touches is copied once over the GPU's link (the copy engine: `ram` seconds) and computed on that GPU as a
// grouped GEMM (`device` seconds) while the next ones are copied, so only the ring's first copy is exposed. On
// the CPU: the cores compute them (`ram` seconds) beside the GPU's work.
struct RamExperts {
  double ram = 0, device = 0, exposed = 0;
  bool streamed = false;
};

RamExperts ram_experts(const CostInputs& in, const NodeShare& h, const LayerFlops& f, double u, double device) {
  const double uses = u * in.topk * h.share * (1 - h.hit);
  // Distinct experts a chunk touches of those in the node's RAM.
  const double touched = h.counts.in_ram * (1 - std::pow(1 - in.topk / double(in.c.n_routed_experts), u));
  const double cpu = std::max(uses * f.expert / in.host_expert_flops, touched * in.eb / in.host_expert_bw);
  if (!h.gpu) return {cpu, 0, 0, false};
  const double link = in.link_bw(*h.gpu);
  const RamExperts stream{touched * in.eb / link, uses * f.expert / in.gpu_flops(*h.gpu), in.eb / link, true};
  const double t_stream = std::max(device + stream.device, stream.ram) + stream.exposed;
  return t_stream < std::max(device, cpu) ? stream : RamExperts{cpu, 0, 0, false};
}

struct PrefillRate {
  double tok_s = 0;
  double copy_s = 0, hidden_copy_s = 0;  // a chunk's expert copies, and how much of them GPU work covers
  PrefillSplit split;                    // a chunk's compute by part, seconds
  std::string bottleneck;
  std::string expert_path;
};

// A chunk's work on each node in one layer: on its compute device (the non-routed part where it runs the
// layer, its experts served on a GPU) and on its experts in RAM (streamed or on the CPU). With a GPU the two
// overlap (copy stream, CPU threads); without one the CPU does both.
struct ChunkWork {
  explicit ChunkWork(size_t nodes) : device(nodes, 0), ram(nodes, 0), exposed(nodes, 0) {}
  std::vector<double> device, ram, exposed;
  int streamed = 0, cpu_layers = 0;
  double copy_s = 0;   // of `ram`, expert copies over the links
  PrefillSplit split;  // the runners' work by part, the slowest node's routed experts on its device
  double node(size_t n, bool overlap) const {
    return (overlap ? std::max(device[n], ram[n]) : device[n] + ram[n]) + exposed[n];
  }
};

ChunkWork chunk_work(const CostInputs& in, const LayerPlan& lp, const std::vector<NodeShare>& shares, double u,
                     double pos) {
  const LayerFlops f = layer_flops(in.c, lp.layer);
  const auto& dev = runner(in.plan, lp);
  ChunkWork w(static_cast<size_t>(in.hw.nodes));
  w.split = in.dense_split(dev, u, f.dense, attention_flops(in.c, lp.layer, pos));
  const double dense = w.split.total();
  for (int r : runner_nodes(in.plan, lp)) w.device[static_cast<size_t>(r)] += dense;
  for (const NodeShare& h : shares) {
    const size_t n = static_cast<size_t>(h.node);
    const double resident_or_cached = h.gpu ? u * in.topk * h.share * h.hit * f.expert / in.gpu_flops(*h.gpu) : 0;
    w.device[n] += resident_or_cached;
    if (h.counts.in_ram == 0) {
      w.split.experts = std::max(w.split.experts, resident_or_cached);
      continue;
    }
    const RamExperts r = ram_experts(in, h, f, u, w.device[n]);
    w.split.experts = std::max(w.split.experts, resident_or_cached + (r.streamed ? r.device : r.ram));
    w.device[n] += r.device;
    w.ram[n] += r.ram;
    w.exposed[n] += r.exposed;
    ++(r.streamed ? w.streamed : w.cpu_layers);
    w.copy_s += r.streamed ? r.ram : 0;
  }
  return w;
}

// Chunks of ubatch tokens at mean position `pos`. One chunk crosses the layers in order; in a pure pipeline (each
// layer on one node, its experts there too) the nodes work on successive chunks at once, so the busiest node
// sets the rate.
PrefillRate prefill_rate(const CostInputs& in, double pos) {
  const core::ModelConfig& c = in.c;
  const Hardware& hw = in.hw;
  const double u = double(in.o.ubatch);
  const size_t nodes = static_cast<size_t>(hw.nodes);
  double total = 0, compute_total = 0, expert_total = 0, net_total = 0, copy_total = 0, hidden_total = 0;
  int streamed = 0, cpu_layers = 0;
  PrefillSplit r_split;
  std::vector<double> busy(nodes, 0);
  bool pipeline = nodes > 1;
  const LayerPlan* prev = nullptr;
  for (const LayerPlan& lp : in.plan.layers) {
    if (lp.mtp) continue;
    const std::vector<NodeShare> shares = node_shares(in, lp);
    const ChunkWork w = chunk_work(in, lp, shares, u, pos);
    const double net = exchange_s(in, lp, prev, shares, u);
    prev = &lp;
    double slowest = 0;
    int involved = 0;
    for (size_t n = 0; n < nodes; ++n) {
      const double t = w.node(n, in.has_gpu);
      slowest = std::max(slowest, t);
      if (t > 0) busy[n] += t + net, ++involved;
    }
    pipeline = pipeline && involved == 1;
    total += slowest + net;
    compute_total += *std::max_element(w.device.begin(), w.device.end());
    expert_total += *std::max_element(w.ram.begin(), w.ram.end());
    net_total += net;
    streamed += w.streamed;
    cpu_layers += w.cpu_layers;
    copy_total += w.copy_s;
    r_split += w.split;
    hidden_total += std::min(w.copy_s, *std::max_element(w.device.begin(), w.device.end()));
  }
  const double head = 2.0 * c.vocab_size * c.hidden_size * (in.o.logits_all ? u : 1) /
                          (in.has_gpu ? hw.gpus.back().bf16_tflops * 1e12 * kGpuFlopsEfficiency : in.host_flops) +
                      logits_s(in, in.o.logits_all ? u : 1);
  total += head;
  if (!in.plan.layers.empty())
    for (int r : runner_nodes(in.plan, last_layer(in.plan))) busy[static_cast<size_t>(r)] += head;
  PrefillRate r;
  r.tok_s = u / std::max(1e-12, pipeline ? *std::max_element(busy.begin(), busy.end()) : total);
  r.copy_s = copy_total;
  r.hidden_copy_s = hidden_total;
  r.split = r_split;
  if (net_total > expert_total && net_total > compute_total)
    r.bottleneck = "network exchanges between nodes";
  else if (expert_total > compute_total)
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
  // Every term is linear in the position (or bounded), so the chunk at the middle of the context costs the mean.
  PrefillRate full = prefill_rate(in, double(plan.options.ctx) / 2);
  e.prefill_full_tok_s = full.tok_s;
  e.prefill_full_s = double(plan.options.ctx) / std::max(1e-12, full.tok_s);
  e.prefill_full_bottleneck = std::move(full.bottleneck);
  e.prefill_full_expert_path = std::move(full.expert_path);
  e.prefill_copy_s = full.copy_s;
  e.prefill_copy_hidden = full.copy_s > 0 ? full.hidden_copy_s / full.copy_s : 1;
  e.prefill_full_split = full.split.scaled(1 / u);
}

}  // namespace ferry::planner
