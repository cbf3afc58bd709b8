#include "planner/report.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "planner/core/units.h"

namespace ferry::planner {
namespace {

constexpr int kBarWidth = 50;

std::string printf_str(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

std::string bar(int64_t used, int64_t capacity) {
  const double share = capacity > 0 ? double(used) / double(capacity) : 1.0;
  const int filled = std::clamp(int(share * kBarWidth + 0.5), 0, kBarWidth);
  std::string s = "[" + std::string(static_cast<size_t>(filled), '#') +
                  std::string(static_cast<size_t>(kBarWidth - filled), '.') + "]";
  if (share > 1) s += " OVER";
  return s;
}

std::string ctx_text(int64_t ctx) {
  if (ctx >= 1024 && ctx % (1024 * 1024) == 0)
    return core::format_count(ctx) + " (" + std::to_string(ctx / (1024 * 1024)) + "M)";
  if (ctx >= 1024 && ctx % 1024 == 0) return core::format_count(ctx) + " (" + std::to_string(ctx / 1024) + "K)";
  return core::format_count(ctx);
}

// "3.4 h", "12 min", "45 s".
std::string duration_text(double s) {
  if (s >= 3600) return printf_str("%.1f h", s / 3600);
  if (s >= 60) return printf_str("%.1f min", s / 60);
  return printf_str("%.1f s", s);
}

// "0-42" style ranges of consecutive layer ids.
std::string ranges(const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    out += (out.empty() ? "" : ",") + std::to_string(ids[i]) + (j > i ? "-" + std::to_string(ids[j]) : "");
    i = j + 1;
  }
  return out;
}

void devices_section(const Plan& p, std::string& out) {
  for (const auto& d : p.devices) {
    const int64_t used = d.used();
    out += printf_str("%-14s %-22s %s of %s (%.1f%%)\n", d.id.c_str(), d.name.c_str(), core::format_bytes(used).c_str(),
                      core::format_bytes(d.capacity).c_str(), d.capacity > 0 ? 100.0 * used / d.capacity : 0.0);
    out += "  " + bar(used, d.capacity) + "\n";
    for (const auto& [cls, bytes] : d.use)
      out += printf_str("    %-28s %12s %6.1f%%\n", cls.name.c_str(), core::format_bytes(bytes).c_str(),
                        d.capacity > 0 ? 100.0 * bytes / d.capacity : 0.0);
    out += printf_str("    %-28s %12s\n", d.over() ? "SHORT BY" : "free",
                      core::format_bytes(std::abs(d.capacity - used)).c_str());
  }
}

// The devices that run a layer, in words: "gpu0", or "node0.gpu0 ... node3.gpu0 (one per node)".
std::string runs_text(const Plan& p, const std::vector<LayerRun>& runs) {
  if (runs.empty()) return "?";
  const auto id = [&](const LayerRun& r) { return p.devices[static_cast<size_t>(r.device)].id; };
  if (runs.size() == 1) return id(runs.front());
  if (runs.size() == 2) return id(runs.front()) + ", " + id(runs.back());
  return id(runs.front()) + " ... " + id(runs.back()) + " (one per node)";
}

void placement_section(const Plan& p, const ModelSpec& spec, std::string& out) {
  out += "Placement\n";
  // Layers grouped by the devices their attention runs on.
  std::map<std::string, std::vector<int>> by_runs;
  std::map<std::string, std::map<std::string, int>> kinds;
  for (const auto& l : p.layers) {
    const std::string where = runs_text(p, l.runs);
    by_runs[where].push_back(l.layer);
    ++kinds[where][std::string(core::attn_kind_name(l.attn)) + (l.mtp ? " (mtp)" : "")];
  }
  for (const auto& [where, ids] : by_runs) {
    std::string k;
    for (const auto& [name, n] : kinds[where]) k += (k.empty() ? "" : ", ") + std::to_string(n) + " " + name;
    out += printf_str("  layers %-12s (%s): non-routed weights + KV on %s\n", ranges(ids).c_str(), k.c_str(),
                      where.c_str());
  }
  const int nodes = p.hardware.nodes;
  int64_t moe = 0, resident = 0, slots_min = -1, slots_max = 0, per_node = 0;
  for (const auto& l : p.layers) {
    if (l.experts.empty()) continue;
    ++moe;
    bool all_resident = true;
    for (int node = 0; node < nodes; ++node) {
      const ExpertCounts n = expert_counts(p, l, node);
      if (n.held == 0) continue;
      per_node = std::max(per_node, n.held);
      if (n.on_gpu == n.held) continue;
      all_resident = false;
      slots_min = slots_min < 0 ? n.cache_slots : std::min(slots_min, n.cache_slots);
      slots_max = std::max(slots_max, n.cache_slots);
    }
    resident += all_resident;
  }
  if (moe > 0) {
    out += printf_str("  routed experts: %lld per layer x %lld MoE layers, %s each",
                      (long long)spec.config.n_routed_experts, (long long)moe,
                      core::format_bytes(spec.expert_bytes()).c_str());
    if (nodes == 1)
      out += "\n";
    else if (p.split == Split::Layers)
      out += "; all of a layer's on the node that runs it\n";
    else
      out += printf_str("; %lld per node on each of %d nodes\n", (long long)per_node, nodes);
    if (resident > 0) out += printf_str("    %lld layers' experts resident on the GPU\n", (long long)resident);
    if (resident < moe) {
      const int numa = p.hardware.host.numa_nodes;
      out += printf_str("    %lld layers' experts in host RAM%s, computed by the CPU at decode",
                        (long long)(moe - resident), numa > 1 ? printf_str(" across %d NUMA nodes", numa).c_str() : "");
      out += p.hardware.gpus.empty()
                 ? "\n"
                 : "; GPU expert cache " +
                       (slots_min == slots_max ? std::to_string(slots_max)
                                               : std::to_string(slots_min) + "-" + std::to_string(slots_max)) +
                       " slots per layer (LRU)\n";
    }
  }
  out += "  embedding in host RAM (one row per token); output head on " +
         (p.hardware.gpus.empty() ? std::string("the CPU") : runs_text(p, p.layers.back().runs)) + "\n";
  out += "  layout: " + p.layout + "\n";
  if (p.hardware.nodes > 1) out += "  split: " + std::string(split_name(p.split)) + " (" + p.split_reason + ")\n";
}

// Node n's homes of one layer in words: "experts 0-127 in RAM on host.numa0 (64), host.numa1 (64); cached or
// streamed by gpu0", "experts 0-127 resident on gpu0"; empty when the node holds none of its experts.
std::string node_homes_text(const Plan& p, const LayerPlan& l, int node) {
  std::vector<int> ids;
  std::string resident, ram, cache;
  for (const ExpertHome& h : l.experts) {
    const DevicePlan& d = p.devices[static_cast<size_t>(h.device)];
    if (d.node != node) continue;
    for (int64_t e = h.first; e <= h.last(); e += h.step) ids.push_back(static_cast<int>(e));
    std::string& list = d.kind == DeviceKind::Gpu ? resident : ram;
    list += (list.empty() ? "" : ", ") + d.id + " (" + std::to_string(h.count) + ")";
    if (h.cache >= 0) cache = p.devices[static_cast<size_t>(h.cache)].id;
  }
  if (ids.empty()) return "";
  std::sort(ids.begin(), ids.end());
  std::string out = "experts " + ranges(ids);
  if (!resident.empty()) out += " resident on " + resident + (ram.empty() ? "" : ";");
  if (!ram.empty()) out += " in RAM on " + ram;
  if (!cache.empty()) out += "; cached or streamed by " + cache;
  return out;
}

// Where each routed expert lives: per node, the MoE layers grouped by their homes on that node.
void homes_section(const Plan& p, std::string& out) {
  out += "Expert homes (in RAM: computed by that NUMA node's cores, or on the GPU that caches or streams it)\n";
  for (int n = 0; n < p.hardware.nodes; ++n) {
    std::vector<std::pair<std::string, std::vector<int>>> groups;  // homes text -> layers, in layer order
    for (const LayerPlan& l : p.layers) {
      const std::string text = node_homes_text(p, l, n);
      if (text.empty()) continue;
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == text; });
      if (it == groups.end()) it = groups.insert(groups.end(), {text, {}});
      it->second.push_back(l.layer);
    }
    for (const auto& [text, layers] : groups)
      out += printf_str("  node%-3d layers %-10s ", n, ranges(layers).c_str()) + text + "\n";
  }
}

void kv_section(const Plan& p, std::string& out) {
  out += printf_str("KV cache (%s, %s tokens x %lld sequence%s): %s\n", std::string(kv_type_name(p.kv_type)).c_str(),
                    core::format_count(p.options.ctx).c_str(), (long long)p.options.parallel,
                    p.options.parallel == 1 ? "" : "s", core::format_bytes(kv_total(p.kv), 3).c_str());
  for (size_t k = 0; k < kNumKvKinds; ++k)
    if (p.kv[k] > 0)
      out += printf_str("    %-28s %12s\n", std::string(kv_kind_name(static_cast<KvKind>(k))).c_str(),
                        core::format_bytes(p.kv[k], 3).c_str());
  if (p.options.snapshot_keep == 0) return;
  int64_t snapshots = 0;
  for (const DevicePlan& d : p.devices) snapshots += d.bytes_of(use_class(Pool::Snapshots).name);
  out += printf_str("  prefix-reuse snapshots (%lld per sequence, host RAM): %s\n", (long long)p.options.snapshot_keep,
                    core::format_bytes(snapshots, 3).c_str());
}

// Where a long prompt's chunk spends its compute, so that "bound by GPU compute" says by what.
void prefill_split_line(const Plan& p, std::string& out) {
  const PrefillSplit& s = p.cost.prefill_full_split;
  if (s.total() <= 0) return;
  const bool gpu = !p.hardware.gpus.empty();
  const bool experts_on_cpu = gpu && p.cost.prefill_full_expert_path == "CPU";
  out += printf_str(
      "           a token's compute at mid-context%s: projections %.3f ms, attention %.3f ms, indexer %.3f ms,\n"
      "           routed experts %.3f ms%s\n",
      gpu ? " on the GPU" : "", 1e3 * s.projections, 1e3 * s.attention, 1e3 * s.indexer, 1e3 * s.experts,
      experts_on_cpu ? " (by the CPU, beside the GPU)" : "");
}

void speed_section(const Plan& p, std::string& out) {
  const auto& c = p.cost;
  const char* dense_part = p.hardware.gpus.empty() ? "non-routed" : "GPU";  // where the non-routed layers run
  out += "Predicted speed (one sequence)\n";
  out += printf_str("  decode   %7.1f tok/s   bound by %s\n", c.decode_tok_s, c.decode_bottleneck.c_str());
  out +=
      printf_str("           per token: %s %.1f ms, CPU experts %.1f ms, sync %.1f ms; expert hit rate on GPU %.0f%%\n",
                 dense_part, c.decode_gpu_ms, c.decode_cpu_ms, c.decode_sync_ms, 100 * c.expert_hit_rate);
  out += printf_str("           of the %s part, attention and indexer at %s tokens %.1f ms, bound by %s\n", dense_part,
                    core::format_count(p.options.ctx).c_str(), c.decode_attention_ms,
                    c.decode_attention_compute_bound ? "their arithmetic" : "their KV reads");
  if (c.decode_ceiling_tok_s > 0)
    out += printf_str("           ceiling if every routed expert were read from RAM at peak bandwidth: %.1f tok/s\n",
                      c.decode_ceiling_tok_s);
  out += printf_str("  prefill  %7.1f tok/s   first chunks (ubatch %lld), bound by %s; experts: %s\n", c.prefill_tok_s,
                    (long long)p.options.ubatch, c.prefill_bottleneck.c_str(), c.prefill_expert_path.c_str());
  out +=
      printf_str("           %7.1f tok/s   averaged over a prompt that fills the %s-token context: %s, bound by %s\n",
                 c.prefill_full_tok_s, core::format_count(p.options.ctx).c_str(),
                 duration_text(c.prefill_full_s).c_str(), c.prefill_full_bottleneck.c_str());
  if (c.prefill_copy_s > 0)
    out += printf_str("           expert copies %.0f ms a chunk at mid-context, %.0f%% of it behind GPU compute\n",
                      1e3 * c.prefill_copy_s, 100 * c.prefill_copy_hidden);
  prefill_split_line(p, out);
}

// Per phase, where the routed experts in RAM are computed and what the GPU's expert VRAM holds.
void phases_section(const Plan& p, const ModelSpec& spec, std::string& out) {
  int64_t cache = 0, stream = 0;
  for (const DevicePlan& d : p.devices) {
    if (d.node != 0 || d.kind != DeviceKind::Gpu) continue;
    cache += d.bytes_of(use_class(Pool::ExpertCache).name);
    stream += d.bytes_of(use_class(Pool::ExpertStream).name);
  }
  const int64_t eb = std::max<int64_t>(1, spec.expert_bytes());
  const int64_t borrowed = p.prefill_borrowed();
  out += printf_str("Phases (prefill chunk %lld tokens%s)\n", (long long)p.options.ubatch,
                    p.options.choose_ubatch ? ", chosen by the planner; --ubatch overrides" : ", from --ubatch");
  if (borrowed > 0)
    out += printf_str("  prefill  the chunk's workspace (%s) borrows the expert cache's VRAM while a prompt is fed\n",
                      core::format_bytes(borrowed).c_str());
  // Borrowing takes every cache slot: the stream slots alone are the ring.
  const int64_t ring = borrowed > 0 ? stream : cache + stream;
  if (p.cost.prefill_full_expert_path == "stream to GPU")
    out += printf_str(
        "  prefill  %s (%s, %lld experts) are one ring of streaming slots: each routed expert of a\n"
        "           layer the chunk uses is copied once per chunk and computed on the GPU as a grouped GEMM while\n"
        "           the next ones are copied\n",
        borrowed > 0 ? "the stream slots" : "the expert cache and stream slots", core::format_bytes(ring).c_str(),
        (long long)(ring / eb));
  else
    out += "  prefill  routed experts in RAM: " + p.cost.prefill_full_expert_path + "\n";
  if (borrowed > 0)
    out += printf_str("  decode   the GPU keeps the workspace of a %lld-token chunk; longer prompts borrow as above\n",
                      (long long)p.resident_chunk());
  if (cache > 0)
    out +=
        printf_str("  decode   the expert cache (%s) refills from the experts decode uses (LRU); misses on the CPU\n",
                   core::format_bytes(cache).c_str());
  else
    out += "  decode   routed experts where their homes are (no GPU expert cache)\n";
}

void fits_section(const Plan& p, std::string& out) {
  out += "Longest context per KV type (same hardware and options)\n";
  for (const auto& f : p.kv_fits)
    out += printf_str("  %-5s %-22s KV at %s tokens: %s%s\n", std::string(kv_type_name(f.type)).c_str(),
                      f.max_ctx > 0 ? ctx_text(f.max_ctx).c_str() : "does not fit",
                      core::format_count(p.options.ctx).c_str(), core::format_bytes(f.bytes_at_ctx).c_str(),
                      f.type == p.kv_type ? "  <- this plan" : "");
}

}  // namespace

std::string shortfall_text(const Shortfall& s) {
  return printf_str("%s needs %s but has %s: short by %s (largest: %s)", s.device.c_str(),
                    core::format_bytes(s.need).c_str(), core::format_bytes(s.have).c_str(),
                    core::format_bytes(s.need - s.have).c_str(), s.detail.c_str());
}

std::string format_plan(const Plan& p, const ModelSpec& spec) {
  std::string out;
  const char* source = spec.source == ModelSource::Preset       ? "preset"
                       : spec.source == ModelSource::ConfigJson ? "config.json"
                                                                : "checkpoint headers";
  out += printf_str("model     %s (%s, %s): %s of weights%s\n", p.model.c_str(),
                    std::string(core::arch_name(p.arch)).c_str(), source, core::format_bytes(p.weights_bytes).c_str(),
                    p.options.mtp ? " incl. MTP" : "");
  out += "hardware  " + describe(p.hardware) + " (" + p.hardware.source + ")\n";
  out += printf_str("request   context %s tokens x %lld, KV %s, ubatch %lld\n\n", ctx_text(p.options.ctx).c_str(),
                    (long long)p.options.parallel, std::string(kv_type_name(p.kv_type)).c_str(),
                    (long long)p.options.ubatch);
  out += p.fits ? "FITS\n\n" : "DOES NOT FIT\n";
  for (const auto& s : p.shortfalls) out += "  " + shortfall_text(s) + "\n";
  if (!p.fits) {
    out += p.suggestions.empty() ? "  no nearby configuration fits\n" : "  nearest configurations that fit:\n";
    for (const auto& s : p.suggestions) out += "    " + s + "\n";
    out += "\n";
  }
  devices_section(p, out);
  out += "\n";
  placement_section(p, spec, out);
  out += "\n";
  if (std::any_of(p.layers.begin(), p.layers.end(), [](const LayerPlan& l) { return !l.experts.empty(); })) {
    homes_section(p, out);
    out += "\n";
  }
  kv_section(p, out);
  out += "\n";
  if (p.fits) {
    speed_section(p, out);
    out += "\n";
    if (std::any_of(p.layers.begin(), p.layers.end(), [](const LayerPlan& l) { return !l.experts.empty(); })) {
      phases_section(p, spec, out);
      out += "\n";
    }
  }
  fits_section(p, out);
  if (!p.warnings.empty()) {
    out += "\nNotes\n";
    for (const auto& w : p.warnings) out += "  - " + w + "\n";
  }
  return out;
}

}  // namespace ferry::planner
