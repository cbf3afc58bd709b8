// planner::Plan: where every tensor goes, how much memory each device uses, whether it fits and how fast it
// will run. `make_plan` is a pure function of (ModelSpec, Hardware, PlanOptions): the dry run (`ferry plan`)
// and the real run execute the same Plan.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "planner/hardware.h"
#include "planner/kv_cache.h"
#include "planner/model_spec.h"

namespace ferry::planner {

enum class ExpertCacheMode : uint8_t { Auto, Off, Slots };

struct PlanOptions {
  int64_t ctx = 0;                // tokens per sequence; 0 = the model's maximum
  int64_t parallel = 1;           // sequences decoded together, each with its own cache
  std::optional<KvType> kv_type;  // nullopt = the model's native type (default_kv_type)
  bool kv_auto = false;           // highest-fidelity type that fits
  int64_t ubatch = 512;           // prefill chunk (tokens per forward step)
  int64_t threads = 0;            // CPU worker threads of the forward pass; 0 = the host's cores
  bool mtp = false;               // load the MTP layer (weights + its KV)
  ExpertCacheMode expert_cache = ExpertCacheMode::Auto;
  int64_t expert_cache_slots = 0;  // per MoE layer, with ExpertCacheMode::Slots
  bool logits_all = false;         // keep every position's logits (ferry run --logits-out)
  double expert_hit_rate = -1;     // override the cache hit-rate estimate (0..1); < 0 = estimate
};

enum class DeviceKind : uint8_t { Gpu, Host };

struct DevicePlan {
  std::string id;  // "gpu0", "host" (one NUMA node), "host.numa1"; "node2.gpu0" with several nodes
  DeviceKind kind = DeviceKind::Gpu;
  int node = 0;
  int index = 0;     // GPU index or NUMA node
  std::string name;  // "rtx3090", "host RAM"
  int64_t capacity = 0;
  std::vector<std::pair<std::string, int64_t>> use;  // class -> bytes, in placement order

  void add(const std::string& cls, int64_t bytes);
  int64_t used() const;
  int64_t bytes_of(const std::string& cls) const;
  bool over() const { return used() > capacity; }
};

struct LayerPlan {
  int layer = 0;
  core::AttnKind attn = core::AttnKind::Swa;
  bool mtp = false;
  int device = -1;               // index into Plan::devices: attention, non-routed weights and KV
  int64_t experts_per_node = 0;  // routed experts this layer keeps on each node
  int64_t experts_on_gpu = 0;    // of those, resident on the layer's GPU (computed there, never on the CPU)
  int64_t cache_slots = 0;       // GPU expert-cache slots for the rest
  int64_t experts_in_ram = 0;    // per node, computed by the CPU or streamed
};

struct CostEstimate {
  double decode_tok_s = 0;
  std::string decode_bottleneck;
  double decode_gpu_ms = 0;         // non-routed weights, KV reads, cached experts
  double decode_cpu_ms = 0;         // routed experts read from host RAM
  double decode_sync_ms = 0;        // GPU<->CPU hand-offs and network collectives
  double decode_ceiling_tok_s = 0;  // routed experts alone, from RAM at peak (hardware.md's table)
  double expert_hit_rate = 0;       // share of routed-expert uses served on a GPU
  double prefill_tok_s = 0;         // a first chunk (short context)
  double prefill_full_tok_s = 0;    // averaged over a prompt that fills the context
  std::string prefill_bottleneck;
  std::string prefill_expert_path;  // "stream to GPU" or "CPU"
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
  static constexpr int kSchemaVersion = 1;

  std::string model;  // name
  core::Arch arch = core::Arch::DeepseekV4;
  std::string model_source;  // preset / config.json / checkpoint
  Hardware hardware;
  PlanOptions options;  // as requested, ctx resolved
  KvType kv_type = KvType::FP8;
  std::string layout;  // how layers and experts are spread
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
};

// Validates the options (one-line ferry::Error naming the flag), places everything and estimates speed.
Plan make_plan(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options);

// One placement for a fixed KV type: no KV search, no suggestions. The building block of make_plan.
Plan place(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options, KvType kv);

// Fills plan.cost from the placement (cost_model.cpp).
void estimate_cost(const ModelSpec& spec, Plan& plan);

}  // namespace ferry::planner
