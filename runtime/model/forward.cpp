#include "runtime/model/forward.h"

#include <tbb/task_arena.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

#include "planner/core/error.h"
#include "planner/memory.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/host_ops.h"
#include "runtime/model/borrowed_feed.h"
#include "runtime/model/forward_parts.h"
#include "runtime/model/op_support.h"

namespace ferry::runtime {

namespace {
size_t sz(int64_t v) { return static_cast<size_t>(v); }
}  // namespace

Session::Session(const ModelWeights& model, SessionOptions options)
    : model_(model),
      options_(options),
      rope_(model.config(), false),
      rope_compressed_(model.config(), true),
      snapshots_(options.snapshot_keep) {
  const auto& c = model.config();
  FERRY_CHECK(options.ctx >= 1, "--ctx must be at least 1");
  FERRY_CHECK(options.ctx <= c.max_position_embeddings, "--ctx {} is beyond the model's {} positions", options.ctx,
              c.max_position_embeddings);
  FERRY_CHECK(options.ubatch >= 1, "--ubatch must be at least 1");
  if (!options.device) own_host_ = std::make_unique<cpu::CpuBackend>();
  device_ = options.device ? options.device : own_host_.get();
  ops_ = std::make_unique<detail::OpStream>(*device_);
  options_.mtp = options.mtp && model.mtp() != nullptr;
  require_ops(*device_, ops_of_model(c, options_.mtp), "this model's forward pass");
  options_.ubatch = std::min(options.ubatch, options.ctx);
  FERRY_CHECK(!options_.mtp || !options.ranks, "--mtp runs in one process for now (not under mpirun)");
  // The MTP layer's inputs are host buffers of each feed (not planned as the device's workspace).
  FERRY_CHECK(!options_.mtp || device_->holds(&options_), "{}: --mtp runs on the host for now, not on a GPU",
              device_->name());
  FERRY_CHECK(options.snapshot_every >= 0, "snapshot_every must not be negative, not {}", options.snapshot_every);
  FERRY_CHECK(options.snapshot_every == 0 || !options_.mtp, "prefix reuse (KV snapshots) runs without --mtp for now");
  std::function<bool(int64_t)> holds_kv;  // the layers this rank runs
  if (options.ranks) holds_kv = [r = options.ranks](int64_t l) { return r->runs_layer(l); };
  cache_ = std::make_unique<KvCache>(c, options.kv_type, options.ctx, options_.mtp, options.device, holds_kv);
  layout_ = planner::cpu_forward_workspace(c, options.kv_type, options_.ubatch, workers_.threads(), options_.mtp);
  options_.prefill_ubatch = std::min(options.prefill_ubatch, options.ctx);
  if (options_.prefill_ubatch > options_.ubatch) {
    FERRY_CHECK(options.device && options.experts && !options.ranks && !options_.mtp,
                "a prefill chunk borrowing the expert cache needs a device, its expert provider, one process and "
                "no --mtp");
    prefill_layout_ =
        planner::cpu_forward_workspace(c, options.kv_type, options_.prefill_ubatch, workers_.threads(), options_.mtp);
  }
  auto make = [&] { return std::make_shared<FeedBuffers>(layout_, c, options.device); };
  feed_ = options.shared_feed_buffers ? options.shared_feed_buffers->get_or_make(make) : make();
  mtp_pending_ = device_vector<float>(options.device, MemoryClass::Workspace, sz(layout_.mtp_pending));
}

FeedBuffers::FeedBuffers(const planner::CpuForwardWorkspace& layout, const core::ModelConfig& c, Backend* device)
    : ws(layout, c, device) {
  auto f32 = [&](int64_t n) { return device_vector<float>(device, MemoryClass::Workspace, sz(n)); };
  H = f32(layout.residual);
  H_mtp = f32(layout.mtp_residual);
  logits_row = f32(layout.logits_row);
}

int64_t FeedBuffers::bytes() const {
  auto f = [](const DeviceVector<float>& v) { return static_cast<int64_t>(v.capacity() * sizeof(float)); };
  return ws.bytes() + f(H) + f(H_mtp) + f(logits_row);
}

std::shared_ptr<FeedBuffers> SharedFeedBuffers::get_or_make(const std::function<std::shared_ptr<FeedBuffers>()>& make) {
  std::lock_guard lock(mutex_);
  if (!buffers_) buffers_ = make();
  return buffers_;
}

// Ops queued on the device read the buffers about to be freed: they finish first.
Session::~Session() {
  try {
    ops_->sync();
  } catch (...) {  // the error was the caller's to see; nothing here can add to it
  }
}

int64_t Session::workspace_bytes() const {
  return feed_->bytes() + static_cast<int64_t>(mtp_pending_.capacity() * sizeof(float));
}

void Session::forget_sequence() {
  cache_->clear();
  pos_ = 0;
  tokens_.clear();
  snapshots_.clear();
  has_mtp_pending_ = false;
  mtp_logits_.clear();
}

void Session::reset() {
  if (options_.ranks && options_.ranks->leads()) options_.ranks->announce_reset();
  forget_sequence();
}

void Session::set_profile(OpProfile* profile) {
  ops_->sync();  // ops issued before are not the profile's
  ops_->set_profile(profile);
}

void Session::restore(const std::function<std::vector<int32_t>(KvCache&, KvSnapshots&)>& write) {
  FERRY_CHECK(!options_.mtp, "a saved session restores without --mtp for now");
  ops_->sync();  // nothing queued still reads or writes the cache
  forget_sequence();
  try {
    tokens_ = write(*cache_, snapshots_);
  } catch (...) {
    forget_sequence();
    throw;
  }
  pos_ = static_cast<int64_t>(tokens_.size());
}

void Session::feed(std::span<const int32_t> tokens, std::vector<float>* all_logits, std::vector<float>* last_logits,
                   const std::function<void(int64_t, int64_t)>& progress) {
  const auto& c = model_.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t i = 0; i < n; ++i)
    FERRY_CHECK(tokens[sz(i)] >= 0 && tokens[sz(i)] < c.vocab_size, "token id {} is outside the vocabulary [0, {})",
                tokens[sz(i)], c.vocab_size);
  FERRY_CHECK(pos_ + n <= options_.ctx, "the context is full: {} + {} tokens exceed --ctx {}", pos_, n, options_.ctx);
  std::unique_lock<std::mutex> turn;
  if (options_.device_turns) turn = std::unique_lock(*options_.device_turns);
  if (options_.ranks && options_.ranks->leads())
    step_ = options_.ranks->announce_feed(tokens, all_logits    ? LogitsWanted::All
                                                  : last_logits ? LogitsWanted::Last
                                                                : LogitsWanted::None);
  struct EndStep {  // the lock is released when the feed ends, if logits() has not released it before
    std::unique_lock<std::mutex>& step;
    ~EndStep() { step = std::unique_lock<std::mutex>(); }
  } end_step{step_};
  compute(tokens, all_logits, last_logits, progress);
}

int64_t Session::rewind(int64_t p) {
  FERRY_CHECK(p >= 0 && p <= pos_, "cannot rewind to position {}: the session holds positions 0 to {}", p, pos_);
  if (p == pos_) return 0;
  FERRY_CHECK(!options_.mtp, "rewinding a session runs without --mtp for now");
  if (options_.ranks && options_.ranks->leads()) options_.ranks->announce_rewind(p, snapshots_.latest_at_or_before(p));
  const std::vector<int32_t> redo = go_back(p);
  // A feed like any other: under mpirun announced, and every rank recomputes its part of it.
  if (!redo.empty()) feed(redo, nullptr, nullptr);
  return static_cast<int64_t>(redo.size());
}

void Session::follow_rewind(int64_t p, int64_t s) {
  FERRY_CHECK(p >= 0 && p <= pos_ && snapshots_.latest_at_or_before(p) == s,
              "transport: rank 0 rewinds to position {} from its snapshot at {}; this rank holds {} positions and its "
              "latest snapshot at or before {} is at {}",
              p, s, pos_, p, snapshots_.latest_at_or_before(p));
  go_back(p);
}

std::vector<int32_t> Session::go_back(int64_t p) {
  snapshots_.drop_after(p);
  const int64_t s = snapshots_.restore(*cache_, p);
  std::vector<int32_t> redo(tokens_.begin() + s, tokens_.begin() + p);
  tokens_.resize(sz(s));
  pos_ = s;
  return redo;
}

// Only the head's runner computes logits (for rank 0); the other followers compute none.
void Session::follow_feed(std::span<const int32_t> tokens, LogitsWanted want) {
  std::vector<float>* rows = want != LogitsWanted::None && options_.ranks->runs_head() ? &follower_logits_ : nullptr;
  compute(tokens, want == LogitsWanted::All ? rows : nullptr, want == LogitsWanted::Last ? rows : nullptr, {});
}

void Session::compute(std::span<const int32_t> tokens, std::vector<float>* all_logits, std::vector<float>* last_logits,
                      const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = model_.config().vocab_size;
  if (all_logits) all_logits->resize(sz(n * vocab));
  if (last_logits) last_logits->resize(sz(vocab));
  // A prompt longer than the session's chunk: bigger chunks, in the expert cache's room, for this feed.
  std::optional<detail::BorrowedFeed> borrowed;
  if (n > options_.ubatch && options_.prefill_ubatch > options_.ubatch)
    borrowed.emplace(*options_.experts, *ops_, feed_, prefill_layout_, model_.config());
  const int64_t chunk = borrowed ? options_.prefill_ubatch : options_.ubatch;
  workers_.execute([&] {
    for (int64_t done = 0; done < n;) {
      const int64_t every = options_.snapshot_every;
      const int64_t m = std::min({chunk, n - done, every > 0 ? every - pos_ % every : n});
      const bool last_chunk = done + m == n;
      float* rows = all_logits ? all_logits->data() + done * vocab : nullptr;
      // The last row: computed into the feed's logits row, or, by a rank that receives it from the head's runner,
      // straight into the caller's buffer (rank 0 may receive it while another session uses the feed buffers).
      float* row = options_.ranks && !options_.ranks->runs_head() && last_logits ? last_logits->data()
                                                                                 : feed_->logits_row.data();
      if (!rows && last_chunk && last_logits) rows = row;
      run_chunk(tokens.data() + done, m, rows, all_logits != nullptr, last_chunk);
      done += m;
      if (last_chunk && last_logits) {
        const float* last = all_logits ? all_logits->data() + (n - 1) * vocab : row;
        if (last != last_logits->data()) std::copy_n(last, vocab, last_logits->data());
      }
      if (every > 0 && pos_ % every == 0) snapshots_.save(*cache_, pos_);
      if (progress) progress(done, n);
    }
  });
}

// The chunk's ops are issued on the device in order and waited for once, at the end (and where the host reads
// what they computed: routing, MTP's streams, the exchanges with other ranks).
void Session::run_chunk(const int32_t* tokens, int64_t n, float* logits_rows, bool all_rows, bool last_chunk) {
  const auto& c = model_.config();
  const int64_t hc = c.hc_mult, d = c.hidden_size;
  detail::OpStream& ops = *ops_;
  RankExchange* ranks = options_.ranks;
  // Embedding, copied into every stream, by the ranks that run the first layer.
  if (!ranks || ranks->runs_layer(0))
    embed(ops, ops::Embed{.table = model_.embed(), .tokens = tokens, .n = n, .copies = hc, .out = feed_->H.data()});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (ranks && l > 0 && ranks->hands_over(l)) {
      ops.sync();
      ranks->hand_over(l, feed_->H.data(), n * hc * d);
    }
    run_layer(ops, l, tokens, n);
  }
  if (logits_rows) {
    const int64_t rows = all_rows ? n : 1;
    if (!ranks || ranks->runs_head())
      head(ops, feed_->H.data() + (n - rows) * hc * d, model_.hc_head(), model_.norm(), rows, logits_rows);
    if (ranks) {
      ops.sync();
      ranks->logits(logits_rows, rows * c.vocab_size, last_chunk && step_.owns_lock() ? &step_ : nullptr);
    }
  }
  if (options_.mtp) run_mtp(ops, feed_->H.data(), tokens, n);
  ops.sync();
  pos_ += n;
  tokens_.insert(tokens_.end(), tokens, tokens + n);
}

// Layer l as this rank takes part in it: the whole block, only its experts for the rank that runs it, or nothing.
void Session::run_layer(detail::OpStream& ops, int64_t l, const int32_t* tokens, int64_t n) {
  RankExchange* ranks = options_.ranks;
  if (!ranks || ranks->runs_layer(l)) {
    run_block(ops, model_.layer(l), cache_->layer(l), feed_->H.data(), tokens, pos_, n);
  } else if (ranks->computes_experts(l)) {
    const auto& c = model_.config();
    const detail::Chunk ch{
        c, options_.kv_type, cache_->main_layout(), cache_->index_layout(), pos_, n, tokens, options_.expert_bits, ops};
    detail::moe_for_peers(ch, model_.layer(l), feed_->ws, options_.experts, *ranks);
  }
}

void Session::run_block(detail::OpStream& ops, const LayerWeights& w, LayerKv& kv, float* H, const int32_t* tokens,
                        int64_t p0, int64_t n) {
  const auto& c = model_.config();
  const int64_t hc = c.hc_mult, d = c.hidden_size;
  detail::Workspace& ws = feed_->ws;
  const detail::Chunk ch{
      c, options_.kv_type, cache_->main_layout(), cache_->index_layout(), p0, n, tokens, options_.expert_bits, ops};
  const cpu::Rope& rope = w.ratio > 0 ? rope_compressed_ : rope_;
  auto pre = [&](const HcWeights& hw, const DeviceVector<float>& norm) {
    ops.run(ops::HcPre{.H = H,
                       .n = n,
                       .hc = hc,
                       .d = d,
                       .fn = hw.fn.data(),
                       .scale = hw.scale.data(),
                       .base = hw.base.data(),
                       .sinkhorn_iters = c.hc_sinkhorn_iters,
                       .hc_eps = c.hc_eps,
                       .norm_eps = c.rms_norm_eps,
                       .mix = ws.mix.data(),
                       .x = ws.x.data()});
    ops.run(ops::RmsNorm{
        .x = ws.x.data(), .rows = n, .dim = d, .weight = norm.data(), .eps = c.rms_norm_eps, .out = ws.xn.data()});
  };
  auto post = [&] { ops.run(ops::HcPost{.y = ws.y.data(), .mix = ws.mix.data(), .n = n, .hc = hc, .d = d, .H = H}); };
  pre(w.hc_attn, w.attn_norm);
  detail::attention(ch, w, rope, kv, ws, ws.xn.data(), ws.y.data());
  post();
  pre(w.hc_ffn, w.ffn_norm);
  detail::moe(ch, w, ws, options_.experts, options_.ranks, ws.xn.data(), ws.y.data());
  post();
}

void Session::head(detail::OpStream& ops, const float* H, const HcWeights& hc_w, const DeviceVector<float>& norm,
                   int64_t n, float* logits) {
  const auto& c = model_.config();
  const int64_t d = c.hidden_size;
  detail::Workspace& ws = feed_->ws;
  ops.run(ops::HcHead{.H = H,
                      .n = n,
                      .hc = c.hc_mult,
                      .d = d,
                      .fn = hc_w.fn.data(),
                      .scale = hc_w.scale.data(),
                      .base = hc_w.base.data(),
                      .hc_eps = c.hc_eps,
                      .norm_eps = c.rms_norm_eps,
                      .y = ws.x.data()});
  ops.run(ops::RmsNorm{
      .x = ws.x.data(), .rows = n, .dim = d, .weight = norm.data(), .eps = c.rms_norm_eps, .out = ws.xn.data()});
  if (ops.device().holds(logits)) {
    ops.run(ops::Linear{.w = model_.head(), .x = ws.xn.data(), .n = n, .y = logits, .bits = options_.expert_bits});
    return;
  }
  // The caller's rows are host memory the device cannot write: each row goes through the feed's logits row (the
  // planned workspace holds one), then to the caller. Every chunking computes the same rows (one or many tokens).
  const int64_t vocab = c.vocab_size;
  float* row = feed_->logits_row.data();
  for (int64_t r = 0; r < n; ++r) {
    ops.run(ops::Linear{.w = model_.head(), .x = ws.xn.data() + r * d, .n = 1, .y = row, .bits = options_.expert_bits});
    ops.sync();
    std::copy_n(row, vocab, logits + r * vocab);
  }
}

// The embedding rows: on the device when it holds the table; otherwise (the table in host RAM) gathered by the host
// straight into the device's buffer, which the host can write (a DeviceVector), once the device is done with it.
void Session::embed(detail::OpStream& ops, const ops::Embed& e) {
  if (ops.device().holds(e.table.data)) return ops.run(e);
  ops.sync();
  run_on_host(e);
}

// MTP at position p needs token p+1: this chunk's tokens complete the previous chunk's last position and all
// of this chunk's positions but its last, which waits for the next token.
void Session::run_mtp(detail::OpStream& ops, const float* H_main, const int32_t* tokens, int64_t n) {
  const auto& c = model_.config();
  const LayerWeights& w = *model_.mtp();
  const int64_t hc = c.hc_mult, d = c.hidden_size, sd = hc * d;
  const bool pending = has_mtp_pending_;
  const int64_t first = pending ? pos_ - 1 : pos_;
  const int64_t m = pending ? n : n - 1;  // positions first … first+m−1
  // Streams in: the pending position, then this chunk's positions but the last (copied by the host once the
  // main layers' ops have run).
  ops.sync();
  float* Hm = feed_->H_mtp.data();
  if (pending) std::copy_n(mtp_pending_.data(), sd, Hm);
  std::copy_n(H_main, (n - 1) * sd, Hm + (pending ? sd : 0));
  std::copy_n(H_main + (n - 1) * sd, sd, mtp_pending_.data());
  has_mtp_pending_ = true;
  if (m <= 0) return;
  // Next tokens of those positions: this chunk's tokens, from its first when a position was pending.
  const int32_t* next = pending ? tokens : tokens + 1;
  // e = rms(embed[next], enorm) projected once per position; h = rms(H[s], hnorm) projected per stream.
  std::vector<float> e(sz(m * d)), hn(sz(m * sd)), hp(sz(m * sd)), ep(sz(m * d));
  embed(ops, ops::Embed{.table = model_.embed(), .tokens = next, .n = m, .copies = 1, .out = e.data()});
  ops.run(ops::RmsNorm{
      .x = e.data(), .rows = m, .dim = d, .weight = w.enorm.data(), .eps = c.rms_norm_eps, .out = e.data()});
  ops.run(ops::RmsNorm{
      .x = Hm, .rows = m * hc, .dim = d, .weight = w.hnorm.data(), .eps = c.rms_norm_eps, .out = hn.data()});
  ops.run(ops::Linear{.w = w.e_proj, .x = e.data(), .n = m, .y = ep.data(), .bits = options_.expert_bits});
  ops.run(ops::Linear{.w = w.h_proj, .x = hn.data(), .n = m * hc, .y = hp.data(), .bits = options_.expert_bits});
  ops.run(ops::AddStreams{.a = ep.data(), .b = hp.data(), .n = m, .streams = hc, .d = d, .out = Hm});
  run_block(ops, w, cache_->layer(c.num_hidden_layers), Hm, next, first, m);
  const size_t old = mtp_logits_.size();
  mtp_logits_.resize(old + sz(m * c.vocab_size));
  head(ops, Hm, w.hc_head, w.mtp_norm, m, mtp_logits_.data() + old);
  ops.sync();  // the ops read e, hn, hp and ep
}

}  // namespace ferry::runtime
