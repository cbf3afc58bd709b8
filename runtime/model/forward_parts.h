// The parts of one V4 block over a chunk of consecutive tokens, shared by forward.cpp (the layer loop, the head,
// MTP) and the files that issue their ops: attention.cpp (queries, KV rows, attention, output projection),
// compressor.cpp (CSA/HCA compressors and the lightning indexer), moe.cpp (router and experts). Every computation
// is an op of runtime/backend/ops.h run on the backend that runs the layer. Internal to runtime/model.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "planner/core/model_config.h"
#include "planner/memory.h"
#include "runtime/backend/ops.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/moe_schedule.h"
#include "runtime/model/op_profile.h"
#include "runtime/model/rank_exchange.h"

namespace ferry::runtime::detail {

// Every buffer a chunk of up to `ubatch` tokens needs, allocated once from the model shape and the chunk size
// — never from the context length: attention and the indexer walk the cache in fixed-size tiles.
struct Workspace {
  // Every buffer from `device` (nullptr: the plain heap) as class Workspace.
  Workspace(const planner::CpuForwardWorkspace& layout, const core::ModelConfig& c, Backend* device);
  // Everything held, plus one tile scratch per thread that may run a tile loop.
  int64_t bytes() const;

  // The tile loops' scratch, one slice per worker thread of the task arena the session was built in.
  ops::TileScratch tile_scratch();

  int64_t ubatch;
  int64_t threads;             // worker threads, each with its tile scratch
  int64_t scratch_per_thread;  // floats
  DeviceVector<float> tiles;   // [threads, scratch_per_thread]
  int64_t tile_rows, tile_scores;
  DeviceVector<float> x, xn, y;         // [n, d]
  DeviceVector<float> mix;              // [n, 2·hc + hc²]: every token's mHC weights
  DeviceVector<float> qa, q, kv, o, z;  // q_lora, heads·hd, hd, heads·hd, groups·o_lora per token
  DeviceVector<uint8_t> kv_rows;        // [n, main row bytes]: the chunk's own window rows
  DeviceVector<float> comp_a, comp_s;   // [n, 2·hd] compressor projections
  DeviceVector<float> iq, iw;           // indexer queries [n, ih·ihd] and head weights [n, ih]
  DeviceVector<float> key_tile;         // decoded indexer keys of one tile
  DeviceVector<int32_t> sel;            // [n, index_topk] selected compressed entries
  DeviceVector<int32_t> sel_count;      // [n]
  DeviceVector<float> gate;             // [n, E]
  DeviceVector<int32_t> route_ids;      // [n, top-k]
  DeviceVector<float> route_w;          // [n, top-k]
  DeviceVector<int32_t> expert_tokens;  // [n · top-k] tokens grouped by expert
  DeviceVector<float> xg, eg, eu;       // gathered expert inputs [n, d], intermediates [n, inter]
  DeviceVector<float> eo;               // expert outputs, one row per (token, choice) [n·k, d]
};

}  // namespace ferry::runtime::detail

namespace ferry::runtime {

struct FeedBuffers {
  FeedBuffers(const planner::CpuForwardWorkspace& layout, const core::ModelConfig& c, Backend* device);
  int64_t bytes() const;

  detail::Workspace ws;
  DeviceVector<float> H, H_mtp, logits_row;  // residual streams of the chunk, of its MTP positions; one logits row
};

}  // namespace ferry::runtime

namespace ferry::runtime::detail {

// The ops issued on one backend, in order, and the event of the last: a later op runs after it, so waiting for
// `last` waits for all of them.
class OpStream {
 public:
  explicit OpStream(Backend& device) : device_(device) {}
  Backend& device() const { return device_; }
  void run(const ops::Op& op, CopyEvent after = {}, DeviceRange reads = {}) {
    if (!profile_) {
      last_ = device_.run(op, after, reads);
      return;
    }
    if (profile_->async_device()) profile_->issued(phase_);
    const auto t0 = OpProfile::Clock::now();
    last_ = device_.run(op, after, reads);
    profile_->add(phase_, t0);
  }
  ComputeEvent last() const { return last_; }
  void sync() const {
    if (!profile_) return device_.wait(last_);
    const auto t0 = OpProfile::Clock::now();
    device_.wait(last_);
    profile_->add(OpPhase::Waits, t0);
  }

  // The profile the ops are timed into (nullptr: none) and the phase the forward pass is in.
  void set_profile(OpProfile* p) { profile_ = p; }
  OpProfile* profile() const { return profile_; }
  OpPhase& phase() { return phase_; }

 private:
  Backend& device_;
  ComputeEvent last_;
  OpProfile* profile_ = nullptr;
  OpPhase phase_ = OpPhase::Other;
};

// A block over tokens at positions p0 … p0+n−1 (n <= ubatch), issued on `ops`.
struct Chunk {
  const core::ModelConfig& c;
  planner::KvType kv_type;
  const planner::KvRowLayout& main;
  const planner::KvRowLayout& index;
  int64_t p0;
  int64_t n;
  const int32_t* tokens;  // host memory
  core::ActivationBits bits;
  OpStream& ops;
};

ops::RopeFreqs freqs_of(const cpu::Rope& rope);

// y[t] = ATTN(xn[t]) for the chunk; stores the chunk's window rows and compressed entries in `kv`.
void attention(const Chunk& ch, const LayerWeights& w, const cpu::Rope& rope, LayerKv& kv, Workspace& ws,
               const float* xn, float* y);
// Runs a compressor over the chunk (projections of xn, state updates, finished entries stored as rows).
void compress(const Chunk& ch, const CompressorWeights& w, int64_t ratio, const cpu::Rope& rope, CompressorState& state,
              bool indexer, DeviceVector<uint8_t>& rows, Workspace& ws, const float* xn);
// Fills ws.sel / ws.sel_count with each token's top-k compressed entries (ratio-4 layers).
void indexer_select(const Chunk& ch, const LayerWeights& w, const cpu::Rope& rope, const LayerKv& kv, Workspace& ws,
                    const float* xn, const float* qr);
// y[t] = MOE(xn[t], tokens[t]).
// `experts` (nullptr: the checkpoint's, on this device with this workspace) plans where each routed expert runs;
// `ranks` (nullptr: one process) sends the inputs to the ranks holding the layer's other experts and gathers their
// outputs before the combine. `xn` is read, never written, here; it is not const because the exchange's dispatch
// is one call for the runner that sends it and the ranks that receive into it.
void moe(const Chunk& ch, const LayerWeights& w, Workspace& ws, ExpertProvider* experts, RankExchange* ranks, float* xn,
         float* y);
// The part of layer w's MoE a rank that holds some of its experts but does not run the layer computes: it receives
// the inputs and choices, computes its experts and sends their outputs to the layer's runners.
void moe_for_peers(const Chunk& ch, const LayerWeights& w, Workspace& ws, ExpertProvider* experts, RankExchange& ranks);

}  // namespace ferry::runtime::detail
