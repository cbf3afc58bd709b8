// planner::Plan: where every tensor goes, how much memory each device uses, whether it fits and how fast it
// will run. `make_plan` is a pure function of (ModelSpec, Hardware, PlanOptions): the dry run (`ferry plan`)
// and the real run execute the same Plan.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "planner/hardware.h"
#include "planner/kv_cache.h"
#include "planner/model_spec.h"
#include "planner/use_class.h"

namespace ferry::planner {

enum class ExpertCacheMode : uint8_t { Auto, Off, Slots };

// How the layers and routed experts of a plan are spread over several nodes (one node: all are the same).
//   Experts: every node runs every layer's non-routed part for the tokens; each layer's routed experts are sharded
//     over the nodes in contiguous ranges (expert parallel: per MoE layer, a combine of the experts' rows).
//   Layers: each node owns a contiguous range of whole layers with their routed experts (a pipeline: one
//     hidden-state send per stage boundary).
//   LayersExperts: the non-routed layers are a pipeline over the nodes, each layer's experts sharded over all of
//     them (what fits when one node's GPUs cannot hold every non-routed layer).
//   Auto: the fastest that fits, by the cost model.
enum class Split : uint8_t { Auto, Experts, Layers, LayersExperts };
std::string_view split_name(Split s);  // auto, experts, layers, layers+experts
std::optional<Split> split_from_name(std::string_view name);

struct PlanOptions {
  int64_t ctx = 0;                // tokens per sequence; 0 = the model's maximum
  int64_t parallel = 1;           // sequences decoded together, each with its own cache
  int64_t snapshot_keep = 0;      // prefix-reuse snapshots kept per sequence, in host RAM (serve and chat: 4)
  std::optional<KvType> kv_type;  // nullopt = the model's native type (default_kv_type)
  bool kv_auto = false;           // highest-fidelity type that fits
  int64_t ubatch = 512;           // prefill chunk (tokens per forward step)
  bool choose_ubatch = false;     // make_plan picks the chunk (ubatch .. kMaxPrefillChunk); `--ubatch` turns it off
  int64_t threads = 0;            // CPU worker threads of the forward pass; 0 = the host's cores
  bool mtp = false;               // load the MTP layer (weights + its KV)
  ExpertCacheMode expert_cache = ExpertCacheMode::Auto;
  int64_t expert_cache_slots = 0;  // per MoE layer, with ExpertCacheMode::Slots
  bool logits_all = false;         // keep every position's logits (ferry run --logits-out)
  double expert_hit_rate = -1;     // override the cache hit-rate estimate (0..1); < 0 = estimate
  Split split = Split::Auto;       // how to spread the model over several nodes
  // Per-phase workspace: the GPU keeps the workspace of a chunk of resident_chunk tokens through decode; a bigger
  // prefill chunk's workspace borrows the VRAM of the GPU's expert cache while the prompt is fed (the cache is
  // refilled for decode), so that a big chunk costs decode none of its cache. One node with one GPU, whose cache
  // holds the whole chunk's workspace; otherwise the workspace of ubatch tokens is held throughout.
  int64_t resident_chunk = 512;
  bool borrow_cache_for_prefill = true;  // false: never (under mpirun the ranks do not borrow yet)
};

enum class DeviceKind : uint8_t { Gpu, Host };

struct DevicePlan {
  std::string id;  // "gpu0", "host" (one NUMA node), "host.numa1"; "node2.gpu0" with several nodes
  DeviceKind kind = DeviceKind::Gpu;
  int node = 0;
  int index = 0;     // GPU index or NUMA node
  std::string name;  // "rtx3090", "host RAM"
  int64_t capacity = 0;
  std::vector<std::pair<UseClass, int64_t>> use;  // class -> bytes, in placement order
  // GPU: bytes of its expert cache that a prefill chunk's workspace borrows (the workspace of ubatch tokens,
  // PlanOptions::resident_chunk); 0: the workspace it holds is the whole chunk's.
  int64_t prefill_borrowed = 0;

  void add(const UseClass& cls, int64_t bytes);
  int64_t used() const;
  int64_t bytes_of(std::string_view cls) const;  // by the class's name
  bool over() const { return used() > capacity; }
};

// A strided range of one layer's routed experts that share a home: experts first, first + step, ...,
// first + (count - 1) * step. The placer deals a layer's experts to the nodes in contiguous blocks and a node's
// block to its NUMA nodes round-robin, so one range with step = NUMA nodes is one NUMA node's share.
// Where they are computed follows from the home: on the holding GPU (resident); on the holding NUMA node's
// cores (in host RAM); and, for experts in RAM with a `cache` GPU, on that GPU whenever the runtime puts one in
// its expert cache or streams it there (a cache hit, a prefill with many tokens for it) — the runtime's choice
// per use, so the plan names the GPU and leaves the choice.
struct ExpertHome {
  int64_t first = 0, count = 0, step = 1;
  int device = -1;  // Plan::devices index holding the weights: a GPU (resident) or a host NUMA device (in RAM)
  int cache = -1;   // in RAM only: the GPU whose expert cache and stream slots may take them; -1: none
  int64_t last() const { return first + (count - 1) * step; }
  bool contains(int64_t e) const { return e >= first && e <= last() && (e - first) % step == 0; }
  bool operator==(const ExpertHome&) const = default;
};

// A device that runs a layer's non-routed part (attention, shared expert, router, norms) and holds its
// non-routed weights and KV.
struct LayerRun {
  int device = -1;          // Plan::devices index
  int64_t cache_slots = 0;  // GPU expert-cache slots for the layer's experts in this node's RAM
  bool operator==(const LayerRun&) const = default;
};

struct LayerPlan {
  int layer = 0;
  core::AttnKind attn = core::AttnKind::Swa;
  bool mtp = false;
  // In node order. Replicated layouts: one per node, each node running the layer for its tokens on its own
  // device. A pipeline over the nodes: the one owner, which every node's experts send their outputs to.
  std::vector<LayerRun> runs;
  std::vector<ExpertHome> experts;  // each routed expert of the layer exactly once; empty: no routed experts

  int64_t n_experts() const;
  const ExpertHome* home_of(int64_t expert) const;  // nullptr: no such expert
};

// One node's share of a layer's routed experts, counted from the homes.
struct ExpertCounts {
  int64_t held = 0;         // homed on the node
  int64_t on_gpu = 0;       // of those, resident on a GPU
  int64_t in_ram = 0;       // in host RAM
  int64_t cache_slots = 0;  // GPU expert-cache slots the node's run of the layer has for those in RAM
};

struct PrefillSplit {
  double projections = 0;  // the non-routed layers' GEMMs (and the shared experts)
  double attention = 0;    // scores and weighted sums over the selected, window and compressed keys
  double indexer = 0;      // the lightning indexer's scores over every earlier compressed key (CSA layers)
  double experts = 0;      // routed experts where they are computed: on a GPU (resident, cached, streamed; the
                           // copies apart) or by the CPU (in RAM, beside the GPU's work when there is one)
  double total() const { return projections + attention + indexer + experts; }
  PrefillSplit& operator+=(const PrefillSplit& o) {
    projections += o.projections, attention += o.attention, indexer += o.indexer, experts += o.experts;
    return *this;
  }
  PrefillSplit scaled(double f) const { return {projections * f, attention * f, indexer * f, experts * f}; }
};

struct CostEstimate {
  double decode_tok_s = 0;
  std::string decode_bottleneck;
  double decode_gpu_ms = 0;         // non-routed weights, KV reads, cached experts
  double decode_attention_ms = 0;   // of which KV reads or attention arithmetic, the slower in each layer
  double decode_cpu_ms = 0;         // routed experts read from host RAM
  double decode_sync_ms = 0;        // GPU<->CPU hand-offs and network collectives
  double decode_ceiling_tok_s = 0;  // routed experts alone, from RAM at peak (hardware.md's table)
  double expert_hit_rate = 0;       // share of routed-expert uses served on a GPU
  double prefill_tok_s = 0;         // a first chunk (short context)
  double prefill_full_tok_s = 0;    // averaged over a prompt that fills the context
  std::string prefill_bottleneck;
  std::string prefill_expert_path;  // "stream to GPU" or "CPU"
  double prefill_full_s = 0;        // seconds to prefill the whole context
  std::string prefill_full_bottleneck, prefill_full_expert_path;
  double prefill_copy_s = 0;       // a chunk's expert copies at mid-context, seconds
  double prefill_copy_hidden = 1;  // share of those copies behind GPU compute
  // Where a chunk at mid-context spends its compute, in seconds per token, summed over the layers (the slowest
  // node's share of each layer's routed experts): what bounds a long prompt's prefill besides the copies.
  PrefillSplit prefill_full_split;
  // In most of decode_attention_ms, attention's and the indexer's arithmetic outlasts their KV reads.
  bool decode_attention_compute_bound = false;
};

struct KvFit {
  KvType type = KvType::FP8;
  int64_t max_ctx = 0;       // longest context that fits (0: none)
  int64_t bytes_at_ctx = 0;  // KV bytes at the requested context
};

struct Shortfall {
  std::string device;
  int64_t need = 0;
  int64_t have = 0;
  std::string detail;  // the biggest items on that device
};

struct Plan {
  static constexpr int kSchemaVersion = 2;

  std::string model;  // name
  core::Arch arch = core::Arch::DeepseekV4;
  std::string model_source;  // preset / config.json / checkpoint
  Hardware hardware;
  PlanOptions options;  // as requested, ctx resolved
  KvType kv_type = KvType::FP8;
  std::string layout;            // how layers and experts are spread, in words
  Split split = Split::Experts;  // the layout placed (never Auto)
  std::string split_reason;      // why that one, in one line
  bool fits = false;

  std::vector<DevicePlan> devices;
  std::vector<LayerPlan> layers;
  KvBytes kv{};               // all sequences, all planned layers
  int64_t weights_bytes = 0;  // loaded weights (MTP only with options.mtp)
  CostEstimate cost;
  std::vector<KvFit> kv_fits;
  std::vector<Shortfall> shortfalls;
  std::vector<std::string> suggestions;
  std::vector<std::string> warnings;

  // The chunk whose workspace the GPUs keep through decode: options.resident_chunk when a GPU's prefill borrows
  // its expert cache (DevicePlan::prefill_borrowed), otherwise the prefill chunk itself.
  int64_t resident_chunk() const;
  int64_t prefill_borrowed() const;  // over the devices
};

// The largest prefill chunk make_plan considers: big enough that streaming every routed expert of a layer once per
// chunk pays on a PCIe 4.0 GPU, small enough that its workspace leaves the GPU room to stream through.
constexpr int64_t kMaxPrefillChunk = 16384;

// The prefill chunk make_plan takes with choose_ubatch: the fastest whole-context prefill among o.ubatch ..
// kMaxPrefillChunk tokens (at most the context), each placed with its chunk's workspace, as long as decode keeps
// 95% of its speed at o.ubatch (a workspace held through decode takes VRAM from the expert cache; one that borrows
// the cache during prefill takes none) and the plan still fits; o.ubatch when it does not fit at all.
int64_t choose_prefill_chunk(const ModelSpec& spec, const Hardware& hw, const PlanOptions& o, KvType kv);

// Validates the options (one-line ferry::Error naming the flag), places everything and estimates speed.
Plan make_plan(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options);

// One placement for a fixed KV type: no KV search, no suggestions. The building block of make_plan. With
// options.split Auto and several nodes, every layout is placed and estimated, and the fastest that fits is kept
// (split.cpp); the plan is estimated then.
Plan place(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options, KvType kv);
// One placement in the given layout (not Auto), not estimated (placement.cpp).
Plan place_as(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options, KvType kv, Split split);

// Fills plan.cost from the placement (cost_model.cpp).
void estimate_cost(const ModelSpec& spec, Plan& plan);
// The FLOPs of one token in layer l the cost model counts (cost_model.cpp): the non-routed part and one routed
// expert; and attention with the indexer at position `pos`. What `ferry bench decode` divides its times into.
struct LayerFlops {
  double dense = 0;   // non-routed projections per token
  double expert = 0;  // one routed expert per token
};
LayerFlops layer_flops(const core::ModelConfig& c, int64_t l);
struct AttnFlops {
  double attn = 0;   // scores and weighted sum over the keys, BF16 tensor cores
  double index = 0;  // indexer scores, FP4 queries x FP4 keys (V4), on the GPU's low-precision tensor cores
};
AttnFlops attention_flops(const core::ModelConfig& c, int64_t l, double pos);

// Checks that a plan (read from a file, perhaps edited) is for this model and can run: the same model
// (architecture, weight bytes, layers, routed experts per layer), every device's routed-expert bytes those its
// homes give it, every device within its capacity. Throws a one-line ferry::Error naming the first problem.
void check_plan_for_model(const Plan& plan, const ModelSpec& spec);

// ---- homes (homes.cpp) ----

// Layer `l`'s experts homed on `node`, and the node's cache slots for them.
ExpertCounts expert_counts(const Plan& plan, const LayerPlan& l, int node);
// The run of a layer on `node`; nullptr when no device of that node runs it.
const LayerRun* run_on_node(const Plan& plan, const LayerPlan& l, int node);
// Checks the homes and runs of every layer: devices that exist; each expert 0..n-1 of a layer homed exactly
// once; a cache GPU only for experts in RAM, on the holder's node, running the layer; cache slots only on GPU
// runs; at most one run per node; the runs and homes of plan.split (Experts: a run on every node; Layers: one
// run, every expert on its node; LayersExperts: one run). Throws a one-line ferry::Error naming the layer.
void check_homes(const Plan& plan);
// Node `node`'s view: its devices (indices renumbered), each layer's runs and expert homes on them, its
// shortfalls and whether its devices fit. The view of a one-node plan is the plan.
Plan plan_for_node(const Plan& plan, int node);
// The node whose view `plan` is (the node of its devices; 0 for a one-node plan). Throws when its devices are on
// several nodes (a whole multi-node plan, not a view).
int view_node(const Plan& plan);

}  // namespace ferry::planner
