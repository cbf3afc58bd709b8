#include "planner/plan_json.h"

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
  FERRY_THROW("plan: unknown options.expert_cache '" + s + "'");
}

template <class T>
T field(const ojson& j, const char* key, const char* where) {
  auto it = j.find(key);
  if (it == j.end()) FERRY_THROW(std::string("plan: missing ") + where + "." + key);
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    FERRY_THROW(std::string("plan: ") + where + "." + key + " has the wrong type (" + it->type_name() + ")");
  }
}

const ojson& object(const ojson& j, const char* key, const char* where) {
  auto it = j.find(key);
  if (it == j.end() || !(it->is_object() || it->is_array()))
    FERRY_THROW(std::string("plan: missing ") + where + "." + key);
  return *it;
}

core::Arch arch_from(const std::string& s) {
  for (core::Arch a : {core::Arch::DeepseekV4, core::Arch::DeepseekV3, core::Arch::DeepseekV32})
    if (core::arch_name(a) == s) return a;
  FERRY_THROW("plan: unknown model.arch '" + s + "'");
}

KvType kv_from(const std::string& s) {
  auto t = kv_type_from_name(s);
  if (!t) FERRY_THROW("plan: unknown KV type '" + s + "'");
  return *t;
}

core::AttnKind attn_from(const std::string& s) {
  for (core::AttnKind k :
       {core::AttnKind::Swa, core::AttnKind::Csa, core::AttnKind::Hca, core::AttnKind::Mla, core::AttnKind::MlaDsa})
    if (core::attn_kind_name(k) == s) return k;
  FERRY_THROW("plan: unknown layer attention kind '" + s + "'");
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

  ojson gpus = ojson::array();
  for (const auto& g : p.hardware.gpus)
    gpus.push_back({{"name", g.name},
                    {"memory_bytes", g.memory_bytes},
                    {"free_bytes", g.free_bytes},
                    {"memory_bandwidth", g.memory_bandwidth},
                    {"bf16_tflops", g.bf16_tflops},
                    {"pcie", std::string(pcie_name(g.pcie))},
                    {"sm", g.sm},
                    {"probed", g.probed}});
  const auto& h = p.hardware.host;
  j["hardware"] = {
      {"source", p.hardware.source},
      {"nodes", p.hardware.nodes},
      {"gpus", gpus},
      {"host",
       {{"ram_bytes", h.ram_bytes},
        {"memory_bandwidth", h.memory_bandwidth},
        {"numa_nodes", h.numa_nodes},
        {"cores", h.cores},
        {"gflops_per_core", h.gflops_per_core},
        {"probed", h.probed}}},
      {"network", {{"bandwidth", p.hardware.network.bandwidth}, {"latency_s", p.hardware.network.latency_s}}},
      {"gpu_reserve_bytes", p.hardware.gpu_reserve_bytes},
      {"host_reserve_bytes", p.hardware.host_reserve_bytes}};

  const auto& o = p.options;
  j["options"] = {{"ctx", o.ctx},
                  {"parallel", o.parallel},
                  {"kv_type", std::string(kv_type_name(p.kv_type))},
                  {"kv_auto", o.kv_auto},
                  {"ubatch", o.ubatch},
                  {"threads", o.threads},
                  {"mtp", o.mtp},
                  {"expert_cache", std::string(cache_mode_name(o.expert_cache))},
                  {"expert_cache_slots", o.expert_cache_slots},
                  {"logits_all", o.logits_all},
                  {"expert_hit_rate", o.expert_hit_rate}};
  j["fits"] = p.fits;
  j["layout"] = p.layout;

  ojson kinds;
  for (size_t k = 0; k < kNumKvKinds; ++k)
    if (p.kv[k] > 0) kinds[std::string(kv_kind_name(static_cast<KvKind>(k)))] = p.kv[k];
  j["kv_cache"] = {{"type", std::string(kv_type_name(p.kv_type))}, {"total_bytes", kv_total(p.kv)}, {"by_kind", kinds}};

  ojson devices = ojson::array();
  for (const auto& d : p.devices) {
    ojson use;
    for (const auto& [c, b] : d.use) use[c] = b;
    devices.push_back({{"id", d.id},
                       {"kind", d.kind == DeviceKind::Gpu ? "gpu" : "host"},
                       {"node", d.node},
                       {"index", d.index},
                       {"name", d.name},
                       {"capacity_bytes", d.capacity},
                       {"used_bytes", d.used()},
                       {"use", use}});
  }
  j["devices"] = devices;

  ojson layers = ojson::array();
  for (const auto& l : p.layers)
    layers.push_back({{"layer", l.layer},
                      {"attn", std::string(core::attn_kind_name(l.attn))},
                      {"mtp", l.mtp},
                      {"device", l.device >= 0 ? p.devices[static_cast<size_t>(l.device)].id : ""},
                      {"experts_per_node", l.experts_per_node},
                      {"experts_on_gpu", l.experts_on_gpu},
                      {"cache_slots", l.cache_slots},
                      {"experts_in_ram", l.experts_in_ram}});
  j["layers"] = layers;

  const auto& c = p.cost;
  j["cost"] = {{"decode_tok_s", c.decode_tok_s},
               {"decode_bottleneck", c.decode_bottleneck},
               {"decode_gpu_ms", c.decode_gpu_ms},
               {"decode_cpu_ms", c.decode_cpu_ms},
               {"decode_sync_ms", c.decode_sync_ms},
               {"decode_ceiling_tok_s", c.decode_ceiling_tok_s},
               {"expert_hit_rate", c.expert_hit_rate},
               {"prefill_tok_s", c.prefill_tok_s},
               {"prefill_full_tok_s", c.prefill_full_tok_s},
               {"prefill_bottleneck", c.prefill_bottleneck},
               {"prefill_expert_path", c.prefill_expert_path}};
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
    FERRY_THROW("plan: schema_version " + std::to_string(version) + " is not supported (this ferry reads " +
                std::to_string(Plan::kSchemaVersion) + ")");
  Plan p;
  const ojson& m = object(j, "model", "plan");
  p.model = field<std::string>(m, "name", "model");
  p.arch = arch_from(field<std::string>(m, "arch", "model"));
  p.model_source = field<std::string>(m, "source", "model");
  p.weights_bytes = field<int64_t>(m, "weights_bytes", "model");

  const ojson& hw = object(j, "hardware", "plan");
  p.hardware.source = field<std::string>(hw, "source", "hardware");
  p.hardware.nodes = field<int>(hw, "nodes", "hardware");
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
    p.hardware.gpus.push_back(s);
  }
  const ojson& host = object(hw, "host", "hardware");
  p.hardware.host.ram_bytes = field<int64_t>(host, "ram_bytes", "host");
  p.hardware.host.memory_bandwidth = field<double>(host, "memory_bandwidth", "host");
  p.hardware.host.numa_nodes = field<int>(host, "numa_nodes", "host");
  p.hardware.host.cores = field<int>(host, "cores", "host");
  p.hardware.host.gflops_per_core = field<double>(host, "gflops_per_core", "host");
  p.hardware.host.probed = field<bool>(host, "probed", "host");
  const ojson& net = object(hw, "network", "hardware");
  p.hardware.network.bandwidth = field<double>(net, "bandwidth", "network");
  p.hardware.network.latency_s = field<double>(net, "latency_s", "network");
  p.hardware.gpu_reserve_bytes = field<int64_t>(hw, "gpu_reserve_bytes", "hardware");
  p.hardware.host_reserve_bytes = field<int64_t>(hw, "host_reserve_bytes", "hardware");

  const ojson& o = object(j, "options", "plan");
  p.options.ctx = field<int64_t>(o, "ctx", "options");
  p.options.parallel = field<int64_t>(o, "parallel", "options");
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
    if (!known) FERRY_THROW("plan: unknown KV kind '" + name + "'");
  }

  for (const auto& d : object(j, "devices", "plan")) {
    DevicePlan dp;
    dp.id = field<std::string>(d, "id", "device");
    const std::string kind = field<std::string>(d, "kind", "device");
    if (kind != "gpu" && kind != "host") FERRY_THROW("plan: device " + dp.id + " has unknown kind '" + kind + "'");
    dp.kind = kind == "gpu" ? DeviceKind::Gpu : DeviceKind::Host;
    dp.node = field<int>(d, "node", "device");
    dp.index = field<int>(d, "index", "device");
    dp.name = field<std::string>(d, "name", "device");
    dp.capacity = field<int64_t>(d, "capacity_bytes", "device");
    for (const auto& [cls, bytes] : object(d, "use", "device").items()) {
      if (!bytes.is_number_integer() || bytes.get<int64_t>() < 0)
        FERRY_THROW("plan: device " + dp.id + " use." + cls + " must be a byte count");
      dp.use.emplace_back(cls, bytes.get<int64_t>());
    }
    p.devices.push_back(std::move(dp));
  }
  for (const auto& l : object(j, "layers", "plan")) {
    LayerPlan lp;
    lp.layer = field<int>(l, "layer", "layer");
    lp.attn = attn_from(field<std::string>(l, "attn", "layer"));
    lp.mtp = field<bool>(l, "mtp", "layer");
    const std::string dev = field<std::string>(l, "device", "layer");
    auto it = std::find_if(p.devices.begin(), p.devices.end(), [&](const DevicePlan& d) { return d.id == dev; });
    if (it == p.devices.end())
      FERRY_THROW("plan: layer " + std::to_string(lp.layer) + " names unknown device '" + dev + "'");
    lp.device = static_cast<int>(it - p.devices.begin());
    lp.experts_per_node = field<int64_t>(l, "experts_per_node", "layer");
    lp.experts_on_gpu = field<int64_t>(l, "experts_on_gpu", "layer");
    lp.cache_slots = field<int64_t>(l, "cache_slots", "layer");
    lp.experts_in_ram = field<int64_t>(l, "experts_in_ram", "layer");
    p.layers.push_back(lp);
  }
  const ojson& c = object(j, "cost", "plan");
  p.cost.decode_tok_s = field<double>(c, "decode_tok_s", "cost");
  p.cost.decode_bottleneck = field<std::string>(c, "decode_bottleneck", "cost");
  p.cost.decode_gpu_ms = field<double>(c, "decode_gpu_ms", "cost");
  p.cost.decode_cpu_ms = field<double>(c, "decode_cpu_ms", "cost");
  p.cost.decode_sync_ms = field<double>(c, "decode_sync_ms", "cost");
  p.cost.decode_ceiling_tok_s = field<double>(c, "decode_ceiling_tok_s", "cost");
  p.cost.expert_hit_rate = field<double>(c, "expert_hit_rate", "cost");
  p.cost.prefill_tok_s = field<double>(c, "prefill_tok_s", "cost");
  p.cost.prefill_full_tok_s = field<double>(c, "prefill_full_tok_s", "cost");
  p.cost.prefill_bottleneck = field<std::string>(c, "prefill_bottleneck", "cost");
  p.cost.prefill_expert_path = field<std::string>(c, "prefill_expert_path", "cost");
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
    FERRY_THROW("plan file is not valid JSON: " + what);
  }
  return plan_from_json(j);
}

}  // namespace ferry::planner
