// The CUDA kernels of the ops of runtime/backend/ops.h, each a launch on a stream that returns at once with the
// launch's status (a fault inside a kernel shows later, at an event of the stream). Their arguments are plain
// device pointers and sizes, so that nvcc compiles nothing of the rest of ferry: runtime/backend/cuda/cuda_ops.cpp
// checks each op and turns it into these calls. Included only by the CUDA build's own files (it names
// cudaStream_t).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "runtime/kernels/cuda/attention_math.h"
#include "runtime/kernels/cuda/gemm_math.h"
#include "runtime/kernels/cuda/hc_math.h"
#include "runtime/kernels/cuda/kv_math.h"
#include "runtime/kernels/cuda/matvec_math.h"
#include "runtime/kernels/cuda/moe_math.h"

namespace ferry::runtime::cuda {

// Token ids travel in the launch's own arguments (the op's are host memory): no copy, no staging buffer.
constexpr int kEmbedTokensPerLaunch = 512;
struct EmbedArgs {
  const uint16_t* table = nullptr;  // BF16 [vocab, cols]
  int64_t cols = 0, copies = 1, n = 0;
  float* out = nullptr;  // [n, copies, cols]
  int32_t tokens[kEmbedTokensPerLaunch] = {};
};
cudaError_t launch_embed(const EmbedArgs& a, cudaStream_t stream);

struct RmsNormArgs {
  const float* x = nullptr;
  int64_t rows = 0, dim = 0, x_stride = 0, out_stride = 0;
  const float* weight = nullptr;  // may be null
  double eps = 0;
  float* out = nullptr;
};
cudaError_t launch_rms_norm(const RmsNormArgs& a, cudaStream_t stream);

// The frequency table (host memory in the op) travels in the arguments too: V4 has 32 frequencies.
constexpr int kMaxRopeFreqs = 64;
struct RopeArgs {
  float* x = nullptr;
  int64_t n = 0, heads = 0, head_dim = 0, offset = 0, p0 = 0, count = 0;
  bool inverse = false;
  double freqs[kMaxRopeFreqs] = {};
};
cudaError_t launch_rope(const RopeArgs& a, cudaStream_t stream);

struct AddStreamsArgs {
  const float* a = nullptr;
  const float* b = nullptr;
  int64_t n = 0, streams = 0, d = 0;
  float* out = nullptr;
};
cudaError_t launch_add_streams(const AddStreamsArgs& a, cudaStream_t stream);

// y[t·y_stride + r] = sum_k W[row_begin + r, k]·x[t·x_stride + k]: each warp streams one weight row in 16-byte
// loads (matvec_math.h) and applies it to a tile of up to 4 tokens held in shared memory (for MXFP4, rounded per
// block of 32 to `bits` first, as the CPU rounds them); fp32 accumulation. The matrix-vector product of decode, and of
// prefill until a tensor-core GEMM exists.
constexpr int64_t kMatvecMaxCols = 12288;    // one token's input in the 48 KiB of shared memory a block gets
constexpr int64_t kMatvecMaxTokens = 65535;  // a grid's y extent, at one token a block
struct MatvecArgs {
  MatvecFormat format = MatvecFormat::F32;
  const uint8_t* codes = nullptr;   // the whole tensor
  const uint8_t* scales = nullptr;  // FP8: [ceil(tensor_rows/128), ceil(cols/128)]; MXFP4: [tensor_rows, cols/32]
  int64_t row_begin = 0, rows = 0, cols = 0;
  const float* x = nullptr;
  int64_t n = 0, x_stride = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
  int bits = 24;  // MXFP4 input rounding: 8, 16 or 24
};
cudaError_t launch_matvec(const MatvecArgs& a, cudaStream_t stream);

// gate[i] ← swiglu(gate[i], up[i], limit) (ffn_math.h) over [m, inter]: an expert feed-forward's middle.
struct SwigluArgs {
  float* gate = nullptr;
  const float* up = nullptr;
  int64_t m = 0, inter = 0;
  float limit = 0;
};
cudaError_t launch_swiglu(const SwigluArgs& a, cudaStream_t stream);

// mHC (hc_math.h), one block per token for the pre-mix and the head (the logits are block-wide dot products
// over the token's hc·d stream values), one thread per column for the post-mix. hc <= kMaxHc.
struct HcPreArgs {
  const float* H = nullptr;  // [n, hc, d]
  int64_t n = 0, hc = 0, d = 0;
  const float* fn = nullptr;     // [(2 + hc)·hc, hc·d]
  const float* scale = nullptr;  // [3]
  const float* base = nullptr;   // [(2 + hc)·hc]
  int64_t sinkhorn_iters = 0;
  double hc_eps = 0, norm_eps = 0;
  float* mix = nullptr;  // [n, 2·hc + hc²]
  float* x = nullptr;    // [n, d]
};
cudaError_t launch_hc_pre(const HcPreArgs& a, cudaStream_t stream);

struct HcPostArgs {
  const float* y = nullptr;
  const float* mix = nullptr;
  int64_t n = 0, hc = 0, d = 0;
  float* H = nullptr;
};
cudaError_t launch_hc_post(const HcPostArgs& a, cudaStream_t stream);

struct HcHeadArgs {
  const float* H = nullptr;
  int64_t n = 0, hc = 0, d = 0;
  const float* fn = nullptr;     // [hc, hc·d]
  const float* scale = nullptr;  // [1]
  const float* base = nullptr;   // [hc]
  double hc_eps = 0, norm_eps = 0;
  float* y = nullptr;  // [n, d]
};
cudaError_t launch_hc_head(const HcHeadArgs& a, cudaStream_t stream);

// The router (moe_math.h), one block per token: scores in place, the top-k by rank (score routing, E <=
// kRouteMaxExperts) or the token's row of tid2eid (hash routing, the token ids in the arguments), the weights.
constexpr int kRouteTokensPerLaunch = 512;
constexpr int64_t kRouteMaxExperts = 4096;  // two floats an expert in shared memory
struct RouteArgs {
  float* scores = nullptr;  // [n, E]
  int64_t n = 0, experts = 0, k = 0;
  const float* bias = nullptr;       // score routing
  const int32_t* tid2eid = nullptr;  // hash routing: [vocab, k]
  float scaling = 1;
  int32_t* ids = nullptr;    // [n, k]
  float* weights = nullptr;  // [n, k]
  int32_t tokens[kRouteTokensPerLaunch] = {};
};
cudaError_t launch_route(const RouteArgs& a, cudaStream_t stream);

struct GatherRowsArgs {
  const float* src = nullptr;
  int64_t d = 0;
  const int32_t* index = nullptr;  // [m]
  int64_t div = 1, m = 0;
  float* dst = nullptr;  // [m, d]
};
cudaError_t launch_gather_rows(const GatherRowsArgs& a, cudaStream_t stream);

// One block per token: its k sorted positions found by a scan of `order` (n·k entries a token: fine for a
// chunk's few thousand tokens), sorted, then the combine of every column. k <= kMaxRouteK.
struct MoeCombineArgs {
  const float* expert_out = nullptr;  // [n·k, d]
  const int32_t* order = nullptr;     // [n·k]
  const float* weights = nullptr;     // [n·k]
  int64_t n = 0, k = 0, d = 0;
  float* y = nullptr;  // [n, d]
  bool add = true;
};
cudaError_t launch_moe_combine(const MoeCombineArgs& a, cudaStream_t stream);

// KV rows (kv_math.h): one thread per unit of a row (a quantisation block, a BF16 value, the scales' padding).
struct KvEncodeArgs {
  KvRow layout;
  float* x = nullptr;  // [rows, dims], rounded in place
  int64_t rows = 0;
  uint8_t* out = nullptr;  // [rows, bytes]
};
cudaError_t launch_kv_encode(const KvEncodeArgs& a, cudaStream_t stream);

// The chunk's last min(n, window) rows into the ring at slot p % window, a block a row.
struct KvWindowStoreArgs {
  const uint8_t* rows = nullptr;
  int64_t n = 0, p0 = 0, window = 0, row_bytes = 0;
  uint8_t* ring = nullptr;
};
cudaError_t launch_kv_window_store(const KvWindowStoreArgs& a, cudaStream_t stream);

// Attention (attention_math.h): a block per (token, kAttentionHeadsPerBlock heads), a warp per head holding its
// query and fp32 accumulator in registers. The token's rows go through shared memory a key tile at a time, each
// stored value decoded once per block (decode_kv_value) for all its heads; each score is a warp sum; the online
// softmax folds a tile at a time, as the host does. Nothing grows with the context. head_dim <=
// kAttentionMaxHeadDim, even. A launch with fewer blocks than twice the SMs (decode) splits each token's rows
// into parts (attention_split_parts) whose partial states go to `partials` (the op's tile scratch) and are merged
// by a second kernel; without the room for them, the unsplit kernel.
constexpr int kAttentionHeadsPerBlock = 8;
struct AttentionArgs {
  AttentionRows rows;
  const float* q = nullptr;                           // [n, heads, head_dim]
  const float* sink = nullptr;                        // [heads]
  int64_t n = 0, heads = 0, head_dim = 0, count = 0;  // count: rope frequencies (the last 2·count dims)
  double freqs[kMaxRopeFreqs] = {};
  float* o = nullptr;         // [n, heads, head_dim]
  float* partials = nullptr;  // scratch, partial_floats floats: [n, slots, heads, 2 + head_dim] when split
  int64_t partial_floats = 0;
  int64_t max_parts = 0, slots = 0;  // set by launch_attention: the split (0: none) and the parts' slots per token
};
cudaError_t launch_attention(const AttentionArgs& a, cudaStream_t stream);

// ---- the tensor-core GEMM (gemm.cu, gemm_math.h) ----

// The same product as launch_matvec for chunks of kGemmMinTokens tokens or more, BF16, FP8 and MXFP4 weights
// whose rows are a whole number of 32-column tiles (gemm_takes): a block decodes a 128-row × 32-column weight
// tile into shared memory as BF16 and multiplies it with 64 tokens' inputs split into BF16 hi + lo (mma.sync
// m16n8k16, fp32 accumulation; the block scales applied to each scale block's partial sums). Below
// kGemmMinTokens the matrix-vector kernel: both are bound by the weight's bytes there, and the matrix-vector
// kernel's rows/8 blocks (re-reading the weight, mostly from L2, once per 4 tokens) keep more loads in flight
// than the GEMM's rows/128 (32 blocks for 4096 rows on 132 SMs); from 16 tokens its 4 passes cost more than
// the GEMM's one (an estimate: measure on a device). Every group (LinearGrouped's experts: a
// weight and a run of tokens each) in one launch: grid.x the 128-row tiles, grid.y the groups' 64-token tiles.
constexpr int64_t kGemmMinTokens = 16;
constexpr int kGemmMaxGroups = 64;  // the table travels in the launch's arguments (2 KiB of the 4 KiB)
struct GemmArgs {
  MatvecFormat format = MatvecFormat::BF16;
  int64_t rows = 0, cols = 0;  // every group's weight view
  const float* x = nullptr;
  int64_t x_stride = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
  int bits = 24;              // MXFP4 input rounding: 8, 16 or 24
  int groups = 0, tiles = 0;  // tiles: the groups' 64-token tiles together
  GemmGroup group[kGemmMaxGroups] = {};
};
inline bool gemm_takes(MatvecFormat f, int64_t cols, const uint8_t* codes) {
  return f != MatvecFormat::F32 && cols > 0 && cols % kGemmK == 0 && reinterpret_cast<uintptr_t>(codes) % 16 == 0;
}
cudaError_t launch_gemm(const GemmArgs& a, cudaStream_t stream);

// ---- compressors and the lightning indexer (compress_math.h, indexer_math.h) ----

// One compressor over the chunk: a block per entry that completes in it (pooled, normalised, rotated at
// ratio·entry, Hadamard-transformed for the indexer, encoded into rows), then one thread per state column writes
// the state the chunk leaves. dim <= kCompressMaxDim.
constexpr int64_t kCompressMaxDim = 1024;
struct CompressArgs {
  const float* a = nullptr;     // [n, width]
  const float* s = nullptr;     // [n, width]
  const float* ape = nullptr;   // [ratio, width]
  const float* norm = nullptr;  // [dim]
  int64_t n = 0, p0 = 0, ratio = 0, dim = 0, width = 0;
  double eps = 0;
  bool indexer = false;
  float* state_kv = nullptr;     // [rows, width]
  float* state_score = nullptr;  // [rows, width]
  KvRow layout;
  uint8_t* rows = nullptr;  // [capacity, layout.bytes]
  int64_t count = 0;        // rope frequencies
  double freqs[kMaxRopeFreqs] = {};
};
cudaError_t launch_compress(const CompressArgs& a, cudaStream_t stream);

// The indexer: a block per (token, head) prepares the queries and weights in place; then a block per (token,
// part of its keys) scores key tiles decoded into shared memory and keeps a running top-k there (candidates that
// beat its k-th best, compacted by rank), writing sel directly when a token has one part, else its part's best
// to `scratch` (2·topk floats a part: scores and entries), which a block per token merges into sel. Tokens that
// see no more than top-k entries take 0 … visible−1. With the fp8 cache (FP4 keys, queries rounded to their grid)
// and up to kIndexerInt8MaxHeads heads, the scores come from int8 mma.sync (indexer_math.h). head_dim a power of
// two <= kIndexerMaxDim, topk <= kIndexerMaxTopk.
constexpr int64_t kIndexerMaxDim = 128, kIndexerMaxTopk = 1024;
struct IndexerArgs {
  float* q = nullptr;  // [n, heads, head_dim]
  float* w = nullptr;  // [n, heads]
  const uint8_t* keys = nullptr;
  KvRow layout;
  bool round_fp4 = false;  // the fp8 cache's keys: queries rounded to FP4 per 32
  int64_t n = 0, p0 = 0, heads = 0, head_dim = 0, topk = 0;
  float weight_scale = 0;
  float* scratch = nullptr;  // the op's key tile
  int64_t scratch_floats = 0;
  int32_t* sel = nullptr;        // [n, topk]
  int32_t* sel_count = nullptr;  // [n]
  int64_t count = 0;             // rope frequencies
  double freqs[kMaxRopeFreqs] = {};
};
cudaError_t launch_indexer_select(const IndexerArgs& a, cudaStream_t stream);

}  // namespace ferry::runtime::cuda
