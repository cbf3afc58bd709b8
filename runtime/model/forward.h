// The V4 forward pass for one sequence: prefill in chunks of `ubatch` tokens and one-token decode, with the KV
// cache in the chosen storage type, every computation an op (runtime/backend/ops.h) run on the session's device
// — the host, or the device a Plan puts the layers on — and routed experts wherever the expert provider says.
// Semantics: docs/forward-semantics.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "planner/kv_cache.h"
#include "planner/memory.h"
#include "runtime/backend/worker_threads.h"
#include "runtime/kernels/cpu/mxfp4_activation.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/moe_schedule.h"
#include "runtime/model/op_profile.h"
#include "runtime/model/rank_exchange.h"
#include "runtime/model/snapshots.h"

namespace ferry::runtime {

namespace detail {
struct Workspace;
class OpStream;
}  // namespace detail

// The buffers one feed uses and leaves nothing in: the chunk's workspace, the residual streams, the logits row.
struct FeedBuffers;
// Feed buffers shared by sessions that never feed at once (a server's slots taking turns on one device, or a rank's
// followers, which run one command at a time): made by the first session, on its device, used by all, so that the
// run holds one workspace however many sequences it keeps — what the planner counts.
class SharedFeedBuffers {
 public:
  std::shared_ptr<FeedBuffers> get_or_make(const std::function<std::shared_ptr<FeedBuffers>()>& make);

 private:
  std::mutex mutex_;
  std::shared_ptr<FeedBuffers> buffers_;
};

struct SessionOptions {
  int64_t ctx = 4096;  // tokens the KV cache holds
  planner::KvType kv_type = planner::KvType::FP8;
  int64_t ubatch = 512;  // prefill chunk
  // Per-phase workspace (planner::DevicePlan::prefill_borrowed): a feed longer than ubatch goes in chunks of
  // prefill_ubatch tokens, their buffers in the room the expert provider's cache lends for the feed
  // (ExpertProvider::lend_cache); 0 (or <= ubatch): chunks of ubatch, the session's own buffers. Needs `device`
  // and `experts`; not under mpirun yet.
  int64_t prefill_ubatch = 0;
  bool mtp = false;  // also run the MTP layer and keep its logits
  // Where the KV cache and the workspace live (accounted there as Kv, Indexer and Workspace) and the layers'
  // ops run; nullptr: the host, with the buffers on the plain heap, unaccounted (a CPU-only run).
  Backend* device = nullptr;
  // Where routed experts are computed (offload/); nullptr: every expert from the checkpoint, on the CPU.
  ExpertProvider* experts = nullptr;
  // Precision of routed-expert inputs in the CPU's MXFP4 kernels (runtime/kernels/cpu/mxfp4_activation.h).
  core::ActivationBits expert_bits = core::ActivationBits::Int24;
  // The forward pass spread over ranks (transport/): the layers, experts and head this rank computes and the
  // exchanges between them; nullptr: one process computes everything. Rank 0's feed and reset are announced to
  // the others, which follow (transport::follow).
  RankExchange* ranks = nullptr;
  // Shared by the sessions of a run whose device and expert provider are shared (a server's slots on one GPU):
  // their feeds take turns, one at a time, since the provider's stream slots, staging and cache are one device's.
  // Not needed under mpirun (rank 0's step lock already lets one feed compute at a time); nullptr: none.
  std::mutex* device_turns = nullptr;
  // The feed buffers this session shares with the others of the run (they must never feed at once: device_turns,
  // or rank 0's step lock with the logits received into the caller's buffer); nullptr: its own.
  SharedFeedBuffers* shared_feed_buffers = nullptr;
  // Prefix reuse (rewind): every `snapshot_every` positions K the session copies the cache's volatile state to
  // host memory (runtime/model/snapshots.h), so that rewind() recomputes at most K−1 tokens; 0: no snapshots.
  // Feeds are then cut into chunks at multiples of K, which changes no result. Not with mtp. Under mpirun every
  // rank's session of a slot needs the same K (and ubatch): the ranks cut every feed into the same chunks.
  int64_t snapshot_every = 0;
  // The most recent snapshots kept (planner::kv_snapshot_bytes). V4-Flash's is 14.7 MiB at fp8 (43 window rings of
  // 128 × 584 B = 3.07 MiB, compressor states 11.64 MiB: 10 MiB of them the 20 HCA layers' 128 × 512 fp32 kv +
  // score): 4 cost 59 MiB a sequence, under 2% of a 1M-token fp8 cache (3.45 GiB), and cover a rollback of up to
  // 3K tokens at the K−1 bound — a chat's next turn needs one or two.
  int64_t snapshot_keep = 4;
};

class Session {
 public:
  Session(const ModelWeights& model, SessionOptions options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Feeds `tokens` at the next positions, in chunks of ubatch. Writes the logits of every fed position to
  // `all_logits` ([n, vocab]) when non-null, and those of the last position to `last_logits` ([vocab]) when
  // non-null. `progress(done, total)` is called after each chunk. Throws ferry::Error on a token id beyond the
  // vocabulary or when the context is full, before computing anything.
  void feed(std::span<const int32_t> tokens, std::vector<float>* all_logits, std::vector<float>* last_logits,
            const std::function<void(int64_t, int64_t)>& progress = {});

  // Forgets the sequence so that the session serves a new one (a server's next request): position 0, the KV
  // cache and the MTP state cleared, every buffer kept. What follows computes exactly what a fresh session would.
  void reset();
  // Session files (session_file.h) put a saved sequence back: `write` fills the cache with its state, and the
  // (empty) snapshots with the saved ones it keeps, and returns its tokens, which the session then holds (position
  // tokens.size()). If `write` throws, the session is reset. Announces nothing: under mpirun every rank restores its
  // part (follow_session_file).
  void restore(const std::function<std::vector<int32_t>(KvCache&, KvSnapshots&)>& write);
  // What a rank that follows rank 0 runs for an announced feed: the same chunks, the logits (when wanted) left
  // to rank 0.
  void follow_feed(std::span<const int32_t> tokens, LogitsWanted want);
  // What a rank that follows rank 0 runs for an announced rewind to p (RankExchange::announce_rewind): its part of
  // the session back to its snapshot at s, the feed of [s, p) to follow. Throws ferry::Error, changing nothing,
  // when this rank's session does not hold p or its latest snapshot at or before p is not at s (its sessions would
  // no longer compute what rank 0's does).
  void follow_rewind(int64_t p, int64_t s);
  // Goes back to position p (0 <= p <= position()): afterwards the session is exactly as if only tokens()[0, p)
  // had been fed since the last reset, so what is fed next computes bitwise what a fresh session fed the whole
  // sequence would. Restores the latest kept snapshot s <= p (or clears the cache: s = 0, when none is kept — a p
  // older than every kept snapshot, or no snapshots) and recomputes tokens()[s, p); returns p − s, at most K−1
  // while the snapshot at ⌊p/K⌋·K is kept (one of the last snapshot_keep multiples of K fed). Snapshots after p are
  // forgotten. Under mpirun rank 0 announces the rewind and every rank does the same with its part of the session
  // (follow_rewind). Throws ferry::Error for a p outside [0, position()], and for p < position() with mtp, changing
  // nothing.
  int64_t rewind(int64_t p);
  // The tokens rewind(p) would recompute (p − the latest kept snapshot <= p; 0 at position()), for choosing what
  // to reuse.
  int64_t rewind_cost(int64_t p) const { return p == pos_ ? 0 : p - snapshots_.latest_at_or_before(p); }
  // Host bytes of the snapshots held, measured from the buffers: planner::kv_snapshot_bytes(config, kv_type, ctx,
  // n) for n snapshots, n <= snapshot_keep.
  int64_t snapshot_bytes() const { return snapshots_.bytes(); }
  const KvSnapshots& snapshots() const { return snapshots_; }

  int64_t position() const { return pos_; }
  // The tokens fed since the last reset, position by position (what the KV cache holds).
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int32_t eos_token() const { return static_cast<int32_t>(model_.config().eos_token_id); }
  const KvCache& cache() const { return *cache_; }
  const SessionOptions& options() const { return options_; }
  // Times every op of the following feeds into `profile` by phase (op_profile.h); nullptr: stops.
  void set_profile(OpProfile* profile);
  // Bytes of the chunk workspace (activations, tiles), measured from the buffers: depends on the model and
  // ubatch, not on ctx, and equals planned_workspace().bytes(). Shared feed buffers count in every session that
  // shares them: feed_buffers() tells them apart.
  int64_t workspace_bytes() const;
  const FeedBuffers* feed_buffers() const { return feed_.get(); }
  const planner::CpuForwardWorkspace& planned_workspace() const { return layout_; }

  // MTP logits (options.mtp): row i belongs to position mtp_first_position() + i; position p's row exists once
  // token p+1 has been fed.
  const std::vector<float>& mtp_logits() const { return mtp_logits_; }
  int64_t mtp_first_position() const { return 0; }

 private:
  void compute(std::span<const int32_t> tokens, std::vector<float>* all_logits, std::vector<float>* last_logits,
               const std::function<void(int64_t, int64_t)>& progress);
  void run_chunk(const int32_t* tokens, int64_t n, float* logits_rows, bool all_rows, bool last_chunk);
  void run_layer(detail::OpStream& ops, int64_t l, const int32_t* tokens, int64_t n);
  void run_block(detail::OpStream& ops, const LayerWeights& w, LayerKv& kv, float* H, const int32_t* tokens, int64_t p0,
                 int64_t n);
  void head(detail::OpStream& ops, const float* H, const HcWeights& hc, const DeviceVector<float>& norm, int64_t n,
            float* logits);
  void run_mtp(detail::OpStream& ops, const float* H_main, const int32_t* tokens, int64_t n);
  void embed(detail::OpStream& ops, const ops::Embed& e);
  // Position 0, the cache, snapshots and MTP state cleared (reset, restore); announces nothing to other ranks.
  void forget_sequence();
  // rewind()'s first half: the cache back to the latest kept snapshot s <= p (cleared when none: s = 0), the
  // snapshots after p and the tokens after s forgotten; returns the tokens [s, p) to feed again.
  std::vector<int32_t> go_back(int64_t p);

  const ModelWeights& model_;
  SessionOptions options_;
  std::unique_ptr<Backend> own_host_;      // runs the ops of a session without a device
  WorkerArena workers_;                    // the session's CPU work runs here (worker_threads.h)
  Backend* device_;                        // options_.device, or own_host_
  std::unique_ptr<detail::OpStream> ops_;  // the ops issued on device_
  cpu::Rope rope_, rope_compressed_;       // RoPE of SWA-only and of compressed layers
  std::unique_ptr<KvCache> cache_;
  KvSnapshots snapshots_;
  planner::CpuForwardWorkspace layout_;
  planner::CpuForwardWorkspace prefill_layout_;  // a prefill_ubatch chunk's, when the session borrows
  std::shared_ptr<FeedBuffers> feed_;
  DeviceVector<float> mtp_pending_;  // the MTP layer's last position, waiting for the next token
  bool has_mtp_pending_ = false;
  std::vector<float> mtp_logits_;
  int64_t pos_ = 0;
  std::vector<int32_t> tokens_;  // tokens()
  // Under mpirun, rank 0: the lock of the feed in progress (RankExchange::announce_feed), released once rank 0's
  // part of the feed is done. Another rank, the head's runner: the logits rows it computes for rank 0.
  std::unique_lock<std::mutex> step_;
  std::vector<float> follower_logits_;
};

}  // namespace ferry::runtime
