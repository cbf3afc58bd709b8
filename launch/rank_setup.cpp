#include "launch/rank_setup.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "launch/plan_file.h"
#include "launch/plan_flags.h"
#include "offload/device_plan.h"
#include "planner/core/error.h"
#include "planner/core/log.h"
#include "planner/core/units.h"
#include "planner/kv_cache.h"
#include "planner/model_spec.h"
#include "planner/plan_json.h"
#include "planner/report.h"
#include "runtime/backend/hardware_probe.h"
#include "runtime/backend/worker_threads.h"
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

// Every node is planned with the least RAM, cores and bandwidth of any rank (the planner's nodes are identical).
void take_least(planner::HostSpec& h, const nlohmann::json& rank) {
  h.ram_bytes = std::min(h.ram_bytes, rank["ram"].get<int64_t>());
  h.cores = std::min(h.cores, rank["cores"].get<int>());
  h.memory_bandwidth = std::min(h.memory_bandwidth, rank["bandwidth"].get<double>());
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
    take_least(h, j);
    h.numa_nodes = std::min(h.numa_nodes, j["numa"].get<int>());
  }
  return hw;
}

// The rank whose RAM every node is planned with (the lowest of those with the least).
int least_ram_rank(const std::vector<nlohmann::json>& ids) {
  const auto least = std::min_element(ids.begin(), ids.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a["ram"].get<int64_t>() < b["ram"].get<int64_t>();
  });
  return static_cast<int>(least - ids.begin());
}

// Rank 0's plan for every node, laid out as --split says: CPU only, or each node with the simulated device of --gpu.
// A plan that does not fit names the rank whose RAM the nodes were planned with and the `ferry plan` command that
// shows the same plan.
planner::Plan plan_nodes(const transport::World& world, const std::vector<nlohmann::json>& ids,
                         const OffloadFlags& offload, const std::string& model_dir, const runtime::SessionOptions& so,
                         int64_t parallel, planner::Split split, bool choose_chunk) {
  planner::Hardware hw = nodes_hardware(ids);
  const planner::ModelSpec spec = planner::load_model_spec(model_dir);
  planner::PlanOptions o;
  o.ctx = so.ctx;
  o.kv_type = so.kv_type;
  o.ubatch = so.ubatch;
  o.parallel = parallel;
  o.snapshot_keep = so.snapshot_every > 0 ? so.snapshot_keep : 0;
  o.threads = runtime::worker_threads();
  o.borrow_cache_for_prefill = false;  // the ranks keep their chunk's workspace throughout (one process borrows)
  std::string gpu_flag = "--no-gpu";
  if (offload.enabled()) {
    const offload::DeviceRequest device = offload.device_request();
    planner::HostSpec host = hw.host;
    host.numa_nodes = offload.numa > 0 ? offload.numa : host.numa_nodes;
    const int nodes = hw.nodes;
    hw = offload::device_hardware(host, device);
    hw.nodes = nodes;
    o = offload::device_plan_options(device, so, parallel, choose_chunk);
    gpu_flag = fmt::format("--gpu {}B --gpu-reserve 0", device.capacity);
  }
  o.split = split;
  o.choose_ubatch = choose_chunk;
  // As `ferry plan` does (the same Plan for the same hardware: tests/mpi/check_plan_same.py).
  planner::Plan plan = planner::make_plan(spec, hw, o);
  if (!plan.fits) {
    std::string why;
    for (const auto& s : plan.shortfalls) why += (why.empty() ? "" : "; ") + planner::shortfall_text(s);
    FERRY_THROW(
        "does not fit on {} nodes of {} RAM, the least of any rank ({}'s): {} (`ferry plan -m {} --nodes {} --host-ram "
        "{} --host-reserve 0 {} --cores {} --ctx {} --kv-type {} --ubatch {}{}{} --split {}` shows the whole plan)",
        hw.nodes, core::format_bytes(hw.host.ram_bytes), world.where(least_ram_rank(ids)), why, model_dir, hw.nodes,
        hw.host.ram_bytes, gpu_flag, hw.host.cores, so.ctx, planner::kv_type_name(so.kv_type), so.ubatch,
        parallel > 1 ? fmt::format(" --parallel {}", parallel) : "",
        o.snapshot_keep > 0 ? fmt::format(" --snapshots {}", o.snapshot_keep) : "", planner::split_name(split));
  }
  return plan;
}

}  // namespace

void RankFlags::add_to(CLI::App& app, bool with_split) {
  app.add_flag("--ranks-as-nodes", ranks_as_nodes,
               "Under mpirun: run each rank as a node of its own even when ranks share a machine (each rank's RAM "
               "counts as its node's; for trying multi-node layouts on one machine)");
  if (with_split)
    app.add_option("--split", split, std::string("Under mpirun: how the ranks share the model. ") + kSplitHelp)
        ->check(CLI::IsMember({"auto", "experts", "layers", "layers+experts"}));
  app.add_option("--pipeline", pipeline,
                 "Under mpirun, with several sequences (serve --parallel): on (default), rank 0 starts a sequence's "
                 "step while the ranks of the later layers finish another's; off, one step at a time across the ranks "
                 "(for comparison)")
      ->check(CLI::IsMember({"on", "off"}));
}

void plan_for_ranks(const transport::World& world, const RankFlags& flags, bool nodes_given, planner::Hardware& hw,
                    std::vector<std::string>& notes) {
  const nlohmann::json mine{{"ram", hw.host.ram_bytes},
                            {"cores", hw.host.cores},
                            {"bandwidth", hw.host.memory_bandwidth},
                            {"gpus", hw.gpus.size()}};
  const std::vector<std::string> all = world.allgather_text(mine.dump(), "the ranks' hardware");
  if (nodes_given) return;
  std::set<std::string> hosts(world.hosts().begin(), world.hosts().end());
  hw.nodes = flags.ranks_as_nodes ? world.size() : static_cast<int>(hosts.size());
  for (size_t r = 0; r < all.size(); ++r) {
    const nlohmann::json j = nlohmann::json::parse(all[r]);
    take_least(hw.host, j);
    if (j["gpus"].get<size_t>() != hw.gpus.size())
      notes.push_back(fmt::format("{} has {} GPUs, rank 0 {}: every node is planned with rank 0's",
                                  world.where(static_cast<int>(r)), j["gpus"].get<size_t>(), hw.gpus.size()));
  }
  notes.push_back(fmt::format("{} nodes: the {} ranks of mpirun{}, each with the least RAM, cores and bandwidth of any",
                              hw.nodes, world.size(), flags.ranks_as_nodes ? " (--ranks-as-nodes)" : ""));
}

RankRun::RankRun(const transport::World& world, const RankFlags& flags, const OffloadFlags& offload,
                 const std::string& model_dir, const runtime::SessionOptions& session, int64_t parallel,
                 bool choose_chunk)
    : world_(world) {
  FERRY_CHECK(!session.mtp, "--mtp runs in one process for now (not under mpirun)");
  FERRY_CHECK(offload.plan_in.empty(), "--plan runs in one process for now (under mpirun rank 0 plans)");
  std::string mine;
  world.agree("opening the checkpoint", [&] { mine = rank_identity(model_dir); });
  std::vector<nlohmann::json> ids;
  for (const std::string& text : world.allgather_text(mine, "the ranks' checkpoints and hardware"))
    ids.push_back(nlohmann::json::parse(text));
  world.agree("checking the ranks", [&] { check_rank(world, ids, flags.ranks_as_nodes); });
  std::string plan_json;
  world.agree("planning", [&] {
    if (!world.leader()) return;
    const planner::Plan plan =
        plan_nodes(world, ids, offload, model_dir, session, parallel, parse_split(flags.split), choose_chunk);
    if (!offload.plan_out.empty()) write_plan_file(offload.plan_out, plan);
    plan_json = planner::plan_to_json(plan).dump();
  });
  plan_json = world.broadcast_text(plan_json, 0, "the plan");
  world.agree("reading the plan", [&] {
    plan_ = planner::plan_from_json_text(plan_json);
    group_ = std::make_unique<transport::RankGroup>(world, transport::layer_roles(plan_, world.size()),
                                                    flags.pipeline == "on");
  });
  core::logger().info("{}", describe());
}

planner::Plan RankRun::node_view() const { return planner::plan_for_node(plan_, world_.rank()); }

std::string RankRun::gather_reports(const std::string& mine) const {
  const std::vector<std::string> all = world_.allgather_text(mine, "the ranks' reports");
  std::string out;
  for (size_t r = 0; r < all.size(); ++r) out += world_.where(static_cast<int>(r)) + ":\n" + all[r];
  return out;
}

runtime::SessionOptions RankRun::planned_session(runtime::SessionOptions base) const {
  base.ctx = plan_.options.ctx;
  base.kv_type = plan_.kv_type;
  base.ubatch = plan_.options.ubatch;
  return base;
}

runtime::SessionOptions RankRun::session_options(runtime::SessionOptions base, int slot) {
  base = planned_session(base);
  std::lock_guard lock(slots_mutex_);
  auto& exchange = slots_[slot];
  if (!exchange) exchange = std::make_unique<transport::MpiRankExchange>(*group_, slot);
  base.ranks = exchange.get();
  return base;
}

void RankRun::follow_slots(const runtime::ModelWeights& weights,
                           const std::function<runtime::SessionOptions(int slot)>& options_of) {
  std::map<int, std::unique_ptr<runtime::Session>> sessions;
  group_->follow(
      [&](int slot) -> runtime::Session& {
        auto& s = sessions[slot];
        if (!s) s = std::make_unique<runtime::Session>(weights, options_of(slot));
        return *s;
      },
      /*survive_session_files=*/true);
}

void RankRun::finish() {
  group_->announce_stop();
  const int64_t steps = group_->steps();
  if (steps < 2) return;
  if (group_->pipelined())
    core::logger().info("pipeline: {} of {} steps started while another sequence's step was on the later ranks",
                        group_->overlapped_steps(), steps);
  else
    core::logger().info("pipeline: none, {} steps one at a time across the ranks ({})", steps,
                        group_->head_rank() == 0       ? "rank 0 computes the head"
                        : !world_.concurrent_threads() ? "this MPI lacks MPI_THREAD_MULTIPLE"
                                                       : "--pipeline off");
}

std::string RankRun::describe() const {
  const auto& roles = group_->roles();
  const int me = world_.rank();
  std::string out = fmt::format("{} ranks as {} nodes ({}; split {}); {}:", world_.size(), plan_.hardware.nodes,
                                plan_.layout, planner::split_name(plan_.split), world_.where());
  // "experts 0-5 of layers 0-2,4": consecutive layers where this rank has the same part, grouped.
  auto parts = [&](auto part) {
    std::vector<std::pair<std::string, std::string>> groups;  // part -> layer ranges, in layer order
    for (size_t l = 0; l < roles.size();) {
      size_t end = l + 1;
      while (end < roles.size() && part(end) == part(l)) ++end;
      const std::string what = part(l), range = end - l > 1 ? fmt::format("{}-{}", l, end - 1) : std::to_string(l);
      l = end;
      if (what.empty()) continue;
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == what; });
      if (it == groups.end())
        groups.emplace_back(what, range);
      else
        it->second += "," + range;
    }
    std::string text;
    for (const auto& [what, layers] : groups) text += fmt::format("{}{} {}", text.empty() ? "" : ", ", what, layers);
    return text;
  };
  const std::string runs = parts([&](size_t l) {
    return std::count(roles[l].runners.begin(), roles[l].runners.end(), me) > 0 ? "runs layers" : "";
  });
  out += runs.empty() ? " runs no layer" : " " + runs;
  const std::string experts = parts([&](size_t l) -> std::string {
    for (const auto& h : roles[l].holders)
      if (h.rank == me) return fmt::format("experts {}-{} of layers", h.first, h.last);
    return "";
  });
  if (!experts.empty()) out += "; " + experts;
  if (group_->head_rank() == me) out += "; the head";
  return out;
}

}  // namespace ferry::launch
