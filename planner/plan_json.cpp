#include "planner/plan_json.h"

#include <fmt/format.h>
#include <algorithm>

#include "planner/core/error.h"

namespace ferry::planner {

using ojson = nlohmann::ordered_json;

namespace {

std::string_view cache_mode_name(ExpertCacheMode m) {
  switch (m) {
    case ExpertCacheMode::Auto: return "auto";
    case ExpertCacheMode::Off: return "off";
    case ExpertCacheMode::Slots: return "slots";
  }
  return "?";
}

ExpertCacheMode cache_mode_from(const std::string& s) {
  if (s == "auto") return ExpertCacheMode::Auto;
  if (s == "off") return ExpertCacheMode::Off;
  if (s == "slots") return ExpertCacheMode::Slots;
  FERRY_THROW("plan: unknown options.expert_cache '{}'", s);
}

template <class T>
T field(const ojson& j, const char* key, const char* where) {
  auto it = j.find(key);
  if (it == j.end()) FERRY_THROW("plan: missing {}.{}", where, key);
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    FERRY_THROW("plan: {}.{} has the wrong type ({})", where, key, it->type_name());
  }
}

const ojson& object(const ojson& j, const char* key, const char* where) {
  auto it = j.find(key);
  if (it == j.end() || !(it->is_object() || it->is_array())) FERRY_THROW("plan: missing {}.{}", where, key);
  return *it;
}

core::Arch arch_from(const std::string& s) {
  for (core::Arch a : {core::Arch::DeepseekV4, core::Arch::DeepseekV3, core::Arch::DeepseekV32})
    if (core::arch_name(a) == s) return a;
  FERRY_THROW("plan: unknown model.arch '{}'", s);
}

KvType kv_from(const std::string& s) {
  auto t = kv_type_from_name(s);
  if (!t) FERRY_THROW("plan: unknown KV type '{}'", s);
  return *t;
}

Split split_from(const std::string& s, const char* where) {
  auto v = split_from_name(s);
  if (!v) FERRY_THROW("plan: unknown {} '{}' (expected auto, experts, layers or layers+experts)", where, s);
  return *v;
}

// The layout of a plan written before plans named it (schema 2 files may lack `split`): a run on every node is
// expert parallel; one run per layer with its experts on its node, layers; one run, layers+experts.
Split split_of_structure(const Plan& p) {
  bool every_node = true, experts_with_runner = true;
  for (const LayerPlan& l : p.layers) {
    every_node = every_node && l.runs.size() == static_cast<size_t>(p.hardware.nodes);
    for (const ExpertHome& h : l.experts)
      experts_with_runner = experts_with_runner && !l.runs.empty() &&
                            p.devices.at(static_cast<size_t>(h.device)).node ==
                                p.devices.at(static_cast<size_t>(l.runs.front().device)).node;
  }
  if (every_node) return Split::Experts;
  return experts_with_runner ? Split::Layers : Split::LayersExperts;
}

core::AttnKind attn_from(const std::string& s) {
  for (core::AttnKind k :
       {core::AttnKind::Swa, core::AttnKind::Csa, core::AttnKind::Hca, core::AttnKind::Mla, core::AttnKind::MlaDsa})
    if (core::attn_kind_name(k) == s) return k;
  FERRY_THROW("plan: unknown layer attention kind '{}'", s);
}

ojson hardware_to_json(const Hardware& hw) {
  ojson gpus = ojson::array();
  for (const auto& g : hw.gpus)
    gpus.push_back({{"name", g.name},
                    {"memory_bytes", g.memory_bytes},
                    {"free_bytes", g.free_bytes},
                    {"memory_bandwidth", g.memory_bandwidth},
                    {"bf16_tflops", g.bf16_tflops},
                    {"pcie", std::string(pcie_name(g.pcie))},
                    {"sm", g.sm},
                    {"probed", g.probed}});
  const auto& h = hw.host;
  return {{"source", hw.source},
          {"nodes", hw.nodes},
          {"gpus", gpus},
          {"host",
           {{"ram_bytes", h.ram_bytes},
            {"memory_bandwidth", h.memory_bandwidth},
            {"numa_nodes", h.numa_nodes},
            {"cores", h.cores},
            {"gflops_per_core", h.gflops_per_core},
            {"probed", h.probed}}},
          {"network", {{"bandwidth", hw.network.bandwidth}, {"latency_s", hw.network.latency_s}}},
          {"gpu_reserve_bytes", hw.gpu_reserve_bytes},
          {"host_reserve_bytes", hw.host_reserve_bytes}};
}

ojson devices_to_json(const std::vector<DevicePlan>& devices) {
  ojson out = ojson::array();
  for (const auto& d : devices) {
    ojson use = ojson::object();  // {} for a device the plan leaves empty, not null
    for (const auto& [c, b] : d.use) use[c.name] = b;
    out.push_back({{"id", d.id},
                   {"kind", d.kind == DeviceKind::Gpu ? "gpu" : "host"},
                   {"node", d.node},
                   {"index", d.index},
                   {"name", d.name},
                   {"capacity_bytes", d.capacity},
                   {"used_bytes", d.used()},
                   {"use", use},
                   {"prefill_borrowed_bytes", d.prefill_borrowed}});
  }
  return out;
}

ojson layers_to_json(const Plan& p) {
  auto id = [&](int device) { return p.devices[static_cast<size_t>(device)].id; };
  ojson layers = ojson::array();
  for (const auto& l : p.layers) {
    ojson runs = ojson::array();
    for (const auto& r : l.runs) runs.push_back({{"device", id(r.device)}, {"cache_slots", r.cache_slots}});
    ojson experts = ojson::array();
    for (const auto& h : l.experts) {
      ojson e = {{"first", h.first}, {"count", h.count}, {"step", h.step}, {"device", id(h.device)}};
      if (h.cache >= 0) e["cache"] = id(h.cache);
      experts.push_back(e);
    }
    layers.push_back({{"layer", l.layer},
                      {"attn", std::string(core::attn_kind_name(l.attn))},
                      {"mtp", l.mtp},
                      {"runs", runs},
                      {"experts", experts}});
  }
  return layers;
}

ojson cost_to_json(const CostEstimate& c) {
  return {{"decode_tok_s", c.decode_tok_s},
          {"decode_bottleneck", c.decode_bottleneck},
          {"decode_gpu_ms", c.decode_gpu_ms},
          {"decode_attention_ms", c.decode_attention_ms},
          {"decode_attention_compute_bound", c.decode_attention_compute_bound},
          {"decode_cpu_ms", c.decode_cpu_ms},
          {"decode_sync_ms", c.decode_sync_ms},
          {"decode_ceiling_tok_s", c.decode_ceiling_tok_s},
          {"expert_hit_rate", c.expert_hit_rate},
          {"prefill_tok_s", c.prefill_tok_s},
          {"prefill_full_tok_s", c.prefill_full_tok_s},
          {"prefill_bottleneck", c.prefill_bottleneck},
          {"prefill_expert_path", c.prefill_expert_path},
          {"prefill_full_split_ms",
           {{"projections", 1e3 * c.prefill_full_split.projections},
            {"attention", 1e3 * c.prefill_full_split.attention},
            {"indexer", 1e3 * c.prefill_full_split.indexer},
            {"experts", 1e3 * c.prefill_full_split.experts}}}};
}

Hardware hardware_from_json(const ojson& hw) {
  Hardware out;
  out.source = field<std::string>(hw, "source", "hardware");
  out.nodes = field<int>(hw, "nodes", "hardware");
  for (const auto& g : object(hw, "gpus", "hardware")) {
    GpuSpec s;
    s.name = field<std::string>(g, "name", "gpu");
    s.memory_bytes = field<int64_t>(g, "memory_bytes", "gpu");
    s.free_bytes = field<int64_t>(g, "free_bytes", "gpu");
    s.memory_bandwidth = field<double>(g, "memory_bandwidth", "gpu");
    s.bf16_tflops = field<double>(g, "bf16_tflops", "gpu");
    s.pcie = parse_pcie(field<std::string>(g, "pcie", "gpu"));
    s.sm = field<std::string>(g, "sm", "gpu");
    s.probed = field<bool>(g, "probed", "gpu");
    out.gpus.push_back(s);
  }
  const ojson& host = object(hw, "host", "hardware");
  out.host.ram_bytes = field<int64_t>(host, "ram_bytes", "host");
  out.host.memory_bandwidth = field<double>(host, "memory_bandwidth", "host");
  out.host.numa_nodes = field<int>(host, "numa_nodes", "host");
  out.host.cores = field<int>(host, "cores", "host");
  out.host.gflops_per_core = field<double>(host, "gflops_per_core", "host");
  out.host.probed = field<bool>(host, "probed", "host");
  const ojson& net = object(hw, "network", "hardware");
  out.network.bandwidth = field<double>(net, "bandwidth", "network");
  out.network.latency_s = field<double>(net, "latency_s", "network");
  out.gpu_reserve_bytes = field<int64_t>(hw, "gpu_reserve_bytes", "hardware");
  out.host_reserve_bytes = field<int64_t>(hw, "host_reserve_bytes", "hardware");
  return out;
}

void options_from_json(const ojson& o, Plan& p) {
  p.options.ctx = field<int64_t>(o, "ctx", "options");
  p.options.parallel = field<int64_t>(o, "parallel", "options");
  if (o.contains("snapshot_keep")) p.options.snapshot_keep = field<int64_t>(o, "snapshot_keep", "options");
  p.kv_type = kv_from(field<std::string>(o, "kv_type", "options"));
  p.options.kv_type = p.kv_type;
  p.options.kv_auto = field<bool>(o, "kv_auto", "options");
  p.options.ubatch = field<int64_t>(o, "ubatch", "options");
  p.options.threads = field<int64_t>(o, "threads", "options");
  p.options.mtp = field<bool>(o, "mtp", "options");
  p.options.expert_cache = cache_mode_from(field<std::string>(o, "expert_cache", "options"));
  p.options.expert_cache_slots = field<int64_t>(o, "expert_cache_slots", "options");
  p.options.logits_all = field<bool>(o, "logits_all", "options");
  p.options.expert_hit_rate = field<double>(o, "expert_hit_rate", "options");
  if (o.contains("split")) p.options.split = split_from(field<std::string>(o, "split", "options"), "options.split");
  // Plans saved before per-phase workspaces: the workspace of the whole chunk held throughout.
  if (o.contains("resident_chunk")) p.options.resident_chunk = field<int64_t>(o, "resident_chunk", "options");
  if (o.contains("borrow_cache_for_prefill"))
    p.options.borrow_cache_for_prefill = field<bool>(o, "borrow_cache_for_prefill", "options");
  if (p.options.resident_chunk < 1) FERRY_THROW("plan: options.resident_chunk must be at least 1");
}

std::vector<DevicePlan> devices_from_json(const ojson& devices) {
  std::vector<DevicePlan> out;
  for (const auto& d : devices) {
    DevicePlan dp;
    dp.id = field<std::string>(d, "id", "device");
    const std::string kind = field<std::string>(d, "kind", "device");
    if (kind != "gpu" && kind != "host") FERRY_THROW("plan: device {} has unknown kind '{}'", dp.id, kind);
    dp.kind = kind == "gpu" ? DeviceKind::Gpu : DeviceKind::Host;
    dp.node = field<int>(d, "node", "device");
    dp.index = field<int>(d, "index", "device");
    dp.name = field<std::string>(d, "name", "device");
    dp.capacity = field<int64_t>(d, "capacity_bytes", "device");
    if (d.contains("prefill_borrowed_bytes"))
      dp.prefill_borrowed = field<int64_t>(d, "prefill_borrowed_bytes", "device");
    for (const auto& [cls, bytes] : object(d, "use", "device").items()) {
      const UseClass* c = find_use_class(cls);
      if (!c) FERRY_THROW("plan: device {} has unknown memory class '{}'", dp.id, cls);
      if (!bytes.is_number_integer() || bytes.get<int64_t>() < 0)
        FERRY_THROW("plan: device {} use.{} must be a byte count", dp.id, cls);
      dp.use.emplace_back(*c, bytes.get<int64_t>());
    }
    out.push_back(std::move(dp));
  }
  return out;
}

// The layers, their runs and expert homes naming devices by id; check_homes() then checks them.
std::vector<LayerPlan> layers_from_json(const ojson& layers, const std::vector<DevicePlan>& devices) {
  auto device = [&](const std::string& id, const std::string& where) {
    auto it = std::find_if(devices.begin(), devices.end(), [&](const DevicePlan& d) { return d.id == id; });
    if (it == devices.end()) FERRY_THROW("plan: {} names unknown device '{}'", where, id);
    return static_cast<int>(it - devices.begin());
  };
  std::vector<LayerPlan> out;
  for (const auto& l : layers) {
    LayerPlan lp;
    lp.layer = field<int>(l, "layer", "layer");
    lp.attn = attn_from(field<std::string>(l, "attn", "layer"));
    lp.mtp = field<bool>(l, "mtp", "layer");
    const std::string where = fmt::format("layer {}", lp.layer);
    for (const auto& r : object(l, "runs", "layer")) {
      const int d = device(field<std::string>(r, "device", "run"), where);
      lp.runs.push_back({d, field<int64_t>(r, "cache_slots", "run")});
    }
    for (const auto& e : object(l, "experts", "layer")) {
      ExpertHome h;
      h.first = field<int64_t>(e, "first", "experts");
      h.count = field<int64_t>(e, "count", "experts");
      h.step = field<int64_t>(e, "step", "experts");
      h.device = device(field<std::string>(e, "device", "experts"), where);
      if (e.contains("cache")) h.cache = device(field<std::string>(e, "cache", "experts"), where);
      lp.experts.push_back(h);
    }
    out.push_back(std::move(lp));
  }
  return out;
}

CostEstimate cost_from_json(const ojson& c) {
  CostEstimate e;
  e.decode_tok_s = field<double>(c, "decode_tok_s", "cost");
  e.decode_bottleneck = field<std::string>(c, "decode_bottleneck", "cost");
  e.decode_gpu_ms = field<double>(c, "decode_gpu_ms", "cost");
  e.decode_cpu_ms = field<double>(c, "decode_cpu_ms", "cost");
  // Informative like the split below; plans saved before they were added have none.
  if (c.contains("decode_attention_ms")) {
    e.decode_attention_ms = field<double>(c, "decode_attention_ms", "cost");
    e.decode_attention_compute_bound = field<bool>(c, "decode_attention_compute_bound", "cost");
  }
  e.decode_sync_ms = field<double>(c, "decode_sync_ms", "cost");
  e.decode_ceiling_tok_s = field<double>(c, "decode_ceiling_tok_s", "cost");
  e.expert_hit_rate = field<double>(c, "expert_hit_rate", "cost");
  e.prefill_tok_s = field<double>(c, "prefill_tok_s", "cost");
  e.prefill_full_tok_s = field<double>(c, "prefill_full_tok_s", "cost");
  e.prefill_bottleneck = field<std::string>(c, "prefill_bottleneck", "cost");
  e.prefill_expert_path = field<std::string>(c, "prefill_expert_path", "cost");
  // Plans saved before the split was added have none: it is informative, recomputed with the cost.
  if (c.contains("prefill_full_split_ms")) {
    const ojson& s = c["prefill_full_split_ms"];
    e.prefill_full_split = {field<double>(s, "projections", "cost.prefill_full_split_ms") / 1e3,
                            field<double>(s, "attention", "cost.prefill_full_split_ms") / 1e3,
                            field<double>(s, "indexer", "cost.prefill_full_split_ms") / 1e3,
                            field<double>(s, "experts", "cost.prefill_full_split_ms") / 1e3};
  }
  return e;
}

}  // namespace

ojson plan_to_json(const Plan& p) {
  ojson j;
  j["schema"] = "ferry.plan";
  j["schema_version"] = Plan::kSchemaVersion;
  j["model"] = {{"name", p.model},
                {"arch", std::string(core::arch_name(p.arch))},
                {"source", p.model_source},
                {"weights_bytes", p.weights_bytes}};
  j["hardware"] = hardware_to_json(p.hardware);
  const auto& o = p.options;
  j["options"] = {{"ctx", o.ctx},
                  {"parallel", o.parallel},
                  {"snapshot_keep", o.snapshot_keep},
                  {"kv_type", std::string(kv_type_name(p.kv_type))},
                  {"kv_auto", o.kv_auto},
                  {"ubatch", o.ubatch},
                  {"threads", o.threads},
                  {"mtp", o.mtp},
                  {"expert_cache", std::string(cache_mode_name(o.expert_cache))},
                  {"expert_cache_slots", o.expert_cache_slots},
                  {"logits_all", o.logits_all},
                  {"expert_hit_rate", o.expert_hit_rate},
                  {"split", std::string(split_name(o.split))},
                  {"resident_chunk", o.resident_chunk},
                  {"borrow_cache_for_prefill", o.borrow_cache_for_prefill}};
  j["fits"] = p.fits;
  j["layout"] = p.layout;
  j["split"] = std::string(split_name(p.split));
  j["split_reason"] = p.split_reason;
  ojson kinds;
  for (size_t k = 0; k < kNumKvKinds; ++k)
    if (p.kv[k] > 0) kinds[std::string(kv_kind_name(static_cast<KvKind>(k)))] = p.kv[k];
  j["kv_cache"] = {{"type", std::string(kv_type_name(p.kv_type))}, {"total_bytes", kv_total(p.kv)}, {"by_kind", kinds}};
  j["devices"] = devices_to_json(p.devices);
  j["layers"] = layers_to_json(p);
  j["cost"] = cost_to_json(p.cost);
  ojson fits = ojson::array();
  for (const auto& f : p.kv_fits)
    fits.push_back(
        {{"type", std::string(kv_type_name(f.type))}, {"max_ctx", f.max_ctx}, {"bytes_at_ctx", f.bytes_at_ctx}});
  j["kv_fits"] = fits;
  ojson shortfalls = ojson::array();
  for (const auto& s : p.shortfalls)
    shortfalls.push_back({{"device", s.device}, {"need_bytes", s.need}, {"have_bytes", s.have}, {"detail", s.detail}});
  j["shortfalls"] = shortfalls;
  j["suggestions"] = p.suggestions;
  j["warnings"] = p.warnings;
  return j;
}

Plan plan_from_json(const ojson& j) {
  if (!j.is_object() || j.value("schema", std::string()) != "ferry.plan")
    FERRY_THROW("plan: not a ferry plan (schema != \"ferry.plan\")");
  const int version = field<int>(j, "schema_version", "plan");
  if (version != Plan::kSchemaVersion)
    FERRY_THROW("plan: schema_version {} is not supported (this ferry reads {})", version, Plan::kSchemaVersion);
  Plan p;
  const ojson& m = object(j, "model", "plan");
  p.model = field<std::string>(m, "name", "model");
  p.arch = arch_from(field<std::string>(m, "arch", "model"));
  p.model_source = field<std::string>(m, "source", "model");
  p.weights_bytes = field<int64_t>(m, "weights_bytes", "model");
  p.hardware = hardware_from_json(object(j, "hardware", "plan"));
  options_from_json(object(j, "options", "plan"), p);
  p.fits = field<bool>(j, "fits", "plan");
  p.layout = field<std::string>(j, "layout", "plan");
  const ojson& kv = object(j, "kv_cache", "plan");
  for (const auto& [name, bytes] : object(kv, "by_kind", "kv_cache").items()) {
    bool known = false;
    for (size_t k = 0; k < kNumKvKinds; ++k)
      if (kv_kind_name(static_cast<KvKind>(k)) == name) {
        p.kv[k] = bytes.get<int64_t>();
        known = true;
      }
    if (!known) FERRY_THROW("plan: unknown KV kind '{}'", name);
  }
  p.devices = devices_from_json(object(j, "devices", "plan"));
  p.layers = layers_from_json(object(j, "layers", "plan"), p.devices);
  if (j.contains("split")) {
    p.split = split_from(field<std::string>(j, "split", "plan"), "split");
    p.split_reason = field<std::string>(j, "split_reason", "plan");
  } else {
    p.split = split_of_structure(p);  // the devices' ids are resolved: every index is valid
  }
  check_homes(p);
  p.cost = cost_from_json(object(j, "cost", "plan"));
  for (const auto& f : object(j, "kv_fits", "plan"))
    p.kv_fits.push_back({kv_from(field<std::string>(f, "type", "kv_fits")), field<int64_t>(f, "max_ctx", "kv_fits"),
                         field<int64_t>(f, "bytes_at_ctx", "kv_fits")});
  for (const auto& s : object(j, "shortfalls", "plan"))
    p.shortfalls.push_back({field<std::string>(s, "device", "shortfall"), field<int64_t>(s, "need_bytes", "shortfall"),
                            field<int64_t>(s, "have_bytes", "shortfall"),
                            field<std::string>(s, "detail", "shortfall")});
  p.suggestions = field<std::vector<std::string>>(j, "suggestions", "plan");
  p.warnings = field<std::vector<std::string>>(j, "warnings", "plan");
  return p;
}

Plan plan_from_json_text(std::string_view text) {
  ojson j;
  try {
    j = ojson::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    FERRY_THROW("plan file is not valid JSON: {}", what);
  }
  return plan_from_json(j);
}

}  // namespace ferry::planner
