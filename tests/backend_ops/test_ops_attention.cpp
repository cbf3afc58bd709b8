// Attention and the lightning indexer on every backend against the float64 reference, for every KV type:
// attention over the window (the chunk's rows and the ring's) and the compressed rows (selected, all, or
// none) with sinks and the output's inverse RoPE, beyond one key tile where V4's context reaches; the
// indexer's query processing, scores and top-k with its tie rule, over several key tiles. Stored rows are made
// by the backend's own KvEncode (tested in test_ops_kv.cpp) and the reference reads their rounded values.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include <tbb/task_arena.h>

#include "op_test_support.h"
#include "planner/memory.h"
#include "reference_op_math.h"

namespace ferry::runtime::ops_test {
namespace {

FERRY_OP_SUITE(AttentionOps);

// Encodes `rows` rows of x on the device (KvEncode); returns the bytes' buffer and sets x to the rounded values.
uint8_t* encode(DeviceMemory& m, const planner::KvRowLayout& l, std::vector<float>& x, int64_t rows) {
  float* xd = m.upload(x);
  uint8_t* bytes = m.zeros<uint8_t>(rows * l.bytes);
  m.run(ops::KvEncode{l, xd, rows, bytes});
  x = m.read(xd, rows * l.dims);
  return bytes;
}

// The per-thread tile scratch of the host's layout (planner::cpu_tile_layout), one slice per thread.
ops::TileScratch tile_scratch(DeviceMemory& m, const core::ModelConfig& c) {
  const planner::CpuTileLayout t = planner::cpu_tile_layout(c);
  const int64_t threads = tbb::this_task_arena::max_concurrency();
  return {m.zeros<float>(t.per_thread * threads), t.per_thread, threads, t.key_rows, t.scores};
}

struct AttentionCase {
  int64_t ratio, p0, n;
  std::vector<KvType> kv_types;
};

// Window only (SWA and MTP layers), CSA (ratio 4, the indexer's selection), HCA (all entries). V4-Flash's HCA
// case sits at position 140000: 1093 entries and the window are more than one key tile (1024 rows). Every KV
// type at the tiny shapes; at V4-Flash's, where the reference's cost grows with the rows, the default fp8 and,
// window only, every type.
std::vector<AttentionCase> attention_cases(const Shape& s) {
  const std::vector<KvType> all(planner::kKvTypesByFidelity.begin(), planner::kKvTypesByFidelity.end());
  if (s.c.hidden_size <= 1024) return {{0, 30, 5, all}, {4, 45, 4, all}, {s.hca_ratio, 70, 3, all}};
  return {{0, 200, 3, all}, {4, 2100, 2, {KvType::FP8}}, {s.hca_ratio, 140000, 1, {KvType::FP8}}};
}

// The inputs of one attention case, with the reference's view of them.
struct AttentionInputs {
  std::vector<float> q, sink, kv, history, comp;  // kv: the chunk's rows; history: positions p0 − W … p0 − 1
  std::vector<int32_t> sel, sel_count;
  int64_t entries = 0, topk = 1;
};

AttentionInputs attention_inputs(const Shape& s, const AttentionCase& k, std::mt19937_64& rng) {
  const int64_t nh = s.c.num_attention_heads, hd = s.c.head_dim, W = s.c.sliding_window;
  AttentionInputs in;
  in.q = normal(k.n * nh * hd, 1.5, rng);
  in.sink = normal(nh, 1.0, rng);
  in.kv = normal(k.n * hd, 1.0, rng);
  in.history = normal(W * hd, 1.0, rng);
  in.entries = k.ratio > 0 ? (k.p0 + k.n) / k.ratio : 0;
  in.comp = normal(std::max<int64_t>(in.entries, 1) * hd, 1.0, rng);
  if (k.ratio == 4) {  // a random selection of the visible entries; unused slots hold −1
    in.topk = s.c.index_topk;
    in.sel.assign(sz(k.n * in.topk), -1);
    for (int64_t t = 0; t < k.n; ++t) {
      std::vector<int32_t> all((k.p0 + t + 1) / 4);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      const int64_t count = std::min<int64_t>(in.topk, static_cast<int64_t>(all.size()) - t % 2);
      std::copy_n(all.begin(), count, in.sel.begin() + t * in.topk);
      in.sel_count.push_back(static_cast<int32_t>(count));
    }
  } else {
    in.sel = {-1};
    in.sel_count = {0};
  }
  return in;
}

// The reference's output of token t: its window rows (ring or chunk) and compressed rows, attended.
Vec attention_reference(const Shape& s, const AttentionCase& k, const AttentionInputs& in, const Vec& freqs,
                        int64_t t) {
  const int64_t nh = s.c.num_attention_heads, hd = s.c.head_dim, W = s.c.sliding_window, p = k.p0 + t;
  std::vector<Vec> rows;
  for (int64_t pos = std::max<int64_t>(0, p - W + 1); pos <= p; ++pos)
    rows.push_back(pos >= k.p0 ? slice(in.kv, pos - k.p0, hd) : slice(in.history, pos - (k.p0 - W), hd));
  if (k.ratio == 4)
    for (int64_t i = 0; i < in.sel_count[sz(t)]; ++i) rows.push_back(slice(in.comp, in.sel[sz(t * in.topk + i)], hd));
  else if (k.ratio > 0)
    for (int64_t j = 0; j < (p + 1) / k.ratio; ++j) rows.push_back(slice(in.comp, j, hd));
  std::vector<const Vec*> ptrs;
  for (const Vec& r : rows) ptrs.push_back(&r);
  return reference::attend(slice(in.q, t, nh * hd), ptrs, to_double(in.sink), freqs, p);
}

// Online softmax over key tiles in float32, within the backend's attention tolerance (op_test_support.h).
TYPED_TEST(AttentionOps, Attention) {
  for (const Shape& s : shapes())
    for (const AttentionCase& k : attention_cases(s))
      for (const KvType t : k.kv_types) {
        const int64_t nh = s.c.num_attention_heads, hd = s.c.head_dim, W = s.c.sliding_window;
        const planner::KvRowLayout l = planner::KvRowLayout::main_row(s.c, t);
        std::mt19937_64 rng(31);
        AttentionInputs in = attention_inputs(s, k, rng);
        const Vec freqs = reference::rope_frequencies(s.c, k.ratio > 0);
        const auto out = this->run(Kind::Attention, [&](DeviceMemory& m) {
          // The ring holds positions p0 − W … p0 − 1 at their slots; the chunk's own rows are rounded floats.
          std::vector<float> history = in.history, kv = in.kv, comp = in.comp;
          const std::vector<uint8_t> hist_bytes = m.read(encode(m, l, history, W), W * l.bytes);
          std::vector<uint8_t> ring(sz(W * l.bytes));
          reference::window_store(ring, hist_bytes, W, k.p0 - W, W, l.bytes);
          encode(m, l, kv, k.n);
          uint8_t* comp_rows = encode(m, l, comp, std::max<int64_t>(in.entries, 1));
          ops::Attention op{m.upload(in.q),
                            m.upload(kv),
                            m.upload(ring),
                            comp_rows,
                            l,
                            m.upload(in.sel),
                            m.upload(in.sel_count),
                            in.topk,
                            k.n,
                            k.p0,
                            nh,
                            hd,
                            W,
                            k.ratio,
                            m.upload(in.sink),
                            rope_table(freqs),
                            tile_scratch(m, s.c),
                            m.zeros<float>(k.n * nh * hd)};
          m.run(op);
          return Outputs()
              .add("history", history)
              .add("kv", kv)
              .add("comp", comp)
              .add("o", m.read(op.o, k.n * nh * hd));
        });
        if (!out) return;
        in.history = out->f32("history");  // what the rows store
        in.kv = out->f32("kv");
        in.comp = out->f32("comp");
        double row_max = 0;
        for (const auto* v : {&in.kv, &in.history, &in.comp})
          for (float x : *v) row_max = std::max(row_max, std::fabs(double(x)));
        Vec ref;
        for (int64_t tk = 0; tk < k.n; ++tk) {
          const Vec o = attention_reference(s, k, in, freqs, tk);
          ref.insert(ref.end(), o.begin(), o.end());
        }
        expect_near(out->f32("o"), ref, {TypeParam::kTol.attention * row_max},
                    s.name + " " + std::string(planner::kv_type_name(t)) + " attention ratio " +
                        std::to_string(k.ratio) + " at " + std::to_string(k.p0));
      }
}

struct IndexerCase {
  int64_t p0, n;
  int64_t classes;  // > 0: every key is one of this many rows (key j = row j % classes), for exact ties
};

// Tokens that score (more visible entries than top-k) and, at the tiny shapes, tokens that take every entry;
// one token alone (the runtime's single-token path) and several; keys over several tiles; exact ties.
std::vector<IndexerCase> indexer_cases(const Shape& s) {
  if (s.c.hidden_size <= 1024) return {{40, 6, 0}, {20, 4, 0}, {40, 6, 5}, {43, 1, 0}};
  return {{2100, 2, 0}, {5000, 1, 0}, {2100, 2, 7}};
}

// The queries come back rotated, Hadamard-transformed and rounded as the KV type says (from the exact value, a
// float32 rotation and butterflies: 1e-5 of the head's largest value may flip a rounding), the head weights
// scaled (two float roundings: 1e-6 relative).
void check_indexer_inputs(const Shape& s, const IndexerCase& k, KvType t, const std::vector<float>& q,
                          const std::vector<float>& w, const Outputs& out, const Vec& freqs, const std::string& what) {
  const int64_t ih = s.c.index_n_heads, hd = s.c.index_head_dim;
  Vec ref_q, exact_q, noise_q, ref_w, tol_w;
  for (int64_t tk = 0; tk < k.n; ++tk) {
    Vec qr = slice(q, tk, ih * hd), qe = qr, wr = slice(w, tk, ih);
    reference::indexer_query(qr, ih, freqs, k.p0 + tk, t, {});
    reference::indexer_query(qe, ih, freqs, k.p0 + tk, KvType::BF16, {});  // bf16 leaves the query unrounded
    reference::indexer_weights(wr, hd);
    for (int64_t h = 0; h < ih; ++h) {
      double amax = 0;
      for (int64_t i = 0; i < hd; ++i) amax = std::max(amax, std::fabs(qe[sz(h * hd + i)]));
      noise_q.insert(noise_q.end(), sz(hd), 1e-5 * amax);
    }
    ref_q.insert(ref_q.end(), qr.begin(), qr.end());
    exact_q.insert(exact_q.end(), qe.begin(), qe.end());
    for (double v : wr) ref_w.push_back(v), tol_w.push_back(1e-6 * std::fabs(v));
  }
  expect_rounded(out.f32("q"), ref_q, exact_q, noise_q, 2, what + " query");
  expect_near(out.f32("w"), ref_w, tol_w, what + " head weights");
}

// The choice against the scores the reference computes from the op's own queries, weights and keys: a score
// sums 64 heads' 128-term float products, within 1e-5 of the largest score's magnitude. With tied keys, a cut
// that splits a class of them must have been decided by the tie rule.
void check_indexer_choice(const Shape& s, const IndexerCase& k, const Outputs& out, const std::string& what) {
  const int64_t ih = s.c.index_n_heads, hd = s.c.index_head_dim, topk = s.c.index_topk;
  const std::vector<float> q = out.f32("q"), w = out.f32("w"), keys = out.f32("keys");
  const std::vector<int32_t> sel = out.i32("sel"), count = out.i32("sel_count");
  std::vector<Vec> key_rows;
  for (int64_t j = 0; j < (k.p0 + k.n) / 4; ++j) key_rows.push_back(slice(keys, j, hd));
  int64_t split_classes = 0;
  for (int64_t tk = 0; tk < k.n; ++tk) {
    const int64_t visible = (k.p0 + tk + 1) / 4;
    const Vec score = reference::indexer_scores(slice(q, tk, ih * hd), slice(w, tk, ih), key_rows, visible);
    double smax = 0;
    for (double v : score) smax = std::max(smax, std::fabs(v));
    const std::vector<int32_t> chosen(sel.begin() + tk * topk, sel.begin() + tk * topk + count[sz(tk)]);
    std::vector<int64_t> tie_class(score.size(), -1);
    for (int64_t j = 0; j < visible && k.classes > 0; ++j) tie_class[sz(j)] = j % k.classes;
    check_selection(chosen, score, topk, 1e-5 * smax, tie_class, what + " token " + std::to_string(tk));
    for (int64_t c = 0; c < k.classes; ++c) {
      int64_t in = 0, members = 0;
      for (int64_t j = c; j < visible; j += k.classes, ++members)
        in += std::count(chosen.begin(), chosen.end(), static_cast<int32_t>(j));
      split_classes += in > 0 && in < members;
    }
  }
  if (k.classes > 0) {
    EXPECT_GT(split_classes, 0) << what << ": no tie at the cut";
  }
}

TYPED_TEST(AttentionOps, IndexerSelect) {
  for (const Shape& s : shapes())
    for (const IndexerCase& k : indexer_cases(s))
      for (const KvType t : planner::kKvTypesByFidelity) {
        const int64_t ih = s.c.index_n_heads, hd = s.c.index_head_dim, topk = s.c.index_topk;
        const int64_t entries = (k.p0 + k.n) / 4, tile = s.c.hidden_size <= 1024 ? 5 : 300;
        const planner::KvRowLayout l = planner::KvRowLayout::indexer_row(s.c, t);
        std::mt19937_64 rng(32);
        const std::vector<float> q = normal(k.n * ih * hd, 1.0, rng), w = normal(k.n * ih, 1.0, rng);
        const std::vector<float> distinct = normal(entries * hd, 1.0, rng);
        std::vector<float> keys = distinct;
        for (int64_t j = 0; j < entries && k.classes > 0; ++j)
          std::copy_n(distinct.begin() + j % k.classes * hd, hd, keys.begin() + j * hd);
        const Vec freqs = reference::rope_frequencies(s.c, true);
        const auto out = this->run(Kind::IndexerSelect, [&](DeviceMemory& m) {
          std::vector<float> rounded_keys = keys;
          uint8_t* key_rows = encode(m, l, rounded_keys, entries);
          ops::IndexerSelect op{m.upload(q),
                                m.upload(w),
                                key_rows,
                                l,
                                t,
                                k.n,
                                k.p0,
                                ih,
                                hd,
                                topk,
                                rope_table(freqs),
                                m.zeros<float>(tile * hd),
                                tile,
                                tile_scratch(m, s.c),
                                m.upload(std::vector<int32_t>(sz(k.n * topk), -1)),
                                m.zeros<int32_t>(k.n)};
          m.run(op);
          return Outputs()
              .add("keys", rounded_keys)
              .add("q", m.read(op.q, k.n * ih * hd))
              .add("w", m.read(op.w, k.n * ih))
              .add("sel", m.read(op.sel, k.n * topk))
              .add("sel_count", m.read(op.sel_count, k.n));
        });
        if (!out) return;
        const std::string what = s.name + " " + std::string(planner::kv_type_name(t)) + " indexer at " +
                                 std::to_string(k.p0) + (k.classes ? " with ties" : "");
        check_indexer_inputs(s, k, t, q, w, *out, freqs, what);
        check_indexer_choice(s, k, *out, what);
      }
}

}  // namespace
}  // namespace ferry::runtime::ops_test
