// The operations of the V4 forward pass, as data: each op is a plain struct of pointers into the memory of the
// backend that runs it, sizes and parameters, and the forward pass hands it to that backend
// (Backend::run). Ops are values rather than closures so that a device can queue them on its own stream (the
// simulated GPU), check what it supports before anything runs (Backend::supports: a plan that needs an op a
// backend lacks fails at bind time), and so that one typed test suite can run every op on every backend against
// the float64 reference (tests/backend_ops). Like ggml's op list, one entry per kind of computation; the
// semantics of each are docs/forward-semantics.md's, and the host implementations are runtime/backend/host_ops*.
//
// Rules for every op:
//  - Pointers name memory of the backend that runs the op (the host, or the device), except the chunk's token
//    ids and the RoPE frequency table, which are host memory the op reads (a device copies what it needs). On a
//    host-addressable device (the host, the simulated GPU) the forward pass also lets ops write the caller's
//    logits and lets host ops read and write the layer's device buffers (routed experts computed by the CPU);
//    a device that is not host-addressable needs copies there, which the binding checks for.
//  - Everything an op points to stays valid and unchanged by others until the op's ComputeEvent completes.
//  - Rows are contiguous unless a stride is given; strides count elements, not bytes.
//  - fp32 values; weights in their stored encoding (core::WeightView), never dequantized as a whole.
#pragma once

#include <cstdint>
#include <string_view>
#include <variant>

#include "planner/core/weight_view.h"
#include "planner/kv_cache.h"

namespace ferry::runtime::ops {

// A RoPE frequency table (host memory): pairs (2i, 2i+1) of the last rope dims turn by pos · freqs[i].
struct RopeFreqs {
  const double* freqs = nullptr;
  int64_t count = 0;  // rope dims / 2
};

// Per-thread scratch of the tile loops (attention key tiles, indexer score tiles): `threads` slices of
// `per_thread` floats, a thread using the slice of its task-arena slot. A slice holds one key tile's decoded rows
// (`key_rows` floats), then the tile's scores (`scores` floats), then the attention's per-head accumulators,
// maxima and sums (heads·head_dim + 2·heads): planner::cpu_tile_scratch_floats gives per_thread.
struct TileScratch {
  float* data = nullptr;
  int64_t per_thread = 0, threads = 0;
  int64_t key_rows = 0, scores = 0;
};

// ---- embedding, norms, RoPE, mHC ----

// out[t, s, :] = decoded table[tokens[t], :] for every stream s < copies (out is [n, copies, cols]).
struct Embed {
  core::WeightView table;           // BF16 [vocab, d]
  const int32_t* tokens = nullptr;  // host memory
  int64_t n = 0;
  int64_t copies = 1;
  float* out = nullptr;
};

// out[r] = weight ⊙ x[r] / sqrt(mean(x[r]²) + eps) for r < rows; weight may be null (none). out may alias x.
struct RmsNorm {
  const float* x = nullptr;
  int64_t rows = 0, dim = 0;
  int64_t x_stride = 0, out_stride = 0;  // 0: dim
  const float* weight = nullptr;
  double eps = 0;
  float* out = nullptr;
};

// Rotates the rope part of every head of every token in place: x[t, h, offset …] at position p0 + t
// (backwards when `inverse`). x is [n, heads, head_dim]; the rope part is head_dim − offset = 2·freqs.count dims.
struct Rope {
  float* x = nullptr;
  int64_t n = 0, heads = 1, head_dim = 0, offset = 0;
  int64_t p0 = 0;
  RopeFreqs freqs;
  bool inverse = false;
};

// mHC pre-mix of every token: mix[t] = (pre[hc], post[hc], comb[hc·hc]) from H[t] ([hc, d]) with Sinkhorn
// normalisation of comb, and x[t] = sum_s pre[s]·H[t, s].
struct HcPre {
  const float* H = nullptr;  // [n, hc, d]
  int64_t n = 0, hc = 0, d = 0;
  const float* fn = nullptr;     // [(2+hc)·hc, hc·d]
  const float* scale = nullptr;  // [3]
  const float* base = nullptr;   // [(2+hc)·hc]
  int64_t sinkhorn_iters = 0;
  double hc_eps = 0, norm_eps = 0;
  float* mix = nullptr;  // [n, 2·hc + hc²]
  float* x = nullptr;    // [n, d]
};

// mHC post-mix in place: H[t, j] = post[j]·y[t] + sum_i comb[i, j]·H[t, i].
struct HcPost {
  const float* y = nullptr;    // [n, d]
  const float* mix = nullptr;  // [n, 2·hc + hc²], from HcPre
  int64_t n = 0, hc = 0, d = 0;
  float* H = nullptr;  // [n, hc, d]
};

// The head's reduction of the streams: y[t] = sum_s (sigmoid(m_s·scale + base_s) + hc_eps)·H[t, s].
struct HcHead {
  const float* H = nullptr;  // [n, hc, d]
  int64_t n = 0, hc = 0, d = 0;
  const float* fn = nullptr;     // [hc, hc·d]
  const float* scale = nullptr;  // [1]
  const float* base = nullptr;   // [hc]
  double hc_eps = 0, norm_eps = 0;
  float* y = nullptr;  // [n, d]
};

// ---- linear layers ----

// y[t·y_stride + r] = sum_k W[r, k]·x[t·x_stride + k], fp32 accumulation; MXFP4 weights take x rounded per
// token to `bits` (mxfp4_activation.h).
struct Linear {
  core::WeightView w;
  const float* x = nullptr;
  int64_t n = 0, x_stride = 0;  // 0: w.cols
  float* y = nullptr;
  int64_t y_stride = 0;  // 0: w.rows
  core::ActivationBits bits = core::ActivationBits::Int24;
};

// One linear layer per group over consecutive runs of rows (a routed expert's tokens): rows
// [row_begin[g], row_begin[g+1]) of x and y go through weight w[g]. The grouped GEMM of a device.
struct LinearGrouped {
  const core::WeightView* w = nullptr;  // [groups], host memory (the views point at the device's weights)
  const int64_t* row_begin = nullptr;   // [groups + 1], host memory
  int64_t groups = 0;
  const float* x = nullptr;
  int64_t x_stride = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
  core::ActivationBits bits = core::ActivationBits::Int24;
};

// A SwiGLU feed-forward (a routed or the shared expert) over m rows: gate = w1·x, up = w3·x (MXFP4 w1/w3 share
// one rounding of x), gate = silu(min(gate, L))·clamp(up, −L, L) (no clamp when limit is 0), out = w2·gate.
struct ExpertFfn {
  core::WeightView w1, w2, w3;
  const float* x = nullptr;  // [m, d]
  int64_t m = 0;
  double limit = 0;
  float* gate = nullptr;  // [m, inter]
  float* up = nullptr;    // [m, inter]
  float* out = nullptr;   // [m, d]
  core::ActivationBits bits = core::ActivationBits::Int24;
};

// ---- KV rows, compressors, indexer, attention ----

// Rounds each of `rows` rows of x (in place) to what `layout` stores and writes the stored bytes to out.
struct KvEncode {
  planner::KvRowLayout layout;
  float* x = nullptr;
  int64_t rows = 0;
  uint8_t* out = nullptr;  // [rows, layout.bytes]
};

// The chunk's last min(n, window) encoded rows into the sliding-window ring: position p at slot p % window.
struct KvWindowStore {
  const uint8_t* rows = nullptr;  // [n, row_bytes], the chunk's own rows
  int64_t n = 0, p0 = 0, window = 0, row_bytes = 0;
  uint8_t* ring = nullptr;  // [window, row_bytes]
};

// One compressor over the chunk, from its two projections a (values) and s (scores) of every token: the running
// state is updated, and every block that completes (position p with (p+1) % ratio == 0) is pooled into entry
// j = (p+1)/ratio − 1 (softmax over the block's scores per channel; ratio 4 overlaps the previous block),
// normalised, rotated at position ratio·j, Hadamard-transformed for the indexer, and stored encoded at rows[j].
struct Compress {
  const float* a = nullptr;                              // [n, width]
  const float* s = nullptr;                              // [n, width]
  const float* ape = nullptr;                            // [ratio, width]
  const float* norm = nullptr;                           // [dim]
  int64_t n = 0, p0 = 0, ratio = 0, dim = 0, width = 0;  // width = dim·(ratio == 4 ? 2 : 1)
  double eps = 0;
  RopeFreqs freqs;
  bool indexer = false;
  float* state_kv = nullptr;     // [rows, width] (CompressorState)
  float* state_score = nullptr;  // [rows, width]
  planner::KvRowLayout layout;
  uint8_t* rows = nullptr;  // compressed entries, [capacity, layout.bytes]
  int64_t capacity = 0;
};

// The lightning indexer's choice for every token of the chunk: queries q [n, heads, head_dim] are rotated at
// their position, Hadamard-transformed and rounded for the KV type (in place); head weights w [n, heads] scaled
// by 1/sqrt(head_dim·heads); scores over the visible compressed keys (entries j < (p+1)/4), tiled; the top-k
// (score descending, entry ascending on equal scores) into sel[t, 0 … sel_count[t]). A token with no more than
// top-k visible entries takes them all.
struct IndexerSelect {
  float* q = nullptr;
  float* w = nullptr;
  const uint8_t* keys = nullptr;  // [entries, layout.bytes]
  planner::KvRowLayout layout;
  planner::KvType kv_type = planner::KvType::FP8;
  int64_t n = 0, p0 = 0, heads = 0, head_dim = 0, topk = 0;
  RopeFreqs freqs;
  float* key_tile = nullptr;  // decoded keys of one tile
  int64_t key_tile_rows = 0;
  TileScratch tiles;
  int32_t* sel = nullptr;        // [n, topk]: a token's entries in no particular order (attention sums in list order)
  int32_t* sel_count = nullptr;  // [n]
};

// Attention of every token over its window (positions max(0, p−W+1) … p: this chunk's rows from kv, earlier
// ones from the ring) and its compressed entries (selected by sel/sel_count when ratio is 4, all (p+1)/ratio
// otherwise), with the shared K=V rows, softmax scale 1/sqrt(head_dim) and a per-head sink, computed online over
// key tiles; the output's rope dims rotated back (inverse RoPE at the token's position).
struct Attention {
  const float* q = nullptr;             // [n, heads, head_dim]
  const float* kv = nullptr;            // [n, head_dim], this chunk's rows (already rounded as stored)
  const uint8_t* window = nullptr;      // the ring, [window, layout.bytes]
  const uint8_t* compressed = nullptr;  // [entries, layout.bytes]
  planner::KvRowLayout layout;
  const int32_t* sel = nullptr;  // ratio 4: [n, topk]
  const int32_t* sel_count = nullptr;
  int64_t topk = 0;
  int64_t n = 0, p0 = 0, heads = 0, head_dim = 0, window_size = 0, ratio = 0;
  const float* sink = nullptr;  // [heads]
  RopeFreqs freqs;
  TileScratch tiles;
  float* o = nullptr;  // [n, heads, head_dim]
};

// ---- MoE ----

// Router: scores [n, E] (the gate's logits) become sqrt(softplus(·)) in place; each token's k experts are
// tid2eid[token] (hash-routed layers) or the k best of score + bias (score descending, id ascending on ties);
// weights = score / sum of the chosen scores · scaling.
struct Route {
  float* scores = nullptr;
  int64_t n = 0, experts = 0, k = 0;
  const float* bias = nullptr;       // [E], score routing
  const int32_t* tid2eid = nullptr;  // [vocab, k], hash routing
  const int32_t* tokens = nullptr;   // host memory, hash routing
  double scaling = 1;
  int32_t* ids = nullptr;    // [n, k]
  float* weights = nullptr;  // [n, k]
};

// dst[i] = src[index[i] / div] for i < m: a routed expert's input rows, gathered from the layer input by the
// (token·k + choice) numbers of its tokens.
struct GatherRows {
  const float* src = nullptr;
  int64_t d = 0;
  const int32_t* index = nullptr;
  int64_t div = 1, m = 0;
  float* dst = nullptr;  // [m, d]
};

// y[t] += sum over the token's k choices, in ascending sorted position, of weight·expert_out[position]
// (y[t] = the sum when !add): sorted position p holds choice order[p] = t·k + i and its output row
// expert_out[p].
struct MoeCombine {
  const float* expert_out = nullptr;  // [n·k, d]
  const int32_t* order = nullptr;     // [n·k]
  const float* weights = nullptr;     // [n·k], the route weights by choice
  int64_t n = 0, k = 0, d = 0;
  float* y = nullptr;  // [n, d]
  bool add = true;
};

// out[t, s, :] = a[t, :] + b[t, s, :]: the MTP layer's input streams from its projected embedding and state.
struct AddStreams {
  const float* a = nullptr;  // [n, d]
  const float* b = nullptr;  // [n, streams, d]
  int64_t n = 0, streams = 0, d = 0;
  float* out = nullptr;
};

using Op = std::variant<Embed, RmsNorm, Rope, HcPre, HcPost, HcHead, Linear, LinearGrouped, ExpertFfn, KvEncode,
                        KvWindowStore, Compress, IndexerSelect, Attention, Route, GatherRows, MoeCombine, AddStreams>;

// The kind of an op: its index in Op, for support tables and reports.
enum class Kind : uint8_t {
  Embed,
  RmsNorm,
  Rope,
  HcPre,
  HcPost,
  HcHead,
  Linear,
  LinearGrouped,
  ExpertFfn,
  KvEncode,
  KvWindowStore,
  Compress,
  IndexerSelect,
  Attention,
  Route,
  GatherRows,
  MoeCombine,
  AddStreams,
};
inline constexpr int kKinds = static_cast<int>(std::variant_size_v<Op>);
static_assert(static_cast<int>(Kind::AddStreams) + 1 == kKinds, "Kind lists every op of Op, in order");

inline Kind kind_of(const Op& op) { return static_cast<Kind>(op.index()); }
std::string_view kind_name(Kind k);  // "rms_norm", "attention", ...

}  // namespace ferry::runtime::ops
