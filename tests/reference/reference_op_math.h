// The computations of docs/forward-semantics.md one operation at a time, in float64: the pieces the reference
// forward (reference_forward.cpp) is made of, and what tests/backend_ops checks each operation of a backend
// (runtime/backend/ops.h) against. Plain loops on dense double data; a position's vectors are flat arrays
// ([hc, d] streams, [heads, head_dim] queries) laid out as the runtime's ops lay them out.
//
// The elementary operations (rms_norm, RoPE, Hadamard, top-k) are in reference_ops.h, the KV storage and
// MXFP4 activation roundings in reference_rounding.h, the weight decoding in reference_weights.h.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/kv_cache.h"
#include "reference_ops.h"
#include "reference_rounding.h"
#include "reference_weights.h"

namespace ferry::reference {

// ---- embedding, mHC ----

// The hc streams of a token at the embedding: `copies` copies of table row `token`, [copies·d].
Vec embed_streams(const Matrix& table, int64_t token, int64_t copies);

// out[s] = a + b[s] for each of the streams of b ([streams·d]): the MTP layer's input streams.
Vec add_streams(const Vec& a, const Vec& b, int64_t streams);

struct HcShape {
  int64_t hc = 0, d = 0;
  int64_t sinkhorn_iters = 0;
  double hc_eps = 0, norm_eps = 0;
};

// The mHC weights of one token: pre [hc], post [hc], comb [hc·hc] with comb[i·hc + j] = C[i][j].
struct HcMix {
  Vec pre, post, comb;
};

// hc_pre: the token's mix weights from its streams H ([hc·d]), comb Sinkhorn-normalised, and the returned
// x = sum_s pre[s]·H[s].
Vec hc_pre(const Vec& H, const HcWeights& w, const HcShape& s, HcMix& mix);
// hc_post in place: H'[j] = post[j]·y + sum_i C[i][j]·H[i].
void hc_post(Vec& H, const Vec& y, const HcMix& mix, const HcShape& s);
// The head's reduction: y = sum_s (sigmoid(mix[s]·scale[0] + base[s]) + hc_eps)·H[s].
Vec hc_head(const Vec& H, const HcWeights& w, const HcShape& s);

// ---- linear layers ----

// x as an MXFP4 weight takes it: rounded per block of 32 to `bits` (24 or 16; 0: not rounded).
Vec mxfp4_input(Vec x, int bits);

// A SwiGLU feed-forward: w2 · (silu(min(w1·x, L)) ⊙ clamp(w3·x, −L, L)), no clamp when limit is 0. With
// `act_bits` (MXFP4 weights), w1/w3 take x and w2 takes the hidden vector rounded as mxfp4_input does.
// `hidden`, when given, receives w2's input before that rounding.
Vec expert_ffn(const ExpertWeights& e, const Vec& x, double limit, int act_bits = 0, Vec* hidden = nullptr);

// ---- KV rows, compressors, indexer, attention ----

// KvWindowStore: the last min(n, window) of the chunk's n rows ([n, row_bytes]) into the ring, the row of
// position p at slot p % window.
void window_store(std::vector<uint8_t>& ring, const std::vector<uint8_t>& rows, int64_t n, int64_t p0, int64_t window,
                  int64_t row_bytes);

// What a compressor stores and how: its entries are `dim` wide, normalised by `norm`, rotated with `freqs`
// (the last 2·freqs.size() dims) and rounded as a row of `kind` for the KV type.
struct CompressorShape {
  int64_t ratio = 0, dim = 0;
  const Vec* norm = nullptr;
  double eps = 0;
  const Vec* freqs = nullptr;
  RowKind kind = RowKind::Main;
  planner::KvType kv = planner::KvType::FP8;
  int64_t first = 0;  // the position of a[0] and s[0]
};

// Compressed entry j before its storage rounding, from the values a and scores s (ape included) of positions
// first, first + 1, … (those of block j and, for ratio 4, block j − 1): the block's softmax pooling per channel (ratio
// 4 overlaps the previous block through the first half of the channels), then norm, RoPE at position ratio·j, Hadamard
// for an indexer key.
Vec pooled_entry(const std::vector<Vec>& a, const std::vector<Vec>& s, int64_t j, const CompressorShape& c);
// The same as stored: rounded as a row of c.kind for c.kv.
Vec compressed_entry(const std::vector<Vec>& a, const std::vector<Vec>& s, int64_t j, const CompressorShape& c,
                     const MarginSink& sink);

// The indexer query of position p in place ([heads·head_dim]): each head rotated on its last 2·freqs.size()
// dims, Hadamard-transformed and rounded as the KV type's indexer query.
void indexer_query(Vec& q, int64_t heads, const Vec& freqs, int64_t p, planner::KvType kv, const MarginSink& sink);
// The head weights' scale 1/sqrt(head_dim·heads), in place.
void indexer_weights(Vec& w, int64_t head_dim);
// score_j = sum_h w[h]·max(0, q[h]·key_j) for j < visible.
Vec indexer_scores(const Vec& q, const Vec& w, const std::vector<Vec>& keys, int64_t visible);

// One token's attention output [heads·hd]: per head, softmax over q[h]·row/sqrt(hd) of `rows` with the sink's
// logit in the denominator only, the rows weighted by it, then the inverse RoPE at position p.
Vec attend(const Vec& q, const std::vector<const Vec*>& rows, const Vec& sinks, const Vec& freqs, int64_t p);

// ---- MoE ----

// sqrt(softplus(l)) of every gate logit.
Vec route_scores(const Vec& logits);
// The k best of score + bias (equal: lower id first), the cut reported to the sink as a RouterTopk decision.
std::vector<int64_t> route_by_score(const Vec& scores, const Vec& bias, int64_t k, const MarginSink& sink);
// w_i = scores[ids_i] / sum of the chosen scores · scaling.
Vec route_weights(const Vec& scores, const std::vector<int64_t>& ids, double scaling);

// A top-k selection, taken the other way when the sink says so: the runner-up replaces the last selected.
std::vector<int64_t> select(TopK sel, FragileKind kind, const MarginSink& sink);

// dst[i] = src row index[i] / div, rows of width d: an expert's input rows by their (token·k + choice).
Vec gather_rows(const Vec& src, int64_t d, const std::vector<int32_t>& index, int64_t div);

// y + sum_i weights[i]·outputs[i]: a token's routed experts' outputs added to its shared expert's.
Vec moe_combine(Vec y, const std::vector<Vec>& outputs, const Vec& weights);

}  // namespace ferry::reference
