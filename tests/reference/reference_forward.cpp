// The float64 reference forward. Deliberately simple: every weight dequantized to a dense double matrix,
// every position computed in order with full per-layer history, no tiles, no chunks, no threads.
#include "reference_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numbers>
#include <numeric>
#include <string>

#include "planner/error.h"
#include "planner/model_spec.h"
#include "reference_rounding.h"
#include "runtime/checkpoint.h"
#include "runtime/dtype_codec.h"

namespace ferry::reference {

namespace {

using planner::DType;
using planner::KvType;
using Vec = std::vector<double>;

struct Mat {
  int64_t rows = 0, cols = 0;
  Vec w;
  Vec operator*(const Vec& x) const {
    Vec y(static_cast<size_t>(rows), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += w[static_cast<size_t>(r * cols + c)] * x[static_cast<size_t>(c)];
      y[static_cast<size_t>(r)] = s;
    }
    return y;
  }
};

// Dequantizes tensors from the checkpoint by their stored dtype (FP8 + 128x128 scales, packed FP4 + per-32
// scales, BF16, F32).
class Loader {
 public:
  explicit Loader(const std::filesystem::path& dir) : ck_(runtime::Checkpoint::open(dir)) {}

  Mat mat(const std::string& name) {
    const auto& t = info(name + ".weight");
    FERRY_CHECK(t.shape.size() == 2, name + ": not a matrix");
    Mat m;
    m.rows = t.shape[0];
    const auto raw = ck_.bytes(name + ".weight");
    const auto* b = reinterpret_cast<const uint8_t*>(raw.data());
    if (t.dtype == DType::I8) {  // packed FP4: element 2k in the low nibble
      m.cols = t.shape[1] * 2;
      const auto s = ck_.bytes(name + ".scale");
      const auto* sc = reinterpret_cast<const uint8_t*>(s.data());
      m.w.resize(static_cast<size_t>(m.rows * m.cols));
      for (int64_t r = 0; r < m.rows; ++r)
        for (int64_t c = 0; c < m.cols; ++c) {
          const uint8_t byte = b[r * m.cols / 2 + c / 2];
          const uint8_t code = c % 2 ? runtime::fp4_high(byte) : runtime::fp4_low(byte);
          m.w[static_cast<size_t>(r * m.cols + c)] =
              runtime::e2m1_to_float(code) * runtime::e8m0_to_float(sc[r * (m.cols / 32) + c / 32]);
        }
      return m;
    }
    m.cols = t.shape[1];
    m.w.resize(static_cast<size_t>(m.rows * m.cols));
    if (t.dtype == DType::F8_E4M3) {
      const auto s = ck_.bytes(name + ".scale");
      const auto* sc = reinterpret_cast<const uint8_t*>(s.data());
      const int64_t sc_cols = (m.cols + 127) / 128;
      for (int64_t r = 0; r < m.rows; ++r)
        for (int64_t c = 0; c < m.cols; ++c)
          m.w[static_cast<size_t>(r * m.cols + c)] = static_cast<double>(runtime::e4m3_to_float(b[r * m.cols + c])) *
                                                     runtime::e8m0_to_float(sc[(r / 128) * sc_cols + c / 128]);
      return m;
    }
    m.w = floats_of(name + ".weight");
    return m;
  }

  Vec vec(const std::string& name) { return floats_of(name); }

  std::vector<int64_t> ints(const std::string& name) {
    const auto& t = info(name);
    FERRY_CHECK(t.dtype == DType::I64, name + ": expected I64");
    const auto raw = ck_.bytes(name);
    std::vector<int64_t> v(raw.size() / 8);
    std::memcpy(v.data(), raw.data(), raw.size());
    return v;
  }

 private:
  const planner::SafetensorsTensor& info(const std::string& name) {
    FERRY_CHECK(ck_.has(name), "reference: checkpoint is missing tensor " + name);
    return ck_.info(name);
  }
  Vec floats_of(const std::string& name) {
    const auto& t = info(name);
    const auto raw = ck_.bytes(name);
    Vec v;
    if (t.dtype == DType::BF16) {
      for (size_t i = 0; i < raw.size() / 2; ++i) {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        v.push_back(runtime::bf16_to_float(h));
      }
    } else {
      FERRY_CHECK(t.dtype == DType::F32, name + ": expected BF16 or F32");
      for (size_t i = 0; i < raw.size() / 4; ++i) {
        float f;
        std::memcpy(&f, raw.data() + 4 * i, 4);
        v.push_back(f);
      }
    }
    return v;
  }
  runtime::Checkpoint ck_;
};

struct Compressor {
  Mat wkv, wgate;
  Vec ape, norm;
};
struct Expert {
  Mat w1, w2, w3;
};
struct Hc {
  Vec fn, base, scale;
};
struct Layer {
  int64_t id = 0, ratio = 0;
  bool hash = false;
  Hc hc_attn, hc_ffn, hc_head;
  Vec attn_norm, ffn_norm, q_norm, kv_norm, sink, gate_bias, enorm, hnorm, norm;
  Mat wq_a, wq_b, wkv, wo_a, wo_b, iwq_b, iweights, gate, e_proj, h_proj;
  Compressor comp, icomp;
  std::vector<int64_t> tid2eid;
  std::vector<Expert> experts;
  Expert shared;
};

// Per-layer history: every stored row (rounded), the compressed entries, and the compressors' open blocks.
struct Block {
  std::vector<Vec> a, s;  // projections of the tokens of the current and previous block
};
struct LayerState {
  std::vector<Vec> window, compressed, keys;
  std::vector<Vec> comp_a, comp_s, icomp_a, icomp_s;  // per position
};

class Reference {
 public:
  Reference(const std::filesystem::path& dir, const ReferenceOptions& o)
      : c_(planner::load_model_spec(dir.string()).config), o_(o), ld_(dir) {
    embed_ = ld_.mat("embed");
    head_ = ld_.mat("head");
    norm_ = ld_.vec("norm.weight");
    hc_head_ = hc("", "head");
    for (int64_t i = 0; i < c_.num_hidden_layers; ++i) layers_.push_back(layer(i));
    if (o.mtp && c_.num_nextn_predict_layers > 0) layers_.push_back(layer(c_.num_hidden_layers));
    state_.resize(layers_.size());
  }

  ReferenceOutput run(const std::vector<int32_t>& tokens) {
    ReferenceOutput out;
    out.vocab = c_.vocab_size;
    const int64_t n = static_cast<int64_t>(tokens.size()), hc = c_.hc_mult, d = c_.hidden_size;
    for (int32_t t : tokens) FERRY_CHECK(t >= 0 && t < c_.vocab_size, "reference: token id out of range");
    std::vector<std::vector<Vec>> finals;
    for (int64_t p = 0; p < n; ++p) {
      std::vector<Vec> H(static_cast<size_t>(hc), row(embed_, tokens[static_cast<size_t>(p)]));
      for (int64_t l = 0; l < c_.num_hidden_layers; ++l) block(static_cast<size_t>(l), H, p, tokens[static_cast<size_t>(p)], out);
      const Vec lg = logits(H, hc_head_, norm_);
      out.logits.insert(out.logits.end(), lg.begin(), lg.end());
      finals.push_back(H);
    }
    if (o_.mtp && c_.num_nextn_predict_layers > 0) {
      const Layer& m = layers_.back();
      for (int64_t p = 0; p + 1 < n; ++p) {
        const int32_t next = tokens[static_cast<size_t>(p + 1)];
        const Vec e = m.e_proj * rms(row(embed_, next), m.enorm);
        std::vector<Vec> H(static_cast<size_t>(hc));
        for (int64_t s = 0; s < hc; ++s) {
          const Vec h = m.h_proj * rms(finals[static_cast<size_t>(p)][static_cast<size_t>(s)], m.hnorm);
          H[static_cast<size_t>(s)].resize(static_cast<size_t>(d));
          for (int64_t k = 0; k < d; ++k) H[static_cast<size_t>(s)][static_cast<size_t>(k)] = e[static_cast<size_t>(k)] + h[static_cast<size_t>(k)];
        }
        block(layers_.size() - 1, H, p, next, out);
        const Vec lg = logits(H, m.hc_head, m.norm);
        out.mtp_logits.insert(out.mtp_logits.end(), lg.begin(), lg.end());
      }
    }
    return out;
  }

 private:
  static size_t z(int64_t v) { return static_cast<size_t>(v); }

  Hc hc(const std::string& p, const std::string& site) {
    return {ld_.vec(p + "hc_" + site + "_fn"), ld_.vec(p + "hc_" + site + "_base"), ld_.vec(p + "hc_" + site + "_scale")};
  }
  Compressor compressor(const std::string& p) {
    return {ld_.mat(p + "wkv"), ld_.mat(p + "wgate"), ld_.vec(p + "ape"), ld_.vec(p + "norm.weight")};
  }

  Layer layer(int64_t i) {
    Layer L;
    L.id = i;
    L.ratio = c_.compress_ratio(i);
    const bool mtp = c_.is_mtp_layer(i);
    L.hash = !mtp && i < c_.num_hash_layers;
    const std::string p = mtp ? "mtp." + std::to_string(i - c_.num_hidden_layers) + "." : "layers." + std::to_string(i) + ".";
    L.hc_attn = hc(p, "attn");
    L.hc_ffn = hc(p, "ffn");
    L.attn_norm = ld_.vec(p + "attn_norm.weight");
    L.ffn_norm = ld_.vec(p + "ffn_norm.weight");
    L.wq_a = ld_.mat(p + "attn.wq_a");
    L.wq_b = ld_.mat(p + "attn.wq_b");
    L.wkv = ld_.mat(p + "attn.wkv");
    L.wo_a = ld_.mat(p + "attn.wo_a");
    L.wo_b = ld_.mat(p + "attn.wo_b");
    L.q_norm = ld_.vec(p + "attn.q_norm.weight");
    L.kv_norm = ld_.vec(p + "attn.kv_norm.weight");
    L.sink = ld_.vec(p + "attn.attn_sink");
    if (L.ratio > 0) L.comp = compressor(p + "attn.compressor.");
    if (L.ratio == 4) {
      L.icomp = compressor(p + "attn.indexer.compressor.");
      L.iwq_b = ld_.mat(p + "attn.indexer.wq_b");
      L.iweights = ld_.mat(p + "attn.indexer.weights_proj");
    }
    L.gate = ld_.mat(p + "ffn.gate");
    if (L.hash) L.tid2eid = ld_.ints(p + "ffn.gate.tid2eid");
    else L.gate_bias = ld_.vec(p + "ffn.gate.bias");
    for (int64_t e = 0; e < c_.n_routed_experts; ++e) {
      const std::string x = p + "ffn.experts." + std::to_string(e) + ".";
      L.experts.push_back({ld_.mat(x + "w1"), ld_.mat(x + "w2"), ld_.mat(x + "w3")});
    }
    L.shared = {ld_.mat(p + "ffn.shared_experts.w1"), ld_.mat(p + "ffn.shared_experts.w2"), ld_.mat(p + "ffn.shared_experts.w3")};
    if (mtp) {
      L.e_proj = ld_.mat(p + "e_proj");
      L.h_proj = ld_.mat(p + "h_proj");
      L.enorm = ld_.vec(p + "enorm.weight");
      L.hnorm = ld_.vec(p + "hnorm.weight");
      L.norm = ld_.vec(p + "norm.weight");
      L.hc_head = hc(p, "head");
    }
    return L;
  }

  static Vec row(const Mat& m, int64_t r) { return Vec(m.w.begin() + r * m.cols, m.w.begin() + (r + 1) * m.cols); }

  Vec rms(const Vec& x, const Vec& w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double r = 1 / std::sqrt(ss / static_cast<double>(x.size()) + c_.rms_norm_eps);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = (w.empty() ? 1.0 : w[i]) * x[i] * r;
    return y;
  }

  // RoPE on v[off … off+rd) at `pos`; compressed layers use YaRN-corrected frequencies.
  void rope(double* v, int64_t pos, bool compressed, bool inverse) const {
    const int64_t rd = c_.qk_rope_head_dim;
    const double base = compressed ? c_.compress_rope_theta : c_.rope_theta;
    const double L = static_cast<double>(c_.rope_original_max_position);
    double low = 0, high = 0;
    if (compressed && L > 0) {
      auto corr = [&](double rot) { return rd * std::log(L / (rot * 2 * std::numbers::pi)) / (2 * std::log(base)); };
      low = std::max(std::floor(corr(c_.rope_beta_fast)), 0.0);
      high = std::min(std::ceil(corr(c_.rope_beta_slow)), static_cast<double>(rd - 1));
      if (low == high) high += 0.001;
    }
    for (int64_t i = 0; i < rd / 2; ++i) {
      double f = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rd));
      if (compressed && L > 0) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        f = f / c_.rope_factor * ramp + f * (1 - ramp);
      }
      const double ang = (inverse ? -1.0 : 1.0) * static_cast<double>(pos) * f;
      const double a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * std::cos(ang) - b * std::sin(ang);
      v[2 * i + 1] = a * std::sin(ang) + b * std::cos(ang);
    }
  }

  static void hadamard(double* v, int64_t n) {
    Vec out(z(n), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) out[z(i)] += (__builtin_popcountll(static_cast<uint64_t>(i & j)) % 2 ? -1.0 : 1.0) * v[j];
    for (int64_t i = 0; i < n; ++i) v[i] = out[z(i)] / std::sqrt(static_cast<double>(n));
  }

  MarginSink sink(int64_t pos, int64_t layer, ReferenceOutput& out) const {
    return [this, pos, layer, &out](FragileKind k, double m) {
      if (m < o_.fragile_margin) out.fragile.push_back({pos, layer, k, m});
    };
  }

  // The KV storage rounding of a finished row (main: hd dims with the rope dims last; indexer: 128 dims).
  void store_round(Vec& x, bool indexer, const MarginSink& s) const {
    const int64_t n = static_cast<int64_t>(x.size());
    switch (o_.kv_type) {
      case KvType::BF16:
        for (double& v : x) v = round_bf16(v, s);
        return;
      case KvType::Q8_0:
      case KvType::Q4_0:
        for (int64_t b = 0; b < n; b += 32) qdq_q_block(x.data() + b, std::min<int64_t>(32, n - b), o_.kv_type == KvType::Q4_0, s);
        return;
      case KvType::FP8:
        if (indexer) {
          for (int64_t b = 0; b < n; b += 32) qdq_fp4_block(x.data() + b, 32, s);
        } else {
          const int64_t nope = n - c_.qk_rope_head_dim;
          for (int64_t b = 0; b < nope; b += 64) qdq_fp8_block(x.data() + b, std::min<int64_t>(64, nope - b), s);
          for (int64_t i = nope; i < n; ++i) x[z(i)] = round_bf16(x[z(i)], s);
        }
        return;
    }
  }

  // Finishes the compressor block ending at p, if one does, and stores its entry.
  void compress(const Layer& L, const Compressor& cw, std::vector<Vec>& A, std::vector<Vec>& S, std::vector<Vec>& rows,
                const Vec& x, int64_t p, bool indexer, const MarginSink& s) {
    const int64_t r = L.ratio, D = indexer ? c_.index_head_dim : c_.head_dim;
    Vec a = cw.wkv * x, sc = cw.wgate * x;
    for (size_t k = 0; k < sc.size(); ++k) sc[k] += cw.ape[z((p % r) * static_cast<int64_t>(sc.size())) + k];
    A.push_back(a);
    S.push_back(sc);
    if ((p + 1) % r != 0) return;
    const int64_t j = (p + 1) / r - 1;
    Vec e(z(D));
    for (int64_t k = 0; k < D; ++k) {
      std::vector<std::pair<double, double>> cand;  // (score, value)
      if (r == 4) {
        if (j > 0)
          for (int64_t t = r * (j - 1); t < r * j; ++t) cand.push_back({S[z(t)][z(k)], A[z(t)][z(k)]});
        for (int64_t t = r * j; t < r * j + r; ++t) cand.push_back({S[z(t)][z(D + k)], A[z(t)][z(D + k)]});
      } else {
        for (int64_t t = r * j; t < r * j + r; ++t) cand.push_back({S[z(t)][z(k)], A[z(t)][z(k)]});
      }
      double mx = -INFINITY;
      for (auto& c : cand) mx = std::max(mx, c.first);
      double num = 0, den = 0;
      for (auto& c : cand) {
        num += std::exp(c.first - mx) * c.second;
        den += std::exp(c.first - mx);
      }
      e[z(k)] = num / den;
    }
    e = rms(e, cw.norm);
    rope(e.data() + D - c_.qk_rope_head_dim, r * j, true, false);
    if (indexer) hadamard(e.data(), D);
    store_round(e, indexer, s);
    rows.push_back(e);
  }

  // Top `k` of `score` (descending, equal scores: lower index first), with the cut's margin reported.
  std::vector<int64_t> topk(const Vec& score, int64_t k, FragileKind kind, const MarginSink& s) const {
    std::vector<int64_t> idx(score.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score[z(a)] > score[z(b)]; });
    if (k < static_cast<int64_t>(idx.size())) s(kind, topk_margin(score[z(idx[z(k - 1)])], score[z(idx[z(k)])]));
    idx.resize(z(std::min<int64_t>(k, static_cast<int64_t>(idx.size()))));
    return idx;
  }

  Vec attention(const Layer& L, LayerState& st, const Vec& x, int64_t p, const MarginSink& s) {
    const int64_t nh = c_.num_attention_heads, hd = c_.head_dim, rd = c_.qk_rope_head_dim, W = c_.sliding_window;
    const bool compressed = L.ratio > 0;
    const Vec qr = rms(L.wq_a * x, L.q_norm);
    Vec q = L.wq_b * qr;
    for (int64_t h = 0; h < nh; ++h) {
      Vec qh(q.begin() + h * hd, q.begin() + (h + 1) * hd);
      qh = rms(qh, {});
      rope(qh.data() + hd - rd, p, compressed, false);
      std::copy(qh.begin(), qh.end(), q.begin() + h * hd);
    }
    Vec kv = rms(L.wkv * x, L.kv_norm);
    rope(kv.data() + hd - rd, p, compressed, false);
    store_round(kv, false, s);
    st.window.push_back(kv);
    std::vector<const Vec*> rows;
    for (int64_t t = std::max<int64_t>(0, p - W + 1); t <= p; ++t) rows.push_back(&st.window[z(t)]);
    if (compressed) compress(L, L.comp, st.comp_a, st.comp_s, st.compressed, x, p, false, s);
    if (L.ratio == 4) {
      compress(L, L.icomp, st.icomp_a, st.icomp_s, st.keys, x, p, true, s);
      const int64_t ih = c_.index_n_heads, ihd = c_.index_head_dim, visible = (p + 1) / 4;
      Vec qi = L.iwq_b * qr;
      for (int64_t h = 0; h < ih; ++h) {
        double* v = qi.data() + h * ihd;
        rope(v + ihd - rd, p, true, false);
        hadamard(v, ihd);
        if (o_.kv_type == KvType::FP8)
          for (int64_t b = 0; b < ihd; b += 32) qdq_fp4_block(v + b, 32, s);
      }
      Vec w = L.iweights * x;
      for (double& v : w) v *= 1 / std::sqrt(static_cast<double>(ihd)) / std::sqrt(static_cast<double>(ih));
      Vec score(z(visible), 0.0);
      for (int64_t j = 0; j < visible; ++j)
        for (int64_t h = 0; h < ih; ++h) {
          double dot = 0;
          for (int64_t k = 0; k < ihd; ++k) dot += qi[z(h * ihd + k)] * st.keys[z(j)][z(k)];
          score[z(j)] += w[z(h)] * std::max(dot, 0.0);
        }
      for (int64_t j : topk(score, std::min(c_.index_topk, visible), FragileKind::IndexerTopk, s)) rows.push_back(&st.compressed[z(j)]);
    } else if (compressed) {
      for (int64_t j = 0; j < (p + 1) / L.ratio; ++j) rows.push_back(&st.compressed[z(j)]);
    }
    Vec o(z(nh * hd), 0.0);
    for (int64_t h = 0; h < nh; ++h) {
      Vec sc;
      double mx = L.sink[z(h)];
      for (const Vec* r : rows) {
        double dot = 0;
        for (int64_t k = 0; k < hd; ++k) dot += q[z(h * hd + k)] * (*r)[z(k)];
        sc.push_back(dot / std::sqrt(static_cast<double>(hd)));
        mx = std::max(mx, sc.back());
      }
      double den = std::exp(L.sink[z(h)] - mx);
      for (size_t i = 0; i < rows.size(); ++i) {
        const double e = std::exp(sc[i] - mx);
        den += e;
        for (int64_t k = 0; k < hd; ++k) o[z(h * hd + k)] += e * (*rows[i])[z(k)];
      }
      for (int64_t k = 0; k < hd; ++k) o[z(h * hd + k)] /= den;
      rope(o.data() + h * hd + hd - rd, p, compressed, true);
    }
    const int64_t G = c_.o_groups, ol = c_.o_lora_rank, gin = nh * hd / G;
    Vec zv(z(G * ol), 0.0);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t r = 0; r < ol; ++r) {
        double acc = 0;
        for (int64_t k = 0; k < gin; ++k) acc += L.wo_a.w[z((g * ol + r) * gin + k)] * o[z(g * gin + k)];
        zv[z(g * ol + r)] = acc;
      }
    return L.wo_b * zv;
  }

  Vec swiglu(const Expert& e, const Vec& x, double limit) const {
    Vec g = e.w1 * x, u = e.w3 * x;
    for (size_t k = 0; k < g.size(); ++k) {
      double gk = g[k], uk = u[k];
      if (limit > 0) {
        gk = std::min(gk, limit);
        uk = std::clamp(uk, -limit, limit);
      }
      g[k] = gk / (1 + std::exp(-gk)) * uk;
    }
    return e.w2 * g;
  }

  Vec moe(const Layer& L, const Vec& x, int32_t tok, const MarginSink& s) const {
    const int64_t E = c_.n_routed_experts, k = c_.num_experts_per_tok;
    const Vec logits = L.gate * x;
    Vec sc(z(E));
    for (int64_t e = 0; e < E; ++e) sc[z(e)] = std::sqrt(std::log1p(std::exp(logits[z(e)])));
    std::vector<int64_t> ids;
    if (L.hash) {
      for (int64_t i = 0; i < k; ++i) ids.push_back(L.tid2eid[z(tok * k + i)]);
    } else {
      Vec biased(z(E));
      for (int64_t e = 0; e < E; ++e) biased[z(e)] = sc[z(e)] + L.gate_bias[z(e)];
      ids = topk(biased, k, FragileKind::RouterTopk, s);
    }
    double sum = 0;
    for (int64_t id : ids) sum += sc[z(id)];
    Vec y = swiglu(L.shared, x, 0);
    for (int64_t id : ids) {
      const Vec ey = swiglu(L.experts[z(id)], x, c_.swiglu_limit);
      const double w = sc[z(id)] / sum * c_.routed_scaling_factor;
      for (size_t i = 0; i < y.size(); ++i) y[i] += w * ey[i];
    }
    return y;
  }

  // hc_pre: the mixed input and the (post, comb) of this site.
  Vec hc_pre(const std::vector<Vec>& H, const Hc& w, Vec& post, Vec& comb) const {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    Vec f;
    for (const Vec& h : H) f.insert(f.end(), h.begin(), h.end());
    double ss = 0;
    for (double v : f) ss += v * v;
    const double r = 1 / std::sqrt(ss / static_cast<double>(f.size()) + c_.rms_norm_eps);
    const int64_t rows = (2 + hc) * hc;
    Vec mix(z(rows));
    for (int64_t m = 0; m < rows; ++m) {
      double acc = 0;
      for (size_t i = 0; i < f.size(); ++i) acc += w.fn[z(m) * f.size() + i] * f[i];
      mix[z(m)] = acc * r;
    }
    auto sigmoid = [](double v) { return 1 / (1 + std::exp(-v)); };
    Vec pre(z(hc));
    post.assign(z(hc), 0);
    comb.assign(z(hc * hc), 0);
    for (int64_t s = 0; s < hc; ++s) {
      pre[z(s)] = sigmoid(mix[z(s)] * w.scale[0] + w.base[z(s)]) + c_.hc_eps;
      post[z(s)] = 2 * sigmoid(mix[z(hc + s)] * w.scale[1] + w.base[z(hc + s)]);
    }
    for (int64_t i = 0; i < hc; ++i) {
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < hc; ++j) mx = std::max(mx, mix[z(2 * hc + i * hc + j)] * w.scale[2] + w.base[z(2 * hc + i * hc + j)]);
      for (int64_t j = 0; j < hc; ++j)
        sum += comb[z(i * hc + j)] = std::exp(mix[z(2 * hc + i * hc + j)] * w.scale[2] + w.base[z(2 * hc + i * hc + j)] - mx);
      for (int64_t j = 0; j < hc; ++j) comb[z(i * hc + j)] = comb[z(i * hc + j)] / sum + c_.hc_eps;
    }
    auto cols = [&] {
      for (int64_t j = 0; j < hc; ++j) {
        double s = 0;
        for (int64_t i = 0; i < hc; ++i) s += comb[z(i * hc + j)];
        for (int64_t i = 0; i < hc; ++i) comb[z(i * hc + j)] /= s + c_.hc_eps;
      }
    };
    cols();
    for (int64_t it = 1; it < c_.hc_sinkhorn_iters; ++it) {
      for (int64_t i = 0; i < hc; ++i) {
        double s = 0;
        for (int64_t j = 0; j < hc; ++j) s += comb[z(i * hc + j)];
        for (int64_t j = 0; j < hc; ++j) comb[z(i * hc + j)] /= s + c_.hc_eps;
      }
      cols();
    }
    Vec x(z(d), 0.0);
    for (int64_t s = 0; s < hc; ++s)
      for (int64_t k = 0; k < d; ++k) x[z(k)] += pre[z(s)] * H[z(s)][z(k)];
    return x;
  }

  void hc_post(std::vector<Vec>& H, const Vec& y, const Vec& post, const Vec& comb) const {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    const std::vector<Vec> old = H;
    for (int64_t j = 0; j < hc; ++j)
      for (int64_t k = 0; k < d; ++k) {
        double acc = post[z(j)] * y[z(k)];
        for (int64_t i = 0; i < hc; ++i) acc += comb[z(i * hc + j)] * old[z(i)][z(k)];
        H[z(j)][z(k)] = acc;
      }
  }

  void block(size_t li, std::vector<Vec>& H, int64_t p, int32_t tok, ReferenceOutput& out) {
    const Layer& L = layers_[li];
    const MarginSink s = sink(p, L.id, out);
    Vec post, comb;
    Vec x = hc_pre(H, L.hc_attn, post, comb);
    hc_post(H, attention(L, state_[li], rms(x, L.attn_norm), p, s), post, comb);
    x = hc_pre(H, L.hc_ffn, post, comb);
    hc_post(H, moe(L, rms(x, L.ffn_norm), tok, s), post, comb);
  }

  Vec logits(const std::vector<Vec>& H, const Hc& w, const Vec& norm) const {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    Vec f;
    for (const Vec& h : H) f.insert(f.end(), h.begin(), h.end());
    double ss = 0;
    for (double v : f) ss += v * v;
    const double r = 1 / std::sqrt(ss / static_cast<double>(f.size()) + c_.rms_norm_eps);
    Vec y(z(d), 0.0);
    for (int64_t s = 0; s < hc; ++s) {
      double acc = 0;
      for (size_t i = 0; i < f.size(); ++i) acc += w.fn[z(s) * f.size() + i] * f[i];
      const double pre = 1 / (1 + std::exp(-(acc * r * w.scale[0] + w.base[z(s)]))) + c_.hc_eps;
      for (int64_t k = 0; k < d; ++k) y[z(k)] += pre * H[z(s)][z(k)];
    }
    return head_ * rms(y, norm);
  }

  planner::ModelConfig c_;
  ReferenceOptions o_;
  Loader ld_;
  Mat embed_, head_;
  Vec norm_;
  Hc hc_head_;
  std::vector<Layer> layers_;
  std::vector<LayerState> state_;
};

}  // namespace

ReferenceOutput reference_forward(const std::filesystem::path& model_dir, const std::vector<int32_t>& tokens,
                                  const ReferenceOptions& options) {
  Reference r(model_dir, options);
  return r.run(tokens);
}

}  // namespace ferry::reference
