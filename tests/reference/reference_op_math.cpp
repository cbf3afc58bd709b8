#include "reference_op_math.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "planner/core/error.h"

namespace ferry::reference {

namespace {

size_t z(int64_t i) { return static_cast<size_t>(i); }

// mix = (fn · f) / sqrt(mean(f²) + eps) for f = flatten(H), the first `rows` entries of it.
Vec hc_mix(const Vec& f, const Vec& fn, int64_t rows, double norm_eps) {
  double sum_sq = 0;
  for (double v : f) sum_sq += v * v;
  const double inv = 1 / std::sqrt(sum_sq / static_cast<double>(f.size()) + norm_eps);
  Vec mix(z(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (size_t i = 0; i < f.size(); ++i) acc += fn[z(r) * f.size() + i] * f[i];
    mix[z(r)] = acc * inv;
  }
  return mix;
}

// C <- softmax over each row + eps, then Sinkhorn: columns, and (iters − 1) times rows then columns, each
// divided by its sum + eps.
void sinkhorn(Vec& comb, const Vec& mix, const HcWeights& w, const HcShape& s) {
  const int64_t hc = s.hc;
  const double eps = s.hc_eps;
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
  for (int64_t it = 1; it < s.sinkhorn_iters; ++it) {
    for (int64_t i = 0; i < hc; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < hc; ++j) sum += C(i, j);
      for (int64_t j = 0; j < hc; ++j) C(i, j) /= sum + eps;
    }
    normalize_columns();
  }
}

// x = sum_s weight[s]·H[s].
Vec mix_streams(const Vec& H, const Vec& weight, const HcShape& s) {
  Vec x(z(s.d), 0.0);
  for (int64_t st = 0; st < s.hc; ++st)
    for (int64_t k = 0; k < s.d; ++k) x[z(k)] += weight[z(st)] * H[z(st * s.d + k)];
  return x;
}

// Pooled channel values of compressor block j: per channel, a softmax over the candidates' scores weights their
// values. Ratio 4: the previous block's tokens through the first half of the channels, this block's through
// the second; block 0 has no previous block.
Vec pool_block(const std::vector<Vec>& a, const std::vector<Vec>& s, int64_t j, int64_t r, int64_t D, int64_t first) {
  const int64_t from = r == 4 && j > 0 ? r * (j - 1) : r * j;
  FERRY_CHECK(from >= first && static_cast<int64_t>(std::min(a.size(), s.size())) >= r * (j + 1) - first,
              "reference: a compressed entry outside the positions given");
  auto A = [&](int64_t t, int64_t k) { return a[z(t - first)][z(k)]; };
  auto S = [&](int64_t t, int64_t k) { return s[z(t - first)][z(k)]; };
  Vec e(z(D));
  for (int64_t k = 0; k < D; ++k) {
    std::vector<std::pair<double, double>> cand;  // (score, value) of channel k
    if (r == 4) {
      if (j > 0)
        for (int64_t t = r * (j - 1); t < r * j; ++t) cand.emplace_back(S(t, k), A(t, k));
      for (int64_t t = r * j; t < r * j + r; ++t) cand.emplace_back(S(t, D + k), A(t, D + k));
    } else {
      for (int64_t t = r * j; t < r * j + r; ++t) cand.emplace_back(S(t, k), A(t, k));
    }
    double mx = -INFINITY, num = 0, den = 0;
    for (const auto& [score, value] : cand) mx = std::max(mx, score);
    for (const auto& [score, value] : cand) {
      num += std::exp(score - mx) * value;
      den += std::exp(score - mx);
    }
    e[z(k)] = num / den;
  }
  return e;
}

}  // namespace

Vec embed_streams(const Matrix& table, int64_t token, int64_t copies) {
  const Vec row = table.row(token);
  Vec H;
  for (int64_t s = 0; s < copies; ++s) H.insert(H.end(), row.begin(), row.end());
  return H;
}

Vec add_streams(const Vec& a, const Vec& b, int64_t streams) {
  FERRY_CHECK(b.size() == a.size() * z(streams), "reference: add_streams size mismatch");
  Vec out(b.size());
  for (size_t i = 0; i < b.size(); ++i) out[i] = a[i % a.size()] + b[i];
  return out;
}

Vec hc_pre(const Vec& H, const HcWeights& w, const HcShape& s, HcMix& m) {
  const int64_t hc = s.hc;
  const Vec mix = hc_mix(H, w.fn, (2 + hc) * hc, s.norm_eps);
  m.pre.assign(z(hc), 0.0);
  m.post.assign(z(hc), 0.0);
  for (int64_t st = 0; st < hc; ++st) {
    m.pre[z(st)] = sigmoid(mix[z(st)] * w.scale[0] + w.base[z(st)]) + s.hc_eps;
    m.post[z(st)] = 2 * sigmoid(mix[z(hc + st)] * w.scale[1] + w.base[z(hc + st)]);
  }
  sinkhorn(m.comb, mix, w, s);
  return mix_streams(H, m.pre, s);
}

void hc_post(Vec& H, const Vec& y, const HcMix& m, const HcShape& s) {
  const int64_t hc = s.hc, d = s.d;
  const Vec old = H;
  for (int64_t j = 0; j < hc; ++j)
    for (int64_t k = 0; k < d; ++k) {
      double acc = m.post[z(j)] * y[z(k)];
      for (int64_t i = 0; i < hc; ++i) acc += m.comb[z(i * hc + j)] * old[z(i * d + k)];
      H[z(j * d + k)] = acc;
    }
}

Vec hc_head(const Vec& H, const HcWeights& w, const HcShape& s) {
  const Vec mix = hc_mix(H, w.fn, s.hc, s.norm_eps);
  Vec pre(z(s.hc));
  for (int64_t st = 0; st < s.hc; ++st) pre[z(st)] = sigmoid(mix[z(st)] * w.scale[0] + w.base[z(st)]) + s.hc_eps;
  return mix_streams(H, pre, s);
}

Vec mxfp4_input(Vec x, int bits) {
  if (bits == 0) return x;
  for (size_t b = 0; b < x.size(); b += 32)
    round_mxfp4_activation_block(x.data() + b, static_cast<int64_t>(std::min<size_t>(32, x.size() - b)), bits);
  return x;
}

Vec expert_ffn(const ExpertWeights& e, const Vec& x, double limit, int act_bits, Vec* hidden) {
  const Vec xr = mxfp4_input(x, act_bits);
  Vec g = e.w1 * xr;
  const Vec u = e.w3 * xr;
  for (size_t k = 0; k < g.size(); ++k) {
    double gk = g[k], uk = u[k];
    if (limit > 0) {
      gk = std::min(gk, limit);
      uk = std::clamp(uk, -limit, limit);
    }
    g[k] = silu(gk) * uk;
  }
  if (hidden) *hidden = g;
  return e.w2 * mxfp4_input(std::move(g), act_bits);
}

void window_store(std::vector<uint8_t>& ring, const std::vector<uint8_t>& rows, int64_t n, int64_t p0, int64_t window,
                  int64_t row_bytes) {
  FERRY_CHECK(ring.size() == z(window * row_bytes) && rows.size() >= z(n * row_bytes), "reference: window_store sizes");
  for (int64_t t = std::max<int64_t>(0, n - window); t < n; ++t)
    std::memcpy(&ring[z((p0 + t) % window * row_bytes)], &rows[z(t * row_bytes)], z(row_bytes));
}

Vec pooled_entry(const std::vector<Vec>& a, const std::vector<Vec>& s, int64_t j, const CompressorShape& c) {
  const int64_t D = c.dim, rd = 2 * static_cast<int64_t>(c.freqs->size());
  Vec e = rms_norm(pool_block(a, s, j, c.ratio, D, c.first), *c.norm, c.eps);
  apply_rope(e.data() + D - rd, *c.freqs, c.ratio * j, false);  // the position of the block's first token
  if (c.kind == RowKind::IndexerKey) hadamard(e.data(), D);
  return e;
}

Vec compressed_entry(const std::vector<Vec>& a, const std::vector<Vec>& s, int64_t j, const CompressorShape& c,
                     const MarginSink& sink) {
  Vec e = pooled_entry(a, s, j, c);
  round_kv_row(e.data(), c.dim, c.kind, c.kv, 2 * static_cast<int64_t>(c.freqs->size()), sink);
  return e;
}

void indexer_query(Vec& q, int64_t heads, const Vec& freqs, int64_t p, planner::KvType kv, const MarginSink& sink) {
  const int64_t hd = static_cast<int64_t>(q.size()) / heads, rd = 2 * static_cast<int64_t>(freqs.size());
  for (int64_t h = 0; h < heads; ++h) {
    double* qh = q.data() + h * hd;
    apply_rope(qh + hd - rd, freqs, p, false);
    hadamard(qh, hd);
    round_kv_row(qh, hd, RowKind::IndexerQuery, kv, rd, sink);
  }
}

void indexer_weights(Vec& w, int64_t head_dim) {
  const double heads = static_cast<double>(w.size());
  for (double& v : w) v /= std::sqrt(static_cast<double>(head_dim)) * std::sqrt(heads);
}

Vec indexer_scores(const Vec& q, const Vec& w, const std::vector<Vec>& keys, int64_t visible) {
  const int64_t heads = static_cast<int64_t>(w.size()), hd = static_cast<int64_t>(q.size()) / heads;
  FERRY_CHECK(static_cast<int64_t>(keys.size()) >= visible, "reference: fewer indexer keys than visible entries");
  Vec score(z(visible), 0.0);
  for (int64_t j = 0; j < visible; ++j)
    for (int64_t h = 0; h < heads; ++h) {
      double dot = 0;
      for (int64_t k = 0; k < hd; ++k) dot += q[z(h * hd + k)] * keys[z(j)][z(k)];
      score[z(j)] += w[z(h)] * std::max(dot, 0.0);
    }
  return score;
}

Vec attend(const Vec& q, const std::vector<const Vec*>& rows, const Vec& sinks, const Vec& freqs, int64_t p) {
  const int64_t nh = static_cast<int64_t>(sinks.size()), hd = static_cast<int64_t>(q.size()) / nh;
  const int64_t rd = 2 * static_cast<int64_t>(freqs.size());
  Vec o(z(nh * hd), 0.0);
  const double scale = 1 / std::sqrt(static_cast<double>(hd));
  for (int64_t h = 0; h < nh; ++h) {
    // Raw pointers in the loops: the sanitized test builds check every vector access, and these are most of
    // the reference's time at V4's shapes.
    const double* qh = q.data() + h * hd;
    double* oh = o.data() + h * hd;
    Vec s(rows.size());
    double mx = sinks[z(h)];
    for (size_t t = 0; t < rows.size(); ++t) {
      const double* row = rows[t]->data();
      double dot = 0;
      for (int64_t k = 0; k < hd; ++k) dot += qh[k] * row[k];
      s[t] = dot * scale;
      mx = std::max(mx, s[t]);
    }
    double den = std::exp(sinks[z(h)] - mx);  // the sink takes probability mass but adds no value
    for (size_t t = 0; t < rows.size(); ++t) {
      const double e = std::exp(s[t] - mx);
      const double* row = rows[t]->data();
      den += e;
      for (int64_t k = 0; k < hd; ++k) oh[k] += e * row[k];
    }
    for (int64_t k = 0; k < hd; ++k) oh[k] /= den;
    apply_rope(o.data() + h * hd + hd - rd, freqs, p, true);
  }
  return o;
}

Vec route_scores(const Vec& logits) {
  Vec sc(logits.size());
  for (size_t e = 0; e < logits.size(); ++e) sc[e] = std::sqrt(softplus(logits[e]));
  return sc;
}

std::vector<int64_t> route_by_score(const Vec& scores, const Vec& bias, int64_t k, const MarginSink& sink) {
  Vec biased(scores.size());  // the bias picks the experts but does not weight them
  for (size_t e = 0; e < scores.size(); ++e) biased[e] = scores[e] + bias[e];
  return select(top_k(biased, k), FragileKind::RouterTopk, sink);
}

Vec route_weights(const Vec& scores, const std::vector<int64_t>& ids, double scaling) {
  double sum = 0;
  for (int64_t id : ids) sum += scores[z(id)];
  Vec w;
  for (int64_t id : ids) w.push_back(scores[z(id)] / sum * scaling);
  return w;
}

std::vector<int64_t> select(TopK sel, FragileKind kind, const MarginSink& sink) {
  if (sel.margin && sink && sink(kind, *sel.margin)) sel.ids.back() = sel.runner_up;
  return std::move(sel.ids);
}

Vec gather_rows(const Vec& src, int64_t d, const std::vector<int32_t>& index, int64_t div) {
  Vec dst;
  for (int32_t i : index) dst.insert(dst.end(), src.begin() + i / div * d, src.begin() + (i / div + 1) * d);
  return dst;
}

Vec moe_combine(Vec y, const std::vector<Vec>& outputs, const Vec& weights) {
  for (size_t e = 0; e < outputs.size(); ++e)
    for (size_t i = 0; i < y.size(); ++i) y[i] += weights[e] * outputs[e][i];
  return y;
}

}  // namespace ferry::reference
