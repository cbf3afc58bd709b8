#include "launch/rank_setup.h"

#include <tbb/task_arena.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "planner/core/log.h"
#include "planner/core/units.h"
#include "planner/kv_cache.h"
#include "planner/model_spec.h"
#include "planner/plan_json.h"
#include "planner/report.h"
#include "runtime/backend/hardware_probe.h"
#include "runtime/checkpoint/fingerprint.h"

namespace ferry::launch {

namespace {

constexpr const char* kVersion = "ferry 0.1.0";

// One line per rank: the ferry version, the checkpoint's directory and fingerprint, and its node's host.
std::string rank_identity(const std::string& model_dir) {
  const runtime::CheckpointFingerprint f = runtime::checkpoint_fingerprint(model_dir);
  std::vector<std::string> notes;
  const planner::HostSpec h = runtime::probe_host(notes);
  nlohmann::json j{{"version", kVersion},
                   {"dir", model_dir},
                   {"config", f.config},
                   {"headers", f.headers},
                   {"weights", f.weights},
                   {"shards", f.shards},
                   {"tensors", f.tensors},
                   {"ram", h.ram_bytes},
                   {"numa", h.numa_nodes},
                   {"cores", h.cores},
                   {"bandwidth", h.memory_bandwidth},
                   {"gflops", h.gflops_per_core}};
  return j.dump();
}

runtime::CheckpointFingerprint fingerprint_of(const nlohmann::json& j) {
  return {j["config"].get<uint64_t>(), j["headers"].get<uint64_t>(), j["weights"].get<uint64_t>(),
          j["shards"].get<int64_t>(), j["tensors"].get<int64_t>()};
}

// This rank runs the same ferry on the same checkpoint as rank 0, and, unless told otherwise, on a node of its
// own. Each rank checks itself, so that the agreed line names the lowest rank that differs.
void check_rank(const transport::World& world, const std::vector<nlohmann::json>& ids, bool ranks_as_nodes) {
  const nlohmann::json& zero = ids.front();
  const nlohmann::json& mine = ids[static_cast<size_t>(world.rank())];
  FERRY_CHECK(mine["version"] == zero["version"], "runs {}, rank 0 runs {}", mine["version"].get<std::string>(),
              zero["version"].get<std::string>());
  const std::string diff = fingerprint_of(mine).difference(fingerprint_of(zero));
  FERRY_CHECK(diff.empty(), "its checkpoint {} is not rank 0's {}: {}", mine["dir"].get<std::string>(),
              zero["dir"].get<std::string>(), diff);
  if (ranks_as_nodes) return;
  for (int r = 0; r < world.rank(); ++r)
    FERRY_CHECK(world.hosts()[static_cast<size_t>(r)] != world.host(),
                "shares host {} with rank {}: run one rank per node, or pass --ranks-as-nodes to run each rank as a "
                "node of its own",
                world.host(), r);
}

// The nodes' hardware as the planner sees it: identical nodes, each with the least any rank has.
planner::Hardware nodes_hardware(const std::vector<nlohmann::json>& ids) {
  planner::Hardware hw;
  hw.nodes = static_cast<int>(ids.size());
  hw.source = "probed";
  hw.host_reserve_bytes = 0;  // measured against this process's own allocations, as a single run is
  planner::HostSpec& h = hw.host;
  h.probed = true;
  h.ram_bytes = ids.front()["ram"].get<int64_t>();
  h.numa_nodes = ids.front()["numa"].get<int>();
  h.cores = ids.front()["cores"].get<int>();
  h.memory_bandwidth = ids.front()["bandwidth"].get<double>();
  h.gflops_per_core = ids.front()["gflops"].get<double>();
  for (const nlohmann::json& j : ids) {
    h.ram_bytes = std::min(h.ram_bytes, j["ram"].get<int64_t>());
    h.cores = std::min(h.cores, j["cores"].get<int>());
    h.memory_bandwidth = std::min(h.memory_bandwidth, j["bandwidth"].get<double>());
  }
  h.numa_nodes = 1;  // each rank computes on its own threads; NUMA placement per rank comes with --gpu
  return hw;
}

// The rank whose RAM every node is planned with (the lowest of those with the least).
int least_ram_rank(const std::vector<nlohmann::json>& ids) {
  const auto least = std::min_element(ids.begin(), ids.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a["ram"].get<int64_t>() < b["ram"].get<int64_t>();
  });
  return static_cast<int>(least - ids.begin());
}

planner::Plan plan_nodes(const transport::World& world, const std::vector<nlohmann::json>& ids,
                         const std::string& model_dir, const runtime::SessionOptions& so) {
  const planner::Hardware hw = nodes_hardware(ids);
  const planner::ModelSpec spec = planner::load_model_spec(model_dir);
  planner::PlanOptions o;
  o.ctx = so.ctx;
  o.kv_type = so.kv_type;
  o.ubatch = so.ubatch;
  o.threads = tbb::this_task_arena::max_concurrency();
  planner::Plan plan = planner::place(spec, hw, o, so.kv_type);
  if (!plan.fits) {
    std::string why;
    for (const auto& s : plan.shortfalls) why += (why.empty() ? "" : "; ") + planner::shortfall_text(s);
    FERRY_THROW(
        "does not fit on {} nodes of {} RAM, the least of any rank ({}'s): {} (`ferry plan -m {} --nodes {} --host-ram "
        "{} --host-reserve 0 --no-gpu --cores {} --ctx {} --kv-type {} --ubatch {}` shows the whole plan)",
        hw.nodes, core::format_bytes(hw.host.ram_bytes), world.where(least_ram_rank(ids)), why, model_dir, hw.nodes,
        hw.host.ram_bytes, hw.host.cores, so.ctx, planner::kv_type_name(so.kv_type), so.ubatch);
  }
  return plan;
}

}  // namespace

void RankFlags::add_to(CLI::App& app) {
  app.add_flag("--ranks-as-nodes", ranks_as_nodes,
               "Under mpirun: run each rank as a node of its own even when ranks share a machine (each rank's RAM "
               "counts as its node's; for trying multi-node layouts on one machine)");
}

RankRun::RankRun(const transport::World& world, const RankFlags& flags, const std::string& model_dir,
                 const runtime::SessionOptions& session)
    : world_(world) {
  FERRY_CHECK(!session.mtp, "--mtp runs in one process for now (not under mpirun)");
  std::string mine;
  world.agree("opening the checkpoint", [&] { mine = rank_identity(model_dir); });
  std::vector<nlohmann::json> ids;
  for (const std::string& text : world.allgather_text(mine, "the ranks' checkpoints and hardware"))
    ids.push_back(nlohmann::json::parse(text));
  world.agree("checking the ranks", [&] { check_rank(world, ids, flags.ranks_as_nodes); });
  std::string plan_json;
  world.agree("planning", [&] {
    if (world.leader()) plan_json = planner::plan_to_json(plan_nodes(world, ids, model_dir, session)).dump();
  });
  plan_json = world.broadcast_text(plan_json, 0, "the plan");
  world.agree("reading the plan", [&] {
    plan_ = planner::plan_from_json_text(plan_json);
    exchange_ = std::make_unique<transport::MpiRankExchange>(world, transport::layer_roles(plan_, world.size()));
  });
  core::logger().info("{}", describe());
}

runtime::SessionOptions RankRun::session_options(runtime::SessionOptions base) {
  base.ctx = plan_.options.ctx;
  base.kv_type = plan_.kv_type;
  base.ubatch = plan_.options.ubatch;
  base.ranks = exchange_.get();
  return base;
}

std::string RankRun::describe() const {
  const auto& roles = exchange_->roles();
  std::string out =
      fmt::format("{} ranks as {} nodes ({}); {}:", world_.size(), plan_.hardware.nodes, plan_.layout, world_.where());
  int64_t runs = 0;
  for (size_t l = 0; l < roles.size(); ++l) runs += exchange_->runs_layer(static_cast<int64_t>(l));
  out += fmt::format(" runs {} of {} layers", runs, roles.size());
  for (const auto& h : roles.front().holders)
    if (h.rank == world_.rank()) out += fmt::format(", experts {}-{} of layer 0", h.first, h.last);
  if (exchange_->runs_head()) out += ", the head";
  return out;
}

}  // namespace ferry::launch
