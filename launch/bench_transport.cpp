#include "launch/bench_transport.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "launch/hardware_flags.h"
#include "launch/plan_flags.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "transport/layer_roles.h"
#include "transport/rank_exchange.h"
#include "transport/world.h"

namespace ferry::launch {
namespace {

using Clock = std::chrono::steady_clock;
using transport::ExpertRange;
using transport::LayerRoles;
using transport::World;

constexpr double kAcceptedOverhead = 0.10;  // ferry's layer may cost this much more than raw MPI

struct Options {
  int repetitions = 100, warmup = 10;
  std::vector<int> tokens{1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
};

// The seams' shapes of one model.
struct Shape {
  std::string name;
  int64_t d = 0, experts = 0, k = 0, hc = 0;
};

Shape shape_of(const std::string& model, const std::string& name) {
  const core::ModelConfig& c = planner::load_model_spec(model).config;
  return {name, c.hidden_size, c.n_routed_experts, c.num_experts_per_tok, c.hc_mult};
}

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// Rank r holds experts [r·E/P, (r+1)·E/P): one contiguous range each.
std::vector<ExpertRange> split_experts(int64_t experts, int ranks) {
  std::vector<ExpertRange> out;
  for (int r = 0; r < ranks; ++r) out.push_back({r, experts * r / ranks, experts * (r + 1) / ranks - 1});
  return out;
}

// Runners l mod P of layers 0 … count−1: the roles go round the ranks.
std::vector<int> ring(int count, int ranks) {
  std::vector<int> out;
  for (int l = 0; l < count; ++l) out.push_back(l % ranks);
  return out;
}

// Layers run by `runners[l]` alone, every rank holding its share of the experts.
std::vector<LayerRoles> rotating_roles(const std::vector<int>& runners, int64_t experts, int ranks) {
  std::vector<LayerRoles> roles;
  for (int r : runners) roles.push_back({{r}, split_experts(experts, ranks)});
  return roles;
}

// The value position i of a buffer sent by `rank` carries: exact in float, distinct per rank.
float pattern(int rank, int64_t i) { return static_cast<float>((rank + 1) * 4096 + i % 4093); }

void fill(float* p, int64_t count, int rank) {
  for (int64_t i = 0; i < count; ++i) p[i] = pattern(rank, i);
}

void check_filled(const float* p, int64_t count, int rank, const char* what) {
  for (int64_t i = 0; i < count; ++i)
    FERRY_CHECK(p[i] == pattern(rank, i), "bench transport: {}: float {} from rank {} arrived as {}", what, i, rank,
                p[i]);
}

// Raw MPI as osu_latency does it: post everything, then MPI_Waitall (no deadline: the reference). One per exchange,
// reused, so that posting allocates nothing.
class RawTransfers {
 public:
  explicit RawTransfers(MPI_Comm comm) : comm_(comm) {}
  void recv(void* data, int64_t bytes, int from) {
    requests_.emplace_back();
    MPI_Irecv(data, static_cast<int>(bytes), MPI_BYTE, from, 7, comm_, &requests_.back());
  }
  void send(const void* data, int64_t bytes, int to) {
    requests_.emplace_back();
    MPI_Isend(data, static_cast<int>(bytes), MPI_BYTE, to, 7, comm_, &requests_.back());
  }
  void wait() {
    MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    requests_.clear();
  }

 private:
  MPI_Comm comm_;
  std::vector<MPI_Request> requests_;
};

// One exchange at one size, run by ferry and by raw MPI; every rank calls the same methods in the same order.
class Exchange {
 public:
  Exchange(const World& world, std::vector<LayerRoles> roles)
      : world_(world), group_(world, std::move(roles)), ex_(group_, 0), raw_(world.comm()) {}
  virtual ~Exchange() = default;
  virtual void ferry() = 0;
  virtual void mpi() = 0;  // the same messages between the same pairs
  virtual bool has_collective() const { return false; }
  virtual void collective() {}
  // One ferry exchange of known values, checked where they land; throws naming the exchange.
  virtual void check() = 0;
  int64_t bytes = 0;  // one exchange, every message together
  int per_iteration = 1;

 protected:
  const World& world_;
  transport::RankGroup group_;
  transport::MpiRankExchange ex_;
  RawTransfers raw_;
  int me() const { return world_.rank(); }
  int ranks() const { return world_.size(); }
};

// All ranks run the layer; each holds a contiguous range of experts. Choice i of the n·k goes to rank i mod P
// (round robin over the ranks, then over that rank's experts), so each rank computes its share of the rows.
class Combine final : public Exchange {
 public:
  Combine(const World& w, const Shape& s, int64_t n)
      : Exchange(w, {LayerRoles{all_ranks(w.size()), split_experts(s.experts, w.size())}}),
        d_(s.d),
        eo_(sz(n * s.k * s.d)) {
    const std::vector<ExpertRange> holders = split_experts(s.experts, ranks());
    std::vector<int64_t> count(sz(s.experts), 0);
    for (int64_t i = 0; i < n * s.k; ++i) {
      const ExpertRange& h = holders[sz(i % ranks())];
      ++count[sz(h.first + (i / ranks()) % (h.last - h.first + 1))];
    }
    offsets_.assign(sz(s.experts + 1), 0);
    for (int64_t e = 0; e < s.experts; ++e) offsets_[sz(e + 1)] = offsets_[sz(e)] + count[sz(e)];
    for (const ExpertRange& h : holders) {
      begin_.push_back(offsets_[sz(h.first)]);
      rows_.push_back(offsets_[sz(h.last + 1)] - begin_.back());
      bytes += rows_.back() * d_ * 4 * (ranks() - 1);
    }
  }
  void ferry() override {
    ex_.expect_rows(0, eo_.data(), offsets_, d_);
    ex_.combine(0, eo_.data(), offsets_, d_);
  }
  void mpi() override {
    RawTransfers& t = raw_;
    for (int r = 0; r < ranks(); ++r)
      if (r != me() && rows_[sz(r)] > 0) t.recv(block(r), rows_[sz(r)] * d_ * 4, r);
    for (int r = 0; r < ranks(); ++r)
      if (r != me() && rows_[sz(me())] > 0) t.send(block(me()), rows_[sz(me())] * d_ * 4, r);
    t.wait();
  }
  bool has_collective() const override { return true; }
  void collective() override {
    std::vector<int> counts, displs;
    for (int r = 0; r < ranks(); ++r) {
      counts.push_back(static_cast<int>(rows_[sz(r)] * d_ * 4));
      displs.push_back(static_cast<int>(begin_[sz(r)] * d_ * 4));
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, eo_.data(), counts.data(), displs.data(), MPI_BYTE,
                   world_.comm());
  }
  void check() override {
    std::fill(eo_.begin(), eo_.end(), -1.0f);
    fill(block(me()), rows_[sz(me())] * d_, me());
    ferry();
    for (int r = 0; r < ranks(); ++r) check_filled(block(r), rows_[sz(r)] * d_, r, "combine");
  }

 private:
  static std::vector<int> all_ranks(int n) {
    std::vector<int> out(sz(n));
    for (int r = 0; r < n; ++r) out[sz(r)] = r;
    return out;
  }
  float* block(int r) { return eo_.data() + begin_[sz(r)] * d_; }

  int64_t d_;
  std::vector<float> eo_;
  std::vector<int64_t> offsets_, begin_, rows_;
};

// Layer r is run by rank r alone, every rank holds experts of it: the runner sends inputs and choices to the
// others. A ring of P layers.
class Dispatch final : public Exchange {
 public:
  Dispatch(const World& w, const Shape& s, int64_t n)
      : Exchange(w, rotating_roles(ring(w.size(), w.size()), s.experts, w.size())),
        n_(n),
        d_(s.d),
        k_(s.k),
        xn_(sz(n * s.d)),
        ids_(sz(n * s.k)) {
    bytes = (n * d_ + n * k_) * 4 * (ranks() - 1);
    per_iteration = ranks();
  }
  void ferry() override {
    for (int r = 0; r < ranks(); ++r) {
      ex_.dispatch(r, xn_.data(), n_, d_, ids_.data(), k_);
      ex_.complete(r);  // the sender's transfers (a layer's complete in its combine)
    }
  }
  void mpi() override {
    for (int from = 0; from < ranks(); ++from) {
      RawTransfers& t = raw_;
      for (int r = 0; r < ranks(); ++r) {
        if (r == from || (me() != from && me() != r)) continue;
        if (me() == from) {
          t.send(xn_.data(), n_ * d_ * 4, r);
          t.send(ids_.data(), n_ * k_ * 4, r);
        } else {
          t.recv(xn_.data(), n_ * d_ * 4, from);
          t.recv(ids_.data(), n_ * k_ * 4, from);
        }
      }
      t.wait();
    }
  }
  void check() override {
    std::fill(xn_.begin(), xn_.end(), -1.0f);
    std::fill(ids_.begin(), ids_.end(), -1);
    if (me() == 0) {
      fill(xn_.data(), n_ * d_, 0);
      for (int64_t i = 0; i < n_ * k_; ++i) ids_[sz(i)] = static_cast<int32_t>(i % 384);
    }
    ex_.dispatch(0, xn_.data(), n_, d_, ids_.data(), k_);
    ex_.complete(0);
    check_filled(xn_.data(), n_ * d_, 0, "dispatch");
    for (int64_t i = 0; i < n_ * k_; ++i)
      FERRY_CHECK(ids_[sz(i)] == i % 384, "bench transport: dispatch: choice {} arrived as {}", i, ids_[sz(i)]);
  }

 private:
  int64_t n_, d_, k_;
  std::vector<float> xn_;
  std::vector<int32_t> ids_;
};

// Pipeline stages: layer l is run by rank l mod P, so the hidden streams go round the ring of ranks.
class HandOver final : public Exchange {
 public:
  HandOver(const World& w, const Shape& s, int64_t n) : HandOver(w, s.hc * n * s.d, s.experts) {}
  HandOver(const World& w, int64_t floats, int64_t experts)
      : Exchange(w, rotating_roles(ring(w.size() + 1, w.size()), experts, w.size())), floats_(floats), H_(sz(floats)) {
    bytes = floats_ * 4;
    per_iteration = ranks();
  }
  void ferry() override {
    for (int l = 1; l <= ranks(); ++l) ex_.hand_over(l, H_.data(), floats_);
  }
  void mpi() override {
    for (int l = 1; l <= ranks(); ++l) {
      RawTransfers& t = raw_;
      const int from = (l - 1) % ranks(), to = l % ranks();
      if (me() == to) t.recv(H_.data(), floats_ * 4, from);
      if (me() == from) t.send(H_.data(), floats_ * 4, to);
      t.wait();
    }
  }
  void check() override {
    std::fill(H_.begin(), H_.end(), -1.0f);
    if (me() == 0) fill(H_.data(), floats_, 0);
    ex_.hand_over(1, H_.data(), floats_);
    if (me() <= 1) check_filled(H_.data(), floats_, 0, "hand_over");
  }

 private:
  int64_t floats_;
  std::vector<float> H_;
};

struct Row {
  std::string op, model;
  int64_t tokens = 0, bytes = 0;
  double ferry_s = 0, mpi_s = 0, collective_s = NAN;  // medians of one exchange
  double overhead = 0;  // the median over pairs of repetitions of ferry's time over the faster raw MPI's
  double raw_s() const { return std::isnan(collective_s) ? mpi_s : std::min(mpi_s, collective_s); }
};

double timed(const World& w, Exchange& x, void (Exchange::*run)()) {
  w.barrier("the bench's start of an iteration");
  const auto t0 = Clock::now();
  (x.*run)();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Each iteration's slowest rank, on rank 0 (the other ranks' own times elsewhere).
std::vector<double> slowest(const World& w, std::vector<double> s) {
  std::vector<MPI_Request> r(1);
  const int count = static_cast<int>(s.size());
  if (w.leader())
    MPI_Ireduce(MPI_IN_PLACE, s.data(), count, MPI_DOUBLE, MPI_MAX, 0, w.comm(), &r[0]);
  else
    MPI_Ireduce(s.data(), nullptr, count, MPI_DOUBLE, MPI_MAX, 0, w.comm(), &r[0]);
  w.wait_all(r, {-1}, "the bench's timings");
  return s;
}

double median(std::vector<double> s) {
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

// Ferry and raw MPI take turns within each repetition, each going first in every other one. The overhead compares
// them within two repetitions, one of each order: a time slice lost to another process on a busy machine, which
// lands on one of them, does not decide the row, nor does going first or last.
Row measure(const World& w, Exchange& x, const Options& o) {
  x.check();
  std::vector<double> ferry, mpi, collective;
  for (int i = 0; i < o.warmup + o.repetitions; ++i) {
    double f = 0, m = 0, c = INFINITY;
    if (i % 2 == 0) f = timed(w, x, &Exchange::ferry);
    m = timed(w, x, &Exchange::mpi);
    if (x.has_collective()) c = timed(w, x, &Exchange::collective);
    if (i % 2 == 1) f = timed(w, x, &Exchange::ferry);
    if (i < o.warmup) continue;
    ferry.push_back(f);
    mpi.push_back(m);
    collective.push_back(c);
  }
  ferry = slowest(w, ferry);
  mpi = slowest(w, mpi);
  collective = slowest(w, collective);
  Row row;
  row.bytes = x.bytes;
  row.ferry_s = median(ferry) / x.per_iteration;
  row.mpi_s = median(mpi) / x.per_iteration;
  if (x.has_collective()) row.collective_s = median(collective) / x.per_iteration;
  // Against the raw MPI of the lower median (the smaller of two noisy samples would favour raw MPI).
  const std::vector<double>& raw = row.raw_s() == row.mpi_s ? mpi : collective;
  std::vector<double> ratio;
  for (size_t i = 0; i < ferry.size(); i += 2) {
    const size_t j = std::min(i + 1, ferry.size() - 1);
    ratio.push_back((ferry[i] + ferry[j]) / (raw[i] + raw[j]));
  }
  row.overhead = median(ratio) - 1;
  return row;
}

void print_row(const Row& r) {
  const auto gbs = [&](double s) { return static_cast<double>(r.bytes) / s / 1e9; };
  const std::string collective = std::isnan(r.collective_s) ? "-" : fmt::format("{:.2f}", r.collective_s * 1e6);
  const std::string tokens = r.tokens > 0 ? std::to_string(r.tokens) : "-";
  std::printf("%-10s %-6s %6s %11s %10.2f %10.2f %13s %10.2f %9.2f %+8.1f%%\n", r.op.c_str(), r.model.c_str(),
              tokens.c_str(), core::format_bytes(r.bytes, 1).c_str(), r.ferry_s * 1e6, r.mpi_s * 1e6,
              collective.c_str(), gbs(r.ferry_s), gbs(r.raw_s()), 100 * r.overhead);
  std::fflush(stdout);
}

void print_acceptance(const std::vector<Row>& rows) {
  const Row* worst = &rows.front();
  int over = 0;
  for (const Row& r : rows) {
    if (r.overhead > worst->overhead) worst = &r;
    over += r.overhead > kAcceptedOverhead;
  }
  const std::string where =
      fmt::format("worst {:+.1f}%: {} {} {} tokens", 100 * worst->overhead, worst->op, worst->model, worst->tokens);
  if (over == 0)
    std::printf("\nacceptance (ferry at most %.0f%% over raw MPI in every row): holds (%s)\n", 100 * kAcceptedOverhead,
                where.c_str());
  else
    std::printf("\nacceptance (ferry at most %.0f%% over raw MPI in every row): does not hold in %d of %zu rows (%s)\n",
                100 * kAcceptedOverhead, over, rows.size(), where.c_str());
}

// The link as the planner models it (latency + bytes / bandwidth): the latency of ferry's hand_over of one
// float, and the median rate of its hand_overs of at least 1 MiB (or the largest), where the latency is lost in
// the transfer.
planner::NetworkSpec measured_link(const std::vector<Row>& rows, const Row& latency) {
  int64_t largest = 0;
  for (const Row& r : rows)
    if (r.op == "hand_over") largest = std::max(largest, r.bytes);
  std::vector<double> rates;
  for (const Row& r : rows)
    if (r.op == "hand_over" && r.bytes >= std::min(largest, core::kMiB))
      rates.push_back(static_cast<double>(r.bytes) / r.ferry_s);
  planner::NetworkSpec link;
  link.latency_s = latency.ferry_s;
  link.bandwidth = median(rates);
  return link;
}

void print_predictions(const planner::NetworkSpec& link) {
  const std::string model = "deepseek-v4-pro";
  PlanFlags plan_flags;
  plan_flags.model = model;
  planner::PlanOptions options = plan_flags.resolve();
  const planner::ModelSpec spec = planner::load_model_spec(model);
  options.ctx = spec.config.max_position_embeddings;  // `ferry plan`'s default
  const std::string net_bw = fmt::format("{:.2f}", link.bandwidth / 1e9);
  const std::string net_latency = fmt::format("{:.1f}", link.latency_s * 1e6);
  std::printf(
      "\nmeasured link (ferry's hand_over: the median GB/s from 1 MiB, the latency of 4 bytes): %s GB/s, %s us\n",
      net_bw.c_str(), net_latency.c_str());
  std::printf("planner: %s, nodes of one rtx3090 + 256 GiB RAM (the README's V4-Pro layout), ctx %s\n", model.c_str(),
              core::format_count(options.ctx).c_str());
  std::printf("%5s  %-34s %12s %9s %13s  %s\n", "nodes", "network", "decode tok/s", "sync ms", "prefill tok/s", "fits");
  for (int nodes : {2, 4})
    for (bool calibrated : {false, true}) {
      HardwareFlags hw_flags;
      hw_flags.gpus.assign(1, "rtx3090");
      hw_flags.host_ram = "256GiB";
      hw_flags.nodes = nodes;
      if (calibrated) {
        hw_flags.net_bw = net_bw;
        hw_flags.net_latency_us = std::stod(net_latency);
      }
      std::vector<std::string> notes;
      const planner::Hardware hw = hw_flags.resolve(notes);
      const planner::Plan plan = planner::make_plan(spec, hw, options);
      const std::string network = fmt::format("{} ({:.2f} GB/s, {:.1f} us)", calibrated ? "calibrated" : "default",
                                              hw.network.bandwidth / 1e9, hw.network.latency_s * 1e6);
      std::printf("%5d  %-34s %12.2f %9.2f %13.1f  %s\n", nodes, network.c_str(), plan.cost.decode_tok_s,
                  plan.cost.decode_sync_ms, plan.cost.prefill_tok_s, plan.fits ? "yes" : "no");
    }
  std::printf(
      "plan with the measured link: ferry plan -m %s --gpu rtx3090 "
      "--host-ram 256GiB --nodes 4 --net-bw %s --net-latency-us %s\n",
      model.c_str(), net_bw.c_str(), net_latency.c_str());
}

std::string mpi_library() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string s(text, static_cast<size_t>(len));
  return s.substr(0, s.find_first_of(",\n"));
}

template <class X>
void run_exchange(const World& w, const char* op, const std::vector<Shape>& shapes, const Options& o,
                  std::vector<Row>& rows) {
  for (const Shape& s : shapes)
    for (int n : o.tokens) {
      X x(w, s, n);
      Row r = measure(w, x, o);
      r.op = op;
      r.model = s.name;
      r.tokens = n;
      if (w.leader()) print_row(r);
      rows.push_back(r);
    }
}

int run(const Options& o) {
  const World* w = World::current();
  FERRY_CHECK(w && w->distributed(),
              "transport: a world of one rank; run it under mpirun, e.g. `mpirun -np 2 ferry bench transport`");
  const std::vector<Shape> shapes = {shape_of("deepseek-v4-flash", "flash"), shape_of("deepseek-v4-pro", "pro")};
  const bool one_host = w->node_size() == w->size();
  std::printf("ferry bench transport: %d ranks on %s (%s), %s\n", w->size(),
              one_host ? w->host().c_str() : "several hosts", one_host ? "shared memory" : "the network between them",
              mpi_library().c_str());
  std::printf(
      "%d repetitions after %d warmup, the median of each iteration's slowest rank; bytes: every message of one "
      "exchange; MPI: MPI_Isend/Irecv + MPI_Waitall of the same messages; overhead: ferry's time over the "
      "faster raw MPI's, the median over pairs of repetitions (each going first once)\n\n",
      o.repetitions, o.warmup);
  std::printf("%-10s %-6s %6s %11s %10s %10s %13s %10s %9s %9s\n", "exchange", "model", "tokens", "bytes", "ferry us",
              "MPI us", "Allgatherv us", "ferry GB/s", "MPI GB/s", "overhead");
  std::vector<Row> rows;
  run_exchange<Combine>(*w, "combine", shapes, o, rows);
  run_exchange<Dispatch>(*w, "dispatch", shapes, o, rows);
  run_exchange<HandOver>(*w, "hand_over", shapes, o, rows);
  HandOver one_float(*w, 1, shapes.front().experts);
  Row latency = measure(*w, one_float, o);
  latency.op = "latency";
  latency.model = "-";
  if (!w->leader()) return 0;
  print_row(latency);
  rows.push_back(latency);
  print_acceptance(rows);
  print_predictions(measured_link(rows, latency));
  return 0;
}

}  // namespace

std::function<int()> add_transport_bench(CLI::App& bench, CLI::App*& sub) {
  auto o = std::make_shared<Options>();
  sub = bench.add_subcommand(
      "transport",
      "Under `mpirun -np 2` (or more): latency and GB/s of ferry's exchanges between ranks (MoE combine and "
      "dispatch, pipeline hand-over) next to raw MPI moving the same bytes, ferry's overhead per row, and the "
      "planner's multi-node V4-Pro prediction recomputed with the measured link");
  sub->add_option("--repetitions", o->repetitions, "Timed iterations per row, the median is shown (default 100)")
      ->check(CLI::Range(1, 100000));
  sub->add_option("--warmup", o->warmup, "Untimed iterations before them (default 10)")->check(CLI::Range(0, 100000));
  sub->add_option("--tokens", o->tokens, "Token counts, e.g. 1,8,64 (default 1,2,4,...,512)")
      ->delimiter(',')
      ->check(CLI::Range(1, 4096));
  return [o] { return run(*o); };
}

}  // namespace ferry::launch
