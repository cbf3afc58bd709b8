#include "runtime/model/forward.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "planner/core/error.h"
#include "planner/memory.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime {

namespace detail {

namespace {
size_t sz(int64_t v) { return static_cast<size_t>(v); }
}  // namespace

// Every buffer sized from the planner's layout, so what the session holds is what the plan counts.
Workspace::Workspace(const planner::CpuForwardWorkspace& l, const core::ModelConfig& c, Backend* device)
    : ubatch(l.ubatch),
      threads(l.threads),
      scratch_per_thread(l.tile_scratch),
      tile_rows(planner::kAttnKeyTile * c.head_dim),
      tile_scores(std::max(planner::kAttnKeyTile, planner::kIndexerTile)),
      heads(c.num_attention_heads),
      head_dim(c.head_dim) {
  FERRY_CHECK(tile_rows + tile_scores + heads * head_dim + 2 * heads == scratch_per_thread,
              "the tile scratch layout disagrees with planner::cpu_tile_scratch_floats");
  const int64_t hc = c.hc_mult;
  auto f32 = [&](int64_t n) { return device_vector<float>(device, MemoryClass::Workspace, sz(n)); };
  auto i32 = [&](int64_t n) { return device_vector<int32_t>(device, MemoryClass::Workspace, sz(n)); };
  x = f32(l.x);
  xn = f32(l.xn);
  y = f32(l.y);
  mix_weights = f32(l.mix);
  mix.resize(sz(l.ubatch));
  for (int64_t t = 0; t < l.ubatch; ++t) {
    float* m = mix_weights.data() + t * (2 * hc + hc * hc);
    mix[sz(t)] = {m, m + hc, m + 2 * hc};
  }
  qa = f32(l.qa);
  q = f32(l.q);
  kv = f32(l.kv);
  o = f32(l.o);
  z = f32(l.z);
  kv_rows = device_vector<uint8_t>(device, MemoryClass::Workspace, sz(l.kv_rows_bytes));
  comp_a = f32(l.comp);
  comp_s = f32(l.comp);
  iq = f32(l.iq);
  iw = f32(l.iw);
  key_tile = f32(l.key_tile);
  sel = i32(l.sel);
  sel_count = i32(l.sel_count);
  gate = f32(l.gate);
  route_ids = i32(l.route_ids);
  route_w = f32(l.route_w);
  expert_tokens = i32(l.expert_tokens);
  xg = f32(l.xg);
  eg = f32(l.eg);
  eu = f32(l.eu);
  eo = f32(l.eo);
  tiles = f32(threads * scratch_per_thread);
}

TileScratch Workspace::tile_scratch() {
  // The arena's thread slots are 0 … max_concurrency−1; a thread outside any arena yet is the master, slot 0.
  const int slot = std::max(0, tbb::this_task_arena::current_thread_index());
  FERRY_CHECK(slot < threads, "a tile loop ran on worker " + std::to_string(slot) + " of a session built for " +
                                  std::to_string(threads) + " threads");
  float* p = tiles.data() + slot * scratch_per_thread;
  TileScratch s;
  auto take = [&](int64_t n) {
    std::span<float> r(p, sz(n));
    p += n;
    return r;
  };
  s.rows = take(tile_rows);
  s.scores = take(tile_scores);
  s.acc = take(heads * head_dim);
  s.max = take(heads);
  s.sum = take(heads);
  return s;
}

int64_t Workspace::bytes() const {
  auto f = [](const auto& v) { return static_cast<int64_t>(v.capacity() * sizeof(v[0])); };
  int64_t b = f(x) + f(xn) + f(y) + f(qa) + f(q) + f(kv) + f(o) + f(z) + f(kv_rows) + f(comp_a) + f(comp_s) + f(iq) +
              f(iw) + f(key_tile) + f(sel) + f(sel_count) + f(gate) + f(route_ids) + f(route_w) + f(expert_tokens) +
              f(xg) + f(eg) + f(eu) + f(eo);
  return b + f(mix_weights) + f(tiles);
}

}  // namespace detail

using detail::sz;

Session::Session(const ModelWeights& model, SessionOptions options) : model_(model), options_(options) {
  const auto& c = model.config();
  FERRY_CHECK(options.ctx >= 1, "--ctx must be at least 1");
  FERRY_CHECK(options.ctx <= c.max_position_embeddings, "--ctx " + std::to_string(options.ctx) +
                                                            " is beyond the model's " +
                                                            std::to_string(c.max_position_embeddings) + " positions");
  FERRY_CHECK(options.ubatch >= 1, "--ubatch must be at least 1");
  options_.mtp = options.mtp && model.mtp() != nullptr;
  options_.ubatch = std::min(options.ubatch, options.ctx);
  cache_ = std::make_unique<KvCache>(c, options.kv_type, options.ctx, options_.mtp, options.device);
  layout_ = planner::cpu_forward_workspace(c, options.kv_type, options_.ubatch, tbb::this_task_arena::max_concurrency(),
                                           options_.mtp);
  ws_ = std::make_unique<detail::Workspace>(layout_, c, options.device);
  auto f32 = [&](int64_t n) { return device_vector<float>(options.device, MemoryClass::Workspace, sz(n)); };
  H_ = f32(layout_.residual);
  H_mtp_ = f32(layout_.mtp_residual);
  mtp_pending_ = f32(layout_.mtp_pending);
  logits_tmp_ = f32(layout_.logits_row);
}

Session::~Session() = default;

int64_t Session::workspace_bytes() const {
  auto f = [](const DeviceVector<float>& v) { return static_cast<int64_t>(v.capacity() * sizeof(float)); };
  return ws_->bytes() + f(H_) + f(H_mtp_) + f(mtp_pending_) + f(logits_tmp_);
}

void Session::reset() {
  cache_->clear();
  pos_ = 0;
  has_mtp_pending_ = false;
  mtp_logits_.clear();
}

void Session::feed(std::span<const int32_t> tokens, std::vector<float>* all_logits, std::vector<float>* last_logits,
                   const std::function<void(int64_t, int64_t)>& progress) {
  const auto& c = model_.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t i = 0; i < n; ++i)
    FERRY_CHECK(tokens[sz(i)] >= 0 && tokens[sz(i)] < c.vocab_size, "token id " + std::to_string(tokens[sz(i)]) +
                                                                        " is outside the vocabulary [0, " +
                                                                        std::to_string(c.vocab_size) + ")");
  FERRY_CHECK(pos_ + n <= options_.ctx, "the context is full: " + std::to_string(pos_) + " + " + std::to_string(n) +
                                            " tokens exceed --ctx " + std::to_string(options_.ctx));
  const int64_t vocab = c.vocab_size;
  if (all_logits) all_logits->resize(sz(n * vocab));
  if (last_logits) last_logits->resize(sz(vocab));
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min(options_.ubatch, n - done);
    const bool last_chunk = done + m == n;
    float* rows = all_logits ? all_logits->data() + done * vocab : nullptr;
    if (!rows && last_chunk && last_logits) {
      logits_tmp_.resize(sz(vocab));
      rows = logits_tmp_.data();
    }
    run_chunk(tokens.data() + done, m, rows, all_logits != nullptr);
    done += m;
    if (last_chunk && last_logits) {
      const float* last = all_logits ? all_logits->data() + (n - 1) * vocab : logits_tmp_.data();
      std::copy_n(last, vocab, last_logits->data());
    }
    if (progress) progress(done, n);
  }
}

void Session::run_chunk(const int32_t* tokens, int64_t n, float* logits_rows, bool all_rows) {
  const auto& c = model_.config();
  const int64_t hc = c.hc_mult, d = c.hidden_size;
  // Embedding, copied into every stream.
  tbb::parallel_for(int64_t{0}, n, [&](int64_t t) {
    float* h = &H_[sz(t * hc * d)];
    model_.embed_row(tokens[t], h);
    for (int64_t s = 1; s < hc; ++s) std::copy_n(h, d, h + s * d);
  });
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    run_block(model_.layer(l), cache_->layer(l), H_.data(), tokens, pos_, n);
  if (logits_rows) {
    if (all_rows)
      head(H_.data(), model_.hc_head(), model_.norm(), n, logits_rows);
    else
      head(H_.data() + (n - 1) * hc * d, model_.hc_head(), model_.norm(), 1, logits_rows);
  }
  if (options_.mtp) run_mtp(H_.data(), tokens, n);
  pos_ += n;
}

void Session::run_block(const LayerWeights& w, LayerKv& kv, float* H, const int32_t* tokens, int64_t p0, int64_t n) {
  const auto& c = model_.config();
  const int64_t hc = c.hc_mult, d = c.hidden_size;
  detail::Workspace& ws = *ws_;
  const detail::Chunk ch{c, options_.kv_type, cache_->main_layout(), cache_->index_layout(), p0, n, tokens};
  const cpu::Rope rope(c, w.ratio > 0);
  auto pre = [&](const HcWeights& hw, const DeviceVector<float>& norm) {
    tbb::parallel_for(int64_t{0}, n, [&](int64_t t) {
      cpu::hc_pre(H + t * hc * d, hc, d, hw.fn.data(), hw.scale.data(), hw.base.data(), c.hc_sinkhorn_iters, c.hc_eps,
                  c.rms_norm_eps, ws.mix[sz(t)], &ws.x[sz(t * d)]);
      cpu::rms_norm(&ws.x[sz(t * d)], norm.data(), d, c.rms_norm_eps, &ws.xn[sz(t * d)]);
    });
  };
  auto post = [&] {
    tbb::parallel_for(int64_t{0}, n,
                      [&](int64_t t) { cpu::hc_post(&ws.y[sz(t * d)], ws.mix[sz(t)], hc, d, H + t * hc * d); });
  };
  pre(w.hc_attn, w.attn_norm);
  detail::attention(ch, w, rope, kv, ws, ws.xn.data(), ws.y.data());
  post();
  pre(w.hc_ffn, w.ffn_norm);
  detail::moe(ch, w, ws, options_.experts, ws.xn.data(), ws.y.data());
  post();
}

void Session::head(const float* H, const HcWeights& hc_w, const DeviceVector<float>& norm, int64_t n, float* logits) {
  const auto& c = model_.config();
  const int64_t hc = c.hc_mult, d = c.hidden_size;
  detail::Workspace& ws = *ws_;
  tbb::parallel_for(int64_t{0}, n, [&](int64_t t) {
    cpu::hc_head(H + t * hc * d, hc, d, hc_w.fn.data(), hc_w.scale.data(), hc_w.base.data(), c.hc_eps, c.rms_norm_eps,
                 &ws.x[sz(t * d)]);
    cpu::rms_norm(&ws.x[sz(t * d)], norm.data(), d, c.rms_norm_eps, &ws.xn[sz(t * d)]);
  });
  cpu::linear(model_.head(), ws.xn.data(), n, d, logits, c.vocab_size);
}

// MTP at position p needs token p+1: this chunk's tokens complete the previous chunk's last position and all
// of this chunk's positions but its last, which waits for the next token.
void Session::run_mtp(const float* H_main, const int32_t* tokens, int64_t n) {
  const auto& c = model_.config();
  const LayerWeights& w = *model_.mtp();
  const int64_t hc = c.hc_mult, d = c.hidden_size, sd = hc * d;
  const bool pending = has_mtp_pending_;
  const int64_t first = pending ? pos_ - 1 : pos_;
  const int64_t m = pending ? n : n - 1;  // positions first … first+m−1
  // Streams in: the pending position, then this chunk's positions but the last.
  float* Hm = H_mtp_.data();
  if (pending) std::copy_n(mtp_pending_.data(), sd, Hm);
  std::copy_n(H_main, (n - 1) * sd, Hm + (pending ? sd : 0));
  std::copy_n(H_main + (n - 1) * sd, sd, mtp_pending_.data());
  has_mtp_pending_ = true;
  if (m <= 0) return;
  // Next tokens of those positions: this chunk's tokens, from its first when a position was pending.
  const int32_t* next = pending ? tokens : tokens + 1;
  // e = rms(embed[next], enorm) projected once per position; h = rms(H[s], hnorm) projected per stream.
  std::vector<float> e(sz(m * d)), hn(sz(m * sd)), hp(sz(m * sd)), ep(sz(m * d));
  for (int64_t t = 0; t < m; ++t) {
    model_.embed_row(next[t], &e[sz(t * d)]);
    cpu::rms_norm(&e[sz(t * d)], w.enorm.data(), d, c.rms_norm_eps, &e[sz(t * d)]);
    for (int64_t s = 0; s < hc; ++s)
      cpu::rms_norm(Hm + t * sd + s * d, w.hnorm.data(), d, c.rms_norm_eps, &hn[sz(t * sd + s * d)]);
  }
  cpu::linear(w.e_proj, e.data(), m, d, ep.data(), d);
  cpu::linear(w.h_proj, hn.data(), m * hc, d, hp.data(), d);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t s = 0; s < hc; ++s)
      for (int64_t k = 0; k < d; ++k) Hm[t * sd + s * d + k] = ep[sz(t * d + k)] + hp[sz(t * sd + s * d + k)];
  run_block(w, cache_->layer(c.num_hidden_layers), Hm, next, first, m);
  const size_t old = mtp_logits_.size();
  mtp_logits_.resize(old + sz(m * c.vocab_size));
  head(Hm, w.hc_head, w.mtp_norm, m, mtp_logits_.data() + old);
}

}  // namespace ferry::runtime
