// The float64 reference forward, docs/forward-semantics.md line by line. Deliberately simple: dense double
// weights, every position computed in order against the full history each layer keeps, no tiles, chunks,
// threads or SIMD.
#include "reference_forward.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "planner/core/error.h"
#include "reference_op_math.h"
#include "reference_ops.h"
#include "reference_rounding.h"
#include "reference_weights.h"

namespace ferry::reference {

namespace {

size_t z(int64_t i) { return static_cast<size_t>(i); }

// What one layer keeps for the whole sequence: every stored row is kept already rounded, because attention
// and the indexer only ever read stored rows.
struct LayerHistory {
  std::vector<Vec> window;      // the window row of every position
  std::vector<Vec> compressed;  // compressed row j
  std::vector<Vec> index_keys;  // indexer key j (ratio-4 layers)
  // The compressors' inputs of every position: a = wkv·x and s = wgate·x + ape[p mod r].
  std::vector<Vec> comp_a, comp_s, index_a, index_s;
};

// One compressor at work: its weights, the per-position inputs it has seen, the rows it stores.
struct CompressorRun {
  const CompressorWeights& w;
  std::vector<Vec>& a;
  std::vector<Vec>& s;
  std::vector<Vec>& rows;
  int64_t dim;  // D: head_dim for the main compressor, index_head_dim for the indexer's
  RowKind kind;
};

class Forward {
 public:
  Forward(const ReferenceWeights& w, const ReferenceOptions& o)
      : w_(w),
        c_(w_.config),
        o_(o),
        freqs_plain_(rope_frequencies(c_, false)),
        freqs_compressed_(rope_frequencies(c_, true)),
        hc_{c_.hc_mult, c_.hidden_size, c_.hc_sinkhorn_iters, c_.hc_eps, c_.rms_norm_eps} {}

  ReferenceOutput run(const std::vector<int32_t>& tokens) {
    check_tokens(tokens);
    const int64_t n = o_.positions < 0 ? static_cast<int64_t>(tokens.size())
                                       : std::min<int64_t>(o_.positions, static_cast<int64_t>(tokens.size()));
    while (next_ < n) step(tokens);
    return finish(tokens);
  }

  // The logits of position `row` for each alternative: the run with that decision also taken the other way.
  // Each alternative continues a copy of this run from the start of its decision's position, so it costs only
  // the positions from there to `row`.
  std::vector<Vec> alternatives(const std::vector<int32_t>& tokens, const std::vector<FragileEvent>& alts,
                                int64_t row) {
    check_tokens(tokens);
    FERRY_CHECK(row >= 0 && row < static_cast<int64_t>(tokens.size()),
                "reference: alternatives for a row past the tokens");
    std::vector<size_t> order(alts.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return alts[a].pos < alts[b].pos; });
    std::vector<Vec> rows(alts.size());
    for (const size_t i : order) {
      FERRY_CHECK(alts[i].pos >= next_ && alts[i].pos <= row, "reference: an alternative outside the positions run");
      while (next_ < alts[i].pos) step(tokens);
      Forward fork = *this;
      fork.o_.flip.insert(std::upper_bound(fork.o_.flip.begin(), fork.o_.flip.end(), alts[i].id), alts[i].id);
      while (fork.next_ <= row) fork.step(tokens);
      const int64_t V = c_.vocab_size;
      rows[i].assign(fork.out_.logits.begin() + row * V, fork.out_.logits.begin() + (row + 1) * V);
    }
    return rows;
  }

 private:
  void check_tokens(const std::vector<int32_t>& tokens) const {
    for (int32_t t : tokens)
      FERRY_CHECK(t >= 0 && t < c_.vocab_size, "reference: token id {} is outside the vocabulary of {}", t,
                  c_.vocab_size);
  }

  // The main model at position next_.
  void step(const std::vector<int32_t>& tokens) {
    const int64_t p = next_++;
    const int32_t tok = tokens[z(p)];
    Vec H = embed_streams(w_.embed, tok, c_.hc_mult);
    for (size_t l = 0; l < w_.layers.size(); ++l) block(w_.layers[l], history_[l], H, p, tok, out_);
    append(out_.logits, head_logits(H, w_.hc_head, w_.norm));
    finals_.push_back(std::move(H));
  }

  // The MTP layer over the positions run (it reads each next token), then the output.
  ReferenceOutput finish(const std::vector<int32_t>& tokens) {
    ReferenceOutput& out = out_;
    const int64_t n = next_;
    const std::vector<Vec>& finals = finals_;
    if (o_.mtp && w_.mtp) {
      const LayerWeights& m = *w_.mtp;
      LayerHistory mtp_history;
      for (int64_t p = 0; p + 1 < n; ++p) {
        const int32_t next = tokens[z(p + 1)];
        const int64_t d = c_.hidden_size;
        const Vec e = m.e_proj * rms_norm(w_.embed.row(next), m.enorm, c_.rms_norm_eps);
        Vec h;
        for (int64_t s = 0; s < c_.hc_mult; ++s) {
          const Vec stream(finals[z(p)].begin() + s * d, finals[z(p)].begin() + (s + 1) * d);
          append(h, m.h_proj * rms_norm(stream, m.hnorm, c_.rms_norm_eps));
        }
        Vec H = add_streams(e, h, c_.hc_mult);
        block(m, mtp_history, H, p, next, out);
        append(out.mtp_logits, head_logits(H, m.hc_head, m.norm));
      }
    }
    out.vocab = c_.vocab_size;
    out.decisions = decisions_;
    return std::move(out);
  }

  static void append(Vec& to, const Vec& v) { to.insert(to.end(), v.begin(), v.end()); }

  MarginSink sink_for(int64_t pos, int64_t layer, ReferenceOutput& out) const {
    return [this, pos, layer, &out](FragileKind kind, double margin) {
      const uint64_t id = decisions_++;
      if (margin < o_.fragile_margin) out.fragile.push_back({id, pos, layer, kind, margin});
      return std::binary_search(o_.flip.begin(), o_.flip.end(), id);
    };
  }

  const Vec& freqs(const LayerWeights& L) const { return L.ratio > 0 ? freqs_compressed_ : freqs_plain_; }

  Vec head_logits(const Vec& H, const HcWeights& w, const Vec& norm) const {
    return w_.head * rms_norm(hc_head(H, w, hc_), norm, c_.rms_norm_eps);
  }

  void block(const LayerWeights& L, LayerHistory& hist, Vec& H, int64_t p, int32_t tok, ReferenceOutput& out) const {
    const MarginSink sink = sink_for(p, L.index, out);
    HcMix mix;
    Vec x = hc_pre(H, L.hc_attn, hc_, mix);
    hc_post(H, attention(L, hist, rms_norm(x, L.attn_norm, c_.rms_norm_eps), p, sink), mix, hc_);
    x = hc_pre(H, L.hc_ffn, hc_, mix);
    hc_post(H, moe(L, rms_norm(x, L.ffn_norm, c_.rms_norm_eps), tok, sink), mix, hc_);
  }

  // COMPRESS: records this position's inputs; when p ends block j, stores entry j.
  void compress(const LayerWeights& L, CompressorRun run, const Vec& x, int64_t p, const MarginSink& sink) const {
    const int64_t r = L.ratio;
    Vec a = run.w.wkv * x, s = run.w.wgate * x;
    for (size_t k = 0; k < s.size(); ++k) s[k] += run.w.ape.at(p % r, static_cast<int64_t>(k));
    run.a.push_back(std::move(a));
    run.s.push_back(std::move(s));
    if ((p + 1) % r != 0) return;
    const CompressorShape shape{r, run.dim, &run.w.norm, c_.rms_norm_eps, &freqs_compressed_, run.kind, o_.kv_type};
    run.rows.push_back(compressed_entry(run.a, run.s, (p + 1) / r - 1, shape, sink));
  }

  // INDEXER: the ids of the compressed entries position p attends to (ratio-4 layers).
  std::vector<int64_t> indexer(const LayerWeights& L, LayerHistory& hist, const Vec& x, const Vec& qr, int64_t p,
                               const MarginSink& sink) const {
    const int64_t ihd = c_.index_head_dim;
    compress(L, {L.index_compressor, hist.index_a, hist.index_s, hist.index_keys, ihd, RowKind::IndexerKey}, x, p,
             sink);
    Vec qi = L.index_wq_b * qr;
    indexer_query(qi, c_.index_n_heads, freqs_compressed_, p, o_.kv_type, sink);
    Vec w = L.index_weights_proj * x;
    indexer_weights(w, ihd);
    const int64_t visible = (p + 1) / L.ratio;
    FERRY_CHECK(static_cast<int64_t>(hist.index_keys.size()) == visible, "reference: indexer key count out of step");
    const Vec score = indexer_scores(qi, w, hist.index_keys, visible);
    return select(top_k(score, std::min(c_.index_topk, visible)), FragileKind::IndexerTopk, sink);
  }

  Vec attention(const LayerWeights& L, LayerHistory& hist, const Vec& x, int64_t p, const MarginSink& sink) const {
    const int64_t nh = c_.num_attention_heads, hd = c_.head_dim, rd = c_.qk_rope_head_dim;
    const Vec qr = rms_norm(L.wq_a * x, L.q_norm, c_.rms_norm_eps);
    Vec q = L.wq_b * qr;
    for (int64_t h = 0; h < nh; ++h) {
      const Vec head(q.begin() + h * hd, q.begin() + (h + 1) * hd);
      Vec normed = rms_norm(head, {}, c_.rms_norm_eps);
      apply_rope(normed.data() + hd - rd, freqs(L), p, false);
      std::copy(normed.begin(), normed.end(), q.begin() + h * hd);
    }
    Vec kv = rms_norm(L.wkv * x, L.kv_norm, c_.rms_norm_eps);
    apply_rope(kv.data() + hd - rd, freqs(L), p, false);
    round_kv_row(kv.data(), hd, RowKind::Main, o_.kv_type, rd, sink);
    hist.window.push_back(std::move(kv));
    FERRY_CHECK(static_cast<int64_t>(hist.window.size()) == p + 1, "reference: window rows out of step");

    if (L.ratio > 0)
      compress(L, {L.compressor, hist.comp_a, hist.comp_s, hist.compressed, hd, RowKind::Main}, x, p, sink);
    std::vector<int64_t> selected;  // compressed entries
    if (L.ratio == 4) {
      selected = indexer(L, hist, x, qr, p, sink);
    } else if (L.ratio > 0) {
      for (int64_t j = 0; j < (p + 1) / L.ratio; ++j) selected.push_back(j);
    }
    std::vector<const Vec*> rows;
    for (int64_t t = std::max<int64_t>(0, p - c_.sliding_window + 1); t <= p; ++t) rows.push_back(&hist.window[z(t)]);
    for (int64_t j : selected) rows.push_back(&hist.compressed.at(z(j)));

    const Vec o = attend(q, rows, L.attn_sink, freqs(L), p);
    // Grouped low-rank output: group g is heads [g·nh/G, (g+1)·nh/G), projected by rows [g·ol, (g+1)·ol) of wo_a.
    const int64_t G = c_.o_groups, ol = c_.o_lora_rank, group_in = nh * hd / G;
    Vec zg(z(G * ol), 0.0);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t r = 0; r < ol; ++r) {
        double acc = 0;
        for (int64_t k = 0; k < group_in; ++k) acc += L.wo_a.at(g * ol + r, k) * o[z(g * group_in + k)];
        zg[z(g * ol + r)] = acc;
      }
    return L.wo_b * zg;
  }

  Vec moe(const LayerWeights& L, const Vec& x, int32_t tok, const MarginSink& sink) const {
    const int64_t k = c_.num_experts_per_tok;
    const Vec sc = route_scores(L.gate * x);
    const std::vector<int64_t> ids =
        L.hash_routed ? std::vector<int64_t>(L.tid2eid.begin() + tok * k, L.tid2eid.begin() + (tok + 1) * k)
                      : route_by_score(sc, L.gate_bias, k, sink);
    const Vec wk = route_weights(sc, ids, c_.routed_scaling_factor);
    std::vector<Vec> routed;
    for (int64_t id : ids) routed.push_back(expert_ffn(L.experts[z(id)], x, c_.swiglu_limit));
    const Vec shared = c_.n_shared_experts > 0 ? expert_ffn(L.shared, x, 0) : Vec(x.size(), 0.0);
    return moe_combine(shared, routed, wk);
  }

  const ReferenceWeights& w_;
  const core::ModelConfig& c_;
  ReferenceOptions o_;
  Vec freqs_plain_, freqs_compressed_;
  HcShape hc_;
  // The run so far: positions [0, next_) computed.
  int64_t next_ = 0;
  std::vector<LayerHistory> history_ = std::vector<LayerHistory>(w_.layers.size());
  std::vector<Vec> finals_;  // the main model's last streams per position, the MTP layer's input
  ReferenceOutput out_;
  mutable uint64_t decisions_ = 0;  // every decision of the run, in order
};

}  // namespace

ReferenceOutput reference_forward(const ReferenceWeights& weights, const std::vector<int32_t>& tokens,
                                  ReferenceOptions options) {
  std::sort(options.flip.begin(), options.flip.end());
  return Forward(weights, options).run(tokens);
}

std::vector<std::vector<double>> reference_alternatives(const ReferenceWeights& weights,
                                                        const std::vector<int32_t>& tokens, ReferenceOptions options,
                                                        const std::vector<FragileEvent>& alternatives, int64_t row) {
  std::sort(options.flip.begin(), options.flip.end());
  options.mtp = false;
  return Forward(weights, options).alternatives(tokens, alternatives, row);
}

ReferenceOutput reference_forward(const std::filesystem::path& model_dir, const std::vector<int32_t>& tokens,
                                  const ReferenceOptions& options) {
  const ReferenceWeights weights = load_reference_weights(model_dir, options.mtp);
  return reference_forward(weights, tokens, options);
}

}  // namespace ferry::reference
