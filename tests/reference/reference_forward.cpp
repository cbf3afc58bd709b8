// The float64 reference forward, docs/forward-semantics.md line by line. Deliberately simple: dense double
// weights, every position computed in order against the full history each layer keeps, no tiles, chunks,
// threads or SIMD.
#include "reference_forward.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "planner/core/error.h"
#include "reference_ops.h"
#include "reference_rounding.h"
#include "reference_weights.h"

namespace ferry::reference {

namespace {

using Streams = std::vector<Vec>;  // the hc hidden streams H[s], each [d]

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
        freqs_compressed_(rope_frequencies(c_, true)) {}

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
      FERRY_CHECK(t >= 0 && t < c_.vocab_size, "reference: token id " + std::to_string(t) +
                                                   " is outside the vocabulary of " + std::to_string(c_.vocab_size));
  }

  // The main model at position next_.
  void step(const std::vector<int32_t>& tokens) {
    const int64_t p = next_++;
    const int32_t tok = tokens[z(p)];
    Streams H(z(c_.hc_mult), w_.embed.row(tok));
    for (size_t l = 0; l < w_.layers.size(); ++l) block(w_.layers[l], history_[l], H, p, tok, out_);
    append(out_.logits, head_logits(H, w_.hc_head, w_.norm));
    finals_.push_back(std::move(H));
  }

  // The MTP layer over the positions run (it reads each next token), then the output.
  ReferenceOutput finish(const std::vector<int32_t>& tokens) {
    ReferenceOutput& out = out_;
    const int64_t n = next_;
    const std::vector<Streams>& finals = finals_;
    if (o_.mtp && w_.mtp) {
      const LayerWeights& m = *w_.mtp;
      LayerHistory mtp_history;
      for (int64_t p = 0; p + 1 < n; ++p) {
        const int32_t next = tokens[z(p + 1)];
        const Vec e = m.e_proj * rms_norm(w_.embed.row(next), m.enorm, c_.rms_norm_eps);
        Streams H(z(c_.hc_mult));
        for (int64_t s = 0; s < c_.hc_mult; ++s) {
          const Vec h = m.h_proj * rms_norm(finals[z(p)][z(s)], m.hnorm, c_.rms_norm_eps);
          H[z(s)].resize(z(c_.hidden_size));
          for (int64_t k = 0; k < c_.hidden_size; ++k) H[z(s)][z(k)] = e[z(k)] + h[z(k)];
        }
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

  // A top-k selection, taken the other way when the sink says so: the runner-up replaces the last selected.
  static std::vector<int64_t> select(TopK sel, FragileKind kind, const MarginSink& sink) {
    if (sel.margin && sink(kind, *sel.margin)) sel.ids.back() = sel.runner_up;
    return std::move(sel.ids);
  }

  const Vec& freqs(const LayerWeights& L) const { return L.ratio > 0 ? freqs_compressed_ : freqs_plain_; }

  // mix = (fn · flatten(H)) / sqrt(mean(flatten(H)²) + eps), the first `rows` entries of it.
  Vec hc_mix(const Streams& H, const HcWeights& w, int64_t rows) const {
    Vec f;
    for (const Vec& h : H) f.insert(f.end(), h.begin(), h.end());
    double sum_sq = 0;
    for (double v : f) sum_sq += v * v;
    const double inv = 1 / std::sqrt(sum_sq / static_cast<double>(f.size()) + c_.rms_norm_eps);
    Vec mix(z(rows));
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0;
      for (size_t i = 0; i < f.size(); ++i) acc += w.fn[z(r) * f.size() + i] * f[i];
      mix[z(r)] = acc * inv;
    }
    return mix;
  }

  // hc_pre: returns x = sum_s pre[s]·H[s] and sets post[s] and the Sinkhorn-normalized C[i][j] (comb[i·hc + j]).
  Vec hc_pre(const Streams& H, const HcWeights& w, Vec& post, Vec& comb) const {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    const double eps = c_.hc_eps;
    const Vec mix = hc_mix(H, w, (2 + hc) * hc);
    Vec pre(z(hc));
    post.assign(z(hc), 0.0);
    for (int64_t s = 0; s < hc; ++s) {
      pre[z(s)] = sigmoid(mix[z(s)] * w.scale[0] + w.base[z(s)]) + eps;
      post[z(s)] = 2 * sigmoid(mix[z(hc + s)] * w.scale[1] + w.base[z(hc + s)]);
    }
    comb.assign(z(hc * hc), 0.0);
    auto C = [&](int64_t i, int64_t j) -> double& { return comb[z(i * hc + j)]; };
    for (int64_t i = 0; i < hc; ++i) {  // row softmax + eps
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < hc; ++j) {
        C(i, j) = mix[z(2 * hc + i * hc + j)] * w.scale[2] + w.base[z(2 * hc + i * hc + j)];
        mx = std::max(mx, C(i, j));
      }
      for (int64_t j = 0; j < hc; ++j) sum += C(i, j) = std::exp(C(i, j) - mx);
      for (int64_t j = 0; j < hc; ++j) C(i, j) = C(i, j) / sum + eps;
    }
    auto normalize_columns = [&] {
      for (int64_t j = 0; j < hc; ++j) {
        double sum = 0;
        for (int64_t i = 0; i < hc; ++i) sum += C(i, j);
        for (int64_t i = 0; i < hc; ++i) C(i, j) /= sum + eps;
      }
    };
    normalize_columns();  // completes Sinkhorn iteration 1
    for (int64_t it = 1; it < c_.hc_sinkhorn_iters; ++it) {
      for (int64_t i = 0; i < hc; ++i) {
        double sum = 0;
        for (int64_t j = 0; j < hc; ++j) sum += C(i, j);
        for (int64_t j = 0; j < hc; ++j) C(i, j) /= sum + eps;
      }
      normalize_columns();
    }
    Vec x(z(d), 0.0);
    for (int64_t s = 0; s < hc; ++s)
      for (int64_t k = 0; k < d; ++k) x[z(k)] += pre[z(s)] * H[z(s)][z(k)];
    return x;
  }

  // hc_post: H'[j] = post[j]·y + sum_i C[i][j]·H[i].
  void hc_post(Streams& H, const Vec& y, const Vec& post, const Vec& comb) const {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    const Streams old = H;
    for (int64_t j = 0; j < hc; ++j)
      for (int64_t k = 0; k < d; ++k) {
        double acc = post[z(j)] * y[z(k)];
        for (int64_t i = 0; i < hc; ++i) acc += comb[z(i * hc + j)] * old[z(i)][z(k)];
        H[z(j)][z(k)] = acc;
      }
  }

  Vec head_logits(const Streams& H, const HcWeights& w, const Vec& norm) const {
    const Vec mix = hc_mix(H, w, c_.hc_mult);
    Vec y(z(c_.hidden_size), 0.0);
    for (int64_t s = 0; s < c_.hc_mult; ++s) {
      const double pre = sigmoid(mix[z(s)] * w.scale[0] + w.base[z(s)]) + c_.hc_eps;
      for (int64_t k = 0; k < c_.hidden_size; ++k) y[z(k)] += pre * H[z(s)][z(k)];
    }
    return w_.head * rms_norm(y, norm, c_.rms_norm_eps);
  }

  void block(const LayerWeights& L, LayerHistory& hist, Streams& H, int64_t p, int32_t tok,
             ReferenceOutput& out) const {
    const MarginSink sink = sink_for(p, L.index, out);
    Vec post, comb;
    Vec x = hc_pre(H, L.hc_attn, post, comb);
    hc_post(H, attention(L, hist, rms_norm(x, L.attn_norm, c_.rms_norm_eps), p, sink), post, comb);
    x = hc_pre(H, L.hc_ffn, post, comb);
    hc_post(H, moe(L, rms_norm(x, L.ffn_norm, c_.rms_norm_eps), tok, sink), post, comb);
  }

  // COMPRESS: records this position's inputs; when p ends block j, stores entry j.
  void compress(const LayerWeights& L, CompressorRun run, const Vec& x, int64_t p, const MarginSink& sink) const {
    const int64_t r = L.ratio, D = run.dim;
    Vec a = run.w.wkv * x, s = run.w.wgate * x;
    for (size_t k = 0; k < s.size(); ++k) s[k] += run.w.ape.at(p % r, static_cast<int64_t>(k));
    run.a.push_back(std::move(a));
    run.s.push_back(std::move(s));
    if ((p + 1) % r != 0) return;
    const int64_t j = (p + 1) / r - 1;
    Vec e(z(D));
    for (int64_t k = 0; k < D; ++k) {
      std::vector<std::pair<double, double>> cand;  // (score, value) of channel k
      if (r == 4) {
        // Overlapping blocks: the previous block's tokens through the first half of the channels, this
        // block's through the second; block 0 has no previous block.
        if (j > 0)
          for (int64_t t = r * (j - 1); t < r * j; ++t) cand.emplace_back(run.s[z(t)][z(k)], run.a[z(t)][z(k)]);
        for (int64_t t = r * j; t < r * j + r; ++t) cand.emplace_back(run.s[z(t)][z(D + k)], run.a[z(t)][z(D + k)]);
      } else {
        for (int64_t t = r * j; t < r * j + r; ++t) cand.emplace_back(run.s[z(t)][z(k)], run.a[z(t)][z(k)]);
      }
      double mx = -INFINITY, num = 0, den = 0;
      for (const auto& [score, value] : cand) mx = std::max(mx, score);
      for (const auto& [score, value] : cand) {
        num += std::exp(score - mx) * value;
        den += std::exp(score - mx);
      }
      e[z(k)] = num / den;
    }
    e = rms_norm(e, run.w.norm, c_.rms_norm_eps);
    const int64_t rd = c_.qk_rope_head_dim;
    apply_rope(e.data() + D - rd, freqs_compressed_, r * j, false);  // the position of the block's first token
    if (run.kind == RowKind::IndexerKey) hadamard(e.data(), D);
    round_kv_row(e.data(), D, run.kind, o_.kv_type, rd, sink);
    run.rows.push_back(std::move(e));
  }

  // INDEXER: the ids of the compressed entries position p attends to (ratio-4 layers).
  std::vector<int64_t> indexer(const LayerWeights& L, LayerHistory& hist, const Vec& x, const Vec& qr, int64_t p,
                               const MarginSink& sink) const {
    const int64_t ih = c_.index_n_heads, ihd = c_.index_head_dim, rd = c_.qk_rope_head_dim;
    compress(L, {L.index_compressor, hist.index_a, hist.index_s, hist.index_keys, ihd, RowKind::IndexerKey}, x, p,
             sink);
    Vec qi = L.index_wq_b * qr;
    for (int64_t h = 0; h < ih; ++h) {
      double* q = qi.data() + h * ihd;
      apply_rope(q + ihd - rd, freqs_compressed_, p, false);
      hadamard(q, ihd);
      round_kv_row(q, ihd, RowKind::IndexerQuery, o_.kv_type, rd, sink);
    }
    Vec w = L.index_weights_proj * x;
    for (double& v : w) v /= std::sqrt(static_cast<double>(ihd)) * std::sqrt(static_cast<double>(ih));
    const int64_t visible = (p + 1) / L.ratio;
    FERRY_CHECK(static_cast<int64_t>(hist.index_keys.size()) == visible, "reference: indexer key count out of step");
    Vec score(z(visible), 0.0);
    for (int64_t j = 0; j < visible; ++j)
      for (int64_t h = 0; h < ih; ++h) {
        double dot = 0;
        for (int64_t k = 0; k < ihd; ++k) dot += qi[z(h * ihd + k)] * hist.index_keys[z(j)][z(k)];
        score[z(j)] += w[z(h)] * std::max(dot, 0.0);
      }
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

    Vec o(z(nh * hd), 0.0);
    const double scale = 1 / std::sqrt(static_cast<double>(hd));
    for (int64_t h = 0; h < nh; ++h) {
      Vec s(rows.size());
      double mx = L.attn_sink[z(h)];
      for (size_t t = 0; t < rows.size(); ++t) {
        double dot = 0;
        for (int64_t k = 0; k < hd; ++k) dot += q[z(h * hd + k)] * (*rows[t])[z(k)];
        s[t] = dot * scale;
        mx = std::max(mx, s[t]);
      }
      double den = std::exp(L.attn_sink[z(h)] - mx);  // the sink takes probability mass but adds no value
      for (size_t t = 0; t < rows.size(); ++t) {
        const double e = std::exp(s[t] - mx);
        den += e;
        for (int64_t k = 0; k < hd; ++k) o[z(h * hd + k)] += e * (*rows[t])[z(k)];
      }
      for (int64_t k = 0; k < hd; ++k) o[z(h * hd + k)] /= den;
      apply_rope(o.data() + h * hd + hd - rd, freqs(L), p, true);
    }
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

  // w2 · (silu(min(w1·x, L)) ⊙ clamp(w3·x, −L, L)); no clamp when limit is 0.
  static Vec expert(const ExpertWeights& e, const Vec& x, double limit) {
    Vec g = e.w1 * x;
    const Vec u = e.w3 * x;
    for (size_t k = 0; k < g.size(); ++k) {
      double gk = g[k], uk = u[k];
      if (limit > 0) {
        gk = std::min(gk, limit);
        uk = std::clamp(uk, -limit, limit);
      }
      g[k] = silu(gk) * uk;
    }
    return e.w2 * g;
  }

  Vec moe(const LayerWeights& L, const Vec& x, int32_t tok, const MarginSink& sink) const {
    const int64_t E = c_.n_routed_experts, k = c_.num_experts_per_tok;
    const Vec logits = L.gate * x;
    Vec sc(z(E));
    for (int64_t e = 0; e < E; ++e) sc[z(e)] = std::sqrt(softplus(logits[z(e)]));
    std::vector<int64_t> ids;
    if (L.hash_routed) {
      ids.assign(L.tid2eid.begin() + tok * k, L.tid2eid.begin() + (tok + 1) * k);
    } else {
      Vec biased(z(E));  // the bias picks the experts but does not weight them
      for (int64_t e = 0; e < E; ++e) biased[z(e)] = sc[z(e)] + L.gate_bias[z(e)];
      ids = select(top_k(biased, k), FragileKind::RouterTopk, sink);
    }
    double sum = 0;
    for (int64_t id : ids) sum += sc[z(id)];
    Vec y = c_.n_shared_experts > 0 ? expert(L.shared, x, 0) : Vec(x.size(), 0.0);
    for (int64_t id : ids) {
      const Vec ey = expert(L.experts[z(id)], x, c_.swiglu_limit);
      const double wk = sc[z(id)] / sum * c_.routed_scaling_factor;
      for (size_t i = 0; i < y.size(); ++i) y[i] += wk * ey[i];
    }
    return y;
  }

  const ReferenceWeights& w_;
  const core::ModelConfig& c_;
  ReferenceOptions o_;
  Vec freqs_plain_, freqs_compressed_;
  // The run so far: positions [0, next_) computed.
  int64_t next_ = 0;
  std::vector<LayerHistory> history_ = std::vector<LayerHistory>(w_.layers.size());
  std::vector<Streams> finals_;  // the main model's last streams per position, the MTP layer's input
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
