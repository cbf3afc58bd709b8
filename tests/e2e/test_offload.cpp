// Hybrid offload on the tiny model through the simulated device (issue 5): budgets that force every expert
// onto the device, every expert into host RAM, a small cache with evictions, and streaming prefill all give the
// CPU-only run's logits bit for bit (the same kernels on the same bytes in the same order), every device's
// high-water mark stays within the plan and within 2% of it, an allocation beyond the plan is refused, and no
// slot a kernel reads is overwritten while it reads it. The same with the host's experts copied to NUMA-bound
// memory (--host-experts numa), for a one-node plan and for a plan made for two NUMA nodes (bound here, on a
// one-node machine, both to node 0): each host node's weights are exactly its share of the plan.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "forward_check.h"
#include "offload/device_plan.h"
#include "offload/host_expert_store.h"
#include "offload/plan_binding.h"
#include "offload_scenarios.h"
#include "planner/core/error.h"
#include "planner/model_spec.h"
#include "planner/report.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/generate/generate.h"
#include "runtime/model/weight_placement.h"

namespace ferry::testing {
namespace {

// Checks that the bytes a kernel reads are the expert's own, just before and just after the kernel: a copy
// landing in a slot still read (another expert's, or a refill) would change them under it. For an expert on
// the device the checks run on the device's compute stream around the expert's op (SimOpObserver), so they run
// when it runs; for one on the host they run at acquire and release, around its computation.
class CheckingProvider final : public runtime::ForwardingExpertProvider, public runtime::SimOpObserver {
 public:
  CheckingProvider(runtime::ExpertProvider& inner, runtime::SimBackend& gpu)
      : ForwardingExpertProvider(inner), gpu_(gpu) {
    gpu_.set_observer(this);
  }
  ~CheckingProvider() override { gpu_.set_observer(nullptr); }

  runtime::MoeSchedule schedule(const runtime::LayerWeights& l, std::span<const int64_t> tokens) override {
    runtime::MoeSchedule s = inner_.schedule(l, tokens);
    expected_.clear();
    std::lock_guard<std::mutex> lock(mu_);
    for (const runtime::ExpertTask& t : s.tasks) {
      expected_.push_back({t.weights.w1.data, runtime::expert_regions(l.experts[static_cast<size_t>(t.expert)]),
                           runtime::expert_regions(t.weights)});
      if (t.on_device) {
        ++device_uses;
        pending_.push_back(expected_.back());  // the device's expert ops run in the order of the tasks
      } else {
        const auto* host = dynamic_cast<const runtime::cpu::CpuBackend*>(t.backend);
        // A CPU use: the host backend that computes it, and the NUMA node whose threads do.
        cpu_uses.push_back({l.index, t.expert, host ? host->name() : "?", host ? host->numa_node() : -2});
      }
    }
    return s;
  }
  runtime::CopyEvent start(runtime::MoeSchedule& s, size_t i) override {
    if (!s.tasks[i].on_device) compare(expected_[i]);
    return inner_.start(s, i);
  }
  void issued(runtime::MoeSchedule& s, size_t i, runtime::ComputeEvent done) override {
    if (!s.tasks[i].on_device) compare(expected_[i]);
    inner_.issued(s, i, done);
  }
  // On the device's stream: the expert op of the oldest device task not yet checked (the shared expert's op and
  // the others do not read a slot).
  void before(const runtime::ops::Op& op) override { check_expert_op(op, false); }
  void after(const runtime::ops::Op& op) override { check_expert_op(op, true); }

  std::atomic<int64_t> checks = 0, mismatches = 0;
  int64_t device_uses = 0;
  struct CpuUse {
    int64_t layer, expert;
    std::string backend;
    int numa_node;
  };
  std::vector<CpuUse> cpu_uses;
  int64_t unchecked() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(pending_.size());
  }

 private:
  struct Expected {
    const uint8_t* w1 = nullptr;  // the weights the op reads start here
    std::array<runtime::ByteRange, 6> want, got;
  };
  void compare(const Expected& x) {
    for (size_t i = 0; i < x.want.size(); ++i) {
      ++checks;
      if (x.want[i].bytes != x.got[i].bytes ||
          std::memcmp(x.want[i].data, x.got[i].data, static_cast<size_t>(x.want[i].bytes)))
        ++mismatches;
    }
  }
  void check_expert_op(const runtime::ops::Op& op, bool last) {
    const auto* ffn = std::get_if<runtime::ops::ExpertFfn>(&op);
    if (!ffn) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.empty() || pending_.front().w1 != ffn->w1.data) return;
    compare(pending_.front());
    if (last) pending_.pop_front();
  }
  runtime::SimBackend& gpu_;
  std::vector<Expected> expected_;  // the current layer's tasks
  mutable std::mutex mu_;
  std::deque<Expected> pending_;
};

struct Outcome {
  std::vector<float> logits;
  offload::DispatchStats stats;
  int64_t evictions = 0;
  int64_t device_uses = 0;  // expert uses launched on the device
  int64_t conflicts = 0;
  int64_t max_copies_in_flight = 0;
  std::vector<int> cpu_nodes;         // per CPU use, the NUMA node whose threads computed it
  int64_t experts_outside_store = 0;  // numa: bound in-RAM experts whose views are not in the store's memory
  std::vector<offload::HostExpertStore::Region> regions;
};

// Whether every byte `e` reads lies in one of `regions`.
bool in_regions(const runtime::ExpertWeights& e, std::span<const offload::HostExpertStore::Region> regions) {
  for (const runtime::ByteRange& r : runtime::expert_regions(e)) {
    if (r.bytes == 0) continue;
    bool inside = false;
    for (const auto& g : regions) inside |= r.data >= g.data && r.data + r.bytes <= g.data + g.bytes;
    if (!inside) return false;
  }
  return true;
}

// Every CPU use is computed by the host backend of the NUMA device the plan homes the expert on; the checks
// around every kernel saw its expert's bytes.
void collect_checks(const CheckingProvider& checker, const planner::Plan& plan, Outcome& out) {
  for (const CheckingProvider::CpuUse& u : checker.cpu_uses) {
    const planner::LayerPlan* lp = nullptr;
    for (const auto& x : plan.layers)
      if (x.layer == u.layer) lp = &x;
    EXPECT_TRUE(lp && lp->home_of(u.expert));
    if (lp && lp->home_of(u.expert)) {
      EXPECT_EQ(u.backend, plan.devices[static_cast<size_t>(lp->home_of(u.expert)->device)].id)
          << "layer " << u.layer << " expert " << u.expert;
    }
    out.cpu_nodes.push_back(u.numa_node);
  }
  EXPECT_GT(checker.checks, 0);
  EXPECT_EQ(checker.unchecked(), 0) << "a device use whose expert op was never seen";
  EXPECT_EQ(checker.mismatches, 0) << "a kernel read bytes that were not its expert's";
  out.device_uses = checker.device_uses;
}

// The session's logits, and an allocation beyond the plan refused, naming the class, changing nothing.
std::vector<float> generate_on(const runtime::ModelWeights& weights, const runtime::SessionOptions& so,
                               runtime::Backend& gpu) {
  runtime::Session s(weights, so);
  std::vector<float> logits = runtime::generate(s, prompt_tokens(kPrompt), logits_of()).logits;
  const int64_t held = gpu.ledger().total_current();
  try {
    (void)gpu.allocate(runtime::MemoryClass::Kv, 1);
    ADD_FAILURE() << "an allocation beyond the plan was accepted";
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv cache"), std::string::npos) << e.what();
  }
  EXPECT_EQ(gpu.ledger().total_current(), held);
  return logits;
}

class Offload : public ::testing::Test {
 protected:
  Outcome run(const Scenario& sc, planner::KvType kv, bool check_slots = true) {
    const planner::ModelSpec spec = planner::load_model_spec(tiny_model_dir().string());
    const runtime::SessionOptions so = session_options(kv, sc.ubatch);
    const planner::Plan plan =
        offload::plan_for_device(spec, host_spec(sc.numa), sim_request(sc.name, sc.capacity, sc.cache_slots), so);
    runtime::SimBackend gpu({sc.capacity, kLinkBytesPerS});
    PlanHosts ph = plan_hosts(plan);
    std::vector<std::unique_ptr<runtime::cpu::CpuBackend>>& hosts = ph.backends;
    const std::vector<runtime::Backend*>& host_ptrs = ph.ptrs;
    const std::vector<const planner::DevicePlan*>& host_plans = ph.plans;
    EXPECT_EQ(static_cast<int>(hosts.size()), sc.numa);
    offload::DispatchOptions d;
    d.stream_min_tokens = sc.stream_min_tokens;
    Outcome out;
    {
      offload::BoundPlan bound(plan, tiny_model(), gpu, host_ptrs, d, sc.host_experts);
      gpu.reset_max_in_flight();  // the weights' placement queues many copies at once
      // The staging ring is pinned for the device's copy engine, all of it and nothing else.
      EXPECT_EQ(gpu.pinned_bytes(), hosts.front()->ledger().usage(runtime::MemoryClass::Staging).current);
      out.regions.assign(bound.host_experts().regions().begin(), bound.host_experts().regions().end());
      for (const auto& lp : plan.layers)
        if (planner::expert_counts(plan, lp, 0).in_ram > 0)
          for (const auto& e : bound.weights().layer(lp.layer).experts)
            out.experts_outside_store += !in_regions(e, out.regions);
      runtime::SessionOptions bso = bound.session_options(so);
      std::optional<CheckingProvider> checker;
      if (check_slots) bso.experts = &checker.emplace(*bso.experts, gpu);
      out.logits = generate_on(bound.weights(), bso, gpu);
      if (check_slots) collect_checks(*checker, plan, out);  // the session has ended: every op it issued has run
      out.conflicts = gpu.compute_stats().overwrite_conflicts;
      out.max_copies_in_flight = gpu.link_stats().max_in_flight;
      EXPECT_EQ(out.conflicts, 0) << "a copy landed in a slot that an op still read";
      out.stats = bound.dispatch().total();
      for (int l = 0; l < bound.dispatch().cache().layers(); ++l)
        out.evictions += bound.dispatch().cache().stats(l).evictions;
      expect_within_plan(gpu, hosts, host_plans);
    }
    for (const auto& h : hosts)
      EXPECT_EQ(h->ledger().total_current(), 0) << h->name() << ": the binding left host memory behind";
    EXPECT_EQ(gpu.ledger().total_current(), 0) << "the binding left device memory behind";
    EXPECT_EQ(gpu.pinned_bytes(), 0) << "the binding left host memory pinned";
    return out;
  }
};

void expect_bitwise(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
      << "logits differ from the CPU-only run";
}

TEST_F(Offload, EverythingOnTheDeviceGivesTheCpuLogits) {
  const Outcome o = run({"64MiB", 64 << 20, -1, 2}, planner::KvType::BF16);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 512));
  EXPECT_GT(o.stats.resident, 0);
  EXPECT_EQ(o.stats.resident, o.stats.uses());
  EXPECT_EQ(o.stats.copies, 0);
}

TEST_F(Offload, AllRoutedExpertsInHostRamGiveTheCpuLogits) {
  const Outcome o = run({"20MiB", 20 << 20, 0, 0}, planner::KvType::BF16);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 512));
  EXPECT_GT(o.stats.cpu, 0);
  EXPECT_EQ(o.stats.cpu, o.stats.uses());
  EXPECT_EQ(o.stats.copies, 0);
}

TEST_F(Offload, ASmallCacheWithEvictionsGivesTheCpuLogits) {
  const Outcome o = run({"20MiB", 20 << 20, 2, 0}, planner::KvType::BF16);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 512));
  EXPECT_GT(o.stats.cache_hits, 0);
  EXPECT_GT(o.stats.cpu, 0);
  EXPECT_GT(o.evictions, 0);
  EXPECT_GT(o.stats.copies, 0);
}

TEST_F(Offload, StreamingPrefillGivesTheCpuLogits) {
  const Outcome o = run({"10MiB", 10 << 20, 0, 2, 64}, planner::KvType::BF16);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 64));
  EXPECT_GT(o.stats.streamed, 0);
  EXPECT_GT(o.stats.cpu, 0);  // decode: one token per expert stays on the CPU
  EXPECT_EQ(o.stats.cache_hits, 0);
  // No cache, so no prefetch: copies queue ahead of the experts that read them only if streaming runs ahead
  // of the compute through the ring of stream slots (2 x top-k = 4 here; typically all 4 are in flight)
  // rather than waiting for each copy, which would never have more than one in flight.
  EXPECT_GE(o.max_copies_in_flight, 2);
  EXPECT_GT(o.device_uses, 0);
}

TEST_F(Offload, Fp8KvIsBitwiseToo) {
  const Outcome o = run({"10MiB", 10 << 20, 3, 2, 64}, planner::KvType::FP8);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::FP8, 64));
  EXPECT_GT(o.stats.cache_hits + o.stats.streamed, 0);
}

TEST_F(Offload, BigChunkStreamingGivesTheCpuLogits) {
  // The whole prompt in one chunk, its experts through the cache slots and the ring of stream slots.
  const Outcome o = run({"20MiB", 20 << 20, 2, 2, 512}, planner::KvType::BF16);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 512));
  EXPECT_GT(o.stats.streamed, 0);
  EXPECT_GT(o.evictions, 0);  // prefill used the cache's slots for streaming; decode refilled them
  EXPECT_GT(o.stats.cache_hits, 0);
}

// The tiny model with 8x wider experts (408 KiB each): an expert cache that holds a chunk's workspace.
const std::filesystem::path& wide_expert_model_dir() {
  static const std::filesystem::path dir = [] {
    runtime::TinyOptions t;
    t.overrides = {{"moe_intermediate_size", 1024}};
    return temp_tiny_model("ferry-wide-experts", t);
  }();
  return dir;
}

// Two turns: the prompt and its tokens, then 100 more prompt tokens (fed after decode filled the expert cache)
// and their tokens; every position's logits.
std::vector<float> two_turns(const runtime::ModelWeights& m, const runtime::SessionOptions& so) {
  runtime::Session s(m, so);
  std::vector<float> all = runtime::generate(s, prompt_tokens(kPrompt), logits_of()).logits;
  const std::vector<float> more = runtime::generate(s, prompt_tokens(100, 2), logits_of()).logits;
  all.insert(all.end(), more.begin(), more.end());
  return all;
}

TEST_F(Offload, APromptInTheExpertCachesRoomGivesTheCpuLogits) {
  // Per-phase workspace: the session keeps an 8-token chunk's buffers; each prompt goes in chunks of 64 whose
  // buffers take the expert cache's room, the cache lent (emptied) while it is fed and refilled by decode.
  const planner::ModelSpec spec = planner::load_model_spec(wide_expert_model_dir().string());
  const runtime::ModelWeights model = runtime::ModelWeights::load(wide_expert_model_dir());
  const runtime::SessionOptions so = session_options(planner::KvType::BF16, 64);
  const offload::DeviceRequest req = sim_request("40MiB", 40 << 20, 10);
  planner::PlanOptions o = offload::device_plan_options(req, so);
  o.resident_chunk = 8;
  const planner::Plan plan = offload::place_or_explain(spec, offload::device_hardware(host_spec(), req), o, req.name);
  ASSERT_GT(plan.prefill_borrowed(), 0) << planner::format_plan(plan, spec);
  ASSERT_GT(planner::expert_counts(plan, plan.layers.back(), 0).in_ram, 0) << planner::format_plan(plan, spec);
  runtime::SimBackend gpu({req.capacity, kLinkBytesPerS});
  PlanHosts ph = plan_hosts(plan);
  offload::DispatchOptions d;
  d.stream_min_tokens = 2;
  std::vector<float> logits;
  {
    offload::BoundPlan bound(plan, model, gpu, ph.ptrs, d);
    runtime::SessionOptions bso = bound.session_options(so);
    EXPECT_EQ(bso.ubatch, 8);
    EXPECT_EQ(bso.prefill_ubatch, 64);
    CheckingProvider checker(*bso.experts, gpu);
    bso.experts = &checker;
    logits = two_turns(bound.weights(), bso);
    Outcome checked;
    collect_checks(checker, plan, checked);
    EXPECT_EQ(gpu.compute_stats().overwrite_conflicts, 0) << "a copy landed in a slot that an op still read";
    // The prompt's buffers were the borrowed ones, on top of the session's: the workspace reached its plan with
    // the borrow, and its plan is back to the resident chunk's.
    const runtime::MemoryClassUsage ws = gpu.ledger().usage(runtime::MemoryClass::Workspace);
    EXPECT_EQ(ws.planned_high, ws.planned + plan.prefill_borrowed());
    EXPECT_EQ(ws.high_water, ws.planned_high);
    // The cache is back for decode, every slot allocated, and decode hit it.
    const runtime::MemoryClassUsage cache = gpu.ledger().usage(runtime::MemoryClass::ExpertCache);
    EXPECT_EQ(cache.current, cache.planned);
    EXPECT_FALSE(bound.dispatch().cache_lent());
    EXPECT_GT(bound.dispatch().total().streamed, 0);
    EXPECT_GT(bound.dispatch().total().cache_hits, 0);
    expect_within_plan(gpu, ph.backends, ph.plans);
  }
  expect_bitwise(logits, two_turns(model, so));
  EXPECT_EQ(gpu.ledger().total_current(), 0) << "the binding left device memory behind";
}

// Records, in the host's program order, when each device task's copy was queued (its copy event's sequence)
// and how many copies had been queued when its op was launched (between start() and issued()).
class CopyOrderProbe final : public runtime::ForwardingExpertProvider {
 public:
  CopyOrderProbe(runtime::ExpertProvider& inner, runtime::SimBackend& gpu)
      : ForwardingExpertProvider(inner), gpu_(gpu) {}
  runtime::MoeSchedule schedule(const runtime::LayerWeights& l, std::span<const int64_t> t) override {
    runtime::MoeSchedule s = inner_.schedule(l, t);
    copy_of_.assign(s.tasks.size(), 0);
    queued_at_launch_.assign(s.tasks.size(), 0);
    return s;
  }
  runtime::CopyEvent start(runtime::MoeSchedule& s, size_t i) override {
    const runtime::CopyEvent e = inner_.start(s, i);
    copy_of_[i] = static_cast<int64_t>(e.sequence);
    queued_at_launch_[i] = gpu_.link_stats().queued;  // the op is launched right after this returns
    return e;
  }
  void issued(runtime::MoeSchedule& s, size_t i, runtime::ComputeEvent done) override {
    inner_.issued(s, i, done);
    if (i + 1 < s.tasks.size()) return;
    // The layer's device tasks that waited for a copy, in order: each next one's copy was queued first.
    size_t prev = s.tasks.size();
    for (size_t k = 0; k < s.tasks.size(); ++k) {
      if (!s.tasks[k].on_device || copy_of_[k] == 0) continue;
      if (prev < s.tasks.size()) {
        ++pairs;
        if (copy_of_[k] > queued_at_launch_[prev]) ++late;
      }
      prev = k;
    }
  }
  int64_t pairs = 0, late = 0;

 private:
  runtime::SimBackend& gpu_;
  std::vector<int64_t> copy_of_, queued_at_launch_;
};

// The tiny model (bf16 KV, ubatch 512) planned for a simulated 20 MiB device keeping `cache_slots` experts a
// MoE layer, with that device and the host to bind the plan to.
struct SmallDevice {
  explicit SmallDevice(int64_t cache_slots)
      : plan(offload::plan_for_device(spec, host_spec(), sim_request("20MiB", 20 << 20, cache_slots), so)) {}

  const planner::ModelSpec spec = planner::load_model_spec(tiny_model_dir().string());
  const runtime::SessionOptions so = session_options(planner::KvType::BF16, 512);
  const planner::Plan plan;
  runtime::SimBackend gpu{{20 << 20, kLinkBytesPerS}};
  runtime::cpu::CpuBackend host;
};

TEST_F(Offload, BigChunkStreamingQueuesTheNextExpertsCopyBeforeTheCurrentOneComputes) {
  SmallDevice rig(0);  // only the ring of stream slots: it wraps within a layer
  offload::DispatchOptions d;
  d.stream_min_tokens = 2;
  offload::BoundPlan bound(rig.plan, tiny_model(), rig.gpu, rig.host, d);
  runtime::SessionOptions bso = bound.session_options(rig.so);
  CopyOrderProbe probe(*bso.experts, rig.gpu);
  bso.experts = &probe;
  {
    runtime::Session s(bound.weights(), bso);
    std::vector<float> last;
    s.feed(prompt_tokens(kPrompt), nullptr, &last);
  }
  const int64_t ring = 2 * rig.spec.config.num_experts_per_tok;
  const offload::DispatchStats st = bound.dispatch().total();
  EXPECT_GT(st.streamed, ring * (rig.spec.config.num_hidden_layers - 1)) << "the ring never wrapped";
  EXPECT_GT(probe.pairs, 0);
  EXPECT_EQ(probe.late, 0) << "an expert's copy was queued after the op of the expert before it was launched";
}

// Holds each layer's device work at its first op after routing (the shared expert), on the device's stream,
// until the first expert the host computes (or the layer's last expert, or 2 s): the host must reach its own
// experts while the device's work of the same layer is still pending. A MoE layer that waited for the device
// first would only get there after the timeout, with nothing pending.
class OverlapProbe final : public runtime::ForwardingExpertProvider, public runtime::SimOpObserver {
 public:
  OverlapProbe(runtime::ExpertProvider& inner, runtime::SimBackend& gpu) : ForwardingExpertProvider(inner), gpu_(gpu) {
    gpu_.set_observer(this);
  }
  ~OverlapProbe() override { gpu_.set_observer(nullptr); }
  runtime::MoeSchedule schedule(const runtime::LayerWeights& l, std::span<const int64_t> t) override {
    runtime::MoeSchedule s = inner_.schedule(l, t);
    if (!s.device) return s;
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
    hold_next_ = true;
    first_host_ = true;
    return s;
  }
  void before(const runtime::ops::Op&) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!hold_next_) return;
    hold_next_ = false;
    cv_.wait_for(lock, std::chrono::seconds(2), [this] { return open_; });
  }
  runtime::CopyEvent start(runtime::MoeSchedule& s, size_t i) override {
    if (!s.tasks[i].on_device && first_host_) {
      first_host_ = false;
      ++layers_with_host_experts;
      if (gpu_.pending_work() >= 1) ++overlapped;  // the held shared expert at least
      open();
    }
    return inner_.start(s, i);
  }
  void issued(runtime::MoeSchedule& s, size_t i, runtime::ComputeEvent done) override {
    inner_.issued(s, i, done);
    if (i + 1 == s.tasks.size()) open();  // a layer without host experts
  }
  int64_t layers_with_host_experts = 0, overlapped = 0;

 private:
  void open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  runtime::SimBackend& gpu_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true, hold_next_ = false, first_host_ = false;
};

TEST_F(Offload, TheHostComputesItsExpertsWhileTheDeviceWorksOnTheSameLayer) {
  SmallDevice rig(2);
  offload::BoundPlan bound(rig.plan, tiny_model(), rig.gpu, rig.host, {});
  runtime::SessionOptions bso = bound.session_options(rig.so);
  OverlapProbe probe(*bso.experts, rig.gpu);
  bso.experts = &probe;
  std::vector<float> logits;
  {
    runtime::Session s(bound.weights(), bso);
    logits = runtime::generate(s, prompt_tokens(kPrompt), logits_of(4)).logits;
  }
  // Which uses the CPU takes depends on when prefetches land; at least some layers of the 5 steps have some.
  EXPECT_GE(probe.layers_with_host_experts, 5);
  EXPECT_EQ(probe.overlapped, probe.layers_with_host_experts) << "the host waited for the device before its experts";
  EXPECT_GT(bound.dispatch().total().cache_hits, 0);  // the device computed experts too
}

// --host-experts numa: every CPU use computes from the copies on the one machine node and says so in
// ExpertUse::host_node; the logits are the CPU-only run's.
void expect_numa_store(const Outcome& o, int plan_nodes) {
  ASSERT_EQ(static_cast<int>(o.regions.size()), plan_nodes);
  for (int k = 0; k < plan_nodes; ++k) {
    EXPECT_EQ(o.regions[static_cast<size_t>(k)].plan_node, k);
    EXPECT_EQ(o.regions[static_cast<size_t>(k)].machine_node, 0);  // this machine has one node
  }
  EXPECT_EQ(o.experts_outside_store, 0) << "in-RAM experts still computed from the mapping";
  ASSERT_FALSE(o.cpu_nodes.empty());
  for (const int n : o.cpu_nodes) ASSERT_EQ(n, 0) << "a CPU use without its NUMA node";
}

class NumaOffload : public Offload {
 protected:
  // Every routed expert in host RAM, copied to NUMA-bound memory for a plan of `plan_nodes` nodes.
  void all_in_ram(int plan_nodes) {
    Scenario sc{"20MiB", 20 << 20, 0, 0};
    sc.numa = plan_nodes;
    sc.host_experts = offload::HostExperts::Numa;
    const Outcome o = run(sc, planner::KvType::BF16);
    expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 512));
    EXPECT_EQ(o.stats.cpu, o.stats.uses());
    expect_numa_store(o, plan_nodes);
  }
};

TEST_F(NumaOffload, HostExpertsGiveTheCpuLogits) { all_in_ram(1); }
TEST_F(NumaOffload, HostExpertsOnATwoNodePlanGiveTheCpuLogits) { all_in_ram(2); }

TEST_F(Offload, NumaHostExpertsFeedTheCacheAndStreamsOnATwoNodePlan) {
  Scenario sc{"10MiB", 10 << 20, 3, 2, 64};
  sc.numa = 2;
  sc.host_experts = offload::HostExperts::Numa;
  const Outcome o = run(sc, planner::KvType::BF16);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 64));
  EXPECT_GT(o.stats.cache_hits + o.stats.streamed, 0);
  expect_numa_store(o, 2);
}

TEST_F(Offload, MappedHostExpertsOnATwoNodePlanAreAccountedPerNode) {
  Scenario sc{"20MiB", 20 << 20, 0, 0};
  sc.numa = 2;
  const Outcome o = run(sc, planner::KvType::BF16);
  expect_bitwise(o.logits, cpu_logits(planner::KvType::BF16, 512));
  EXPECT_TRUE(o.regions.empty());
  ASSERT_FALSE(o.cpu_nodes.empty());
  // Computed by the threads of their home's node, from the mapping (on this one-node machine: node 0).
  for (const int n : o.cpu_nodes) ASSERT_EQ(n, 0) << "a CPU use not on its home node's threads";
}

TEST_F(Offload, APlanNeedingAnOpTheDeviceLacksIsRefusedBeforeAnythingIsPlaced) {
  const planner::ModelSpec spec = planner::load_model_spec(tiny_model_dir().string());
  offload::DeviceRequest req;
  req.name = "partial-gpu";
  req.capacity = 20 << 20;
  const planner::Plan plan =
      offload::plan_for_device(spec, host_spec(), req, session_options(planner::KvType::BF16, 512));
  BackendWithout gpu("partial-gpu", {runtime::ops::Kind::Attention, runtime::ops::Kind::Compress}, req.capacity);
  runtime::cpu::CpuBackend host;
  try {
    offload::BoundPlan bound(plan, tiny_model(), gpu, host, {});
    FAIL() << "a device without attention was bound";
  } catch (const ferry::Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "partial-gpu cannot run the layers this plan puts on it: it has no kernel for compress, attention");
  }
  EXPECT_EQ(gpu.ledger().total_high_water(), 0);
  EXPECT_EQ(host.ledger().total_high_water(), 0);
}

TEST_F(Offload, ABudgetTooSmallForTheNonRoutedWeightsFailsWithThePlannersMessage) {
  const planner::ModelSpec spec = planner::load_model_spec(tiny_model_dir().string());
  offload::DeviceRequest req;
  req.name = "sim:4MiB";
  req.capacity = 4 << 20;
  try {
    offload::plan_for_device(spec, host_spec(), req, session_options(planner::KvType::BF16, 512));
    FAIL() << "a 4 MiB device was accepted";
  } catch (const ferry::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("does not fit on sim:4MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("gpu0 needs"), std::string::npos) << m;
    EXPECT_NE(m.find("short by"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace ferry::testing
