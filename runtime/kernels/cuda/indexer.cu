// The lightning indexer on the device (indexer_math.h): the queries and head weights prepared in place, then each
// token's top-k over its visible compressed keys. A block scores a tile of keys at a time (decoded once into
// shared memory, a thread a key) and keeps a running top-k in shared memory: a candidate that goes before the
// k-th best so far is appended, and when more than 2·k are held they are compacted to the k best by rank. Nothing
// grows with the context: a token's keys are split into parts only as far as the op's key-tile scratch holds a
// top-k a part, and a second pass merges the parts with the same running top-k. With the fp8 cache the scores
// come from int8 tensor-core MMAs instead (indexer_math.h, indexer_int8_path): the same parts and top-k.
#include "runtime/kernels/cuda/indexer_math.h"
#include "runtime/kernels/cuda/kernel_util.cuh"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/cuda/kv_math.h"
#include "runtime/kernels/cuda/norm_rope_math.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kThreads = 128;  // the keys of a tile: a thread each

// A block per (token, head) row of q: rotated at the token's position, Hadamard-transformed, rounded for the
// cache's keys; the row's head weight scaled.
__global__ void __launch_bounds__(kIndexerMaxDim) indexer_prepare_kernel(IndexerArgs a) {
  __shared__ float x[kIndexerMaxDim];
  const int64_t dim = a.head_dim, off = dim - 2 * a.count;
  for (int64_t r = blockIdx.x; r < a.n * a.heads; r += gridDim.x) {
    float* q = a.q + r * dim;
    for (int64_t i = threadIdx.x; i < dim; i += kIndexerMaxDim) x[i] = q[i];
    __syncthreads();
    for (int64_t i = threadIdx.x; i < a.count; i += kIndexerMaxDim) {
      float c = 0, s = 0;
      rope_cos_sin(a.freqs[i], a.p0 + r / a.heads, false, c, s);
      rope_pair(x[off + 2 * i], x[off + 2 * i + 1], c, s);
    }
    __syncthreads();
    for (int64_t h = 1; h < dim; h *= 2) {
      for (int64_t m = threadIdx.x; m < dim / 2; m += kIndexerMaxDim) hadamard_pair(x, h, m);
      __syncthreads();
    }
    const float scale = hadamard_scale(dim);
    for (int64_t i = threadIdx.x; i < dim; i += kIndexerMaxDim) x[i] = mul_rn(x[i], scale);
    __syncthreads();
    for (int64_t b = threadIdx.x; a.round_fp4 && b * kKvFp4Block < dim; b += kIndexerMaxDim)
      round_query_block(x + b * kKvFp4Block, dim - b * kKvFp4Block < kKvFp4Block ? dim - b * kKvFp4Block : kKvFp4Block);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < dim; i += kIndexerMaxDim) q[i] = x[i];
    if (threadIdx.x == 0) a.w[r] = mul_rn(a.w[r], a.weight_scale);
    __syncthreads();  // `x` is the next row's
  }
}

// A running top-k in shared memory: `count` candidates (scores, ids) of capacity 2·k + kThreads, `kept` the
// compaction's target; once k are held, (ts, ti) is the k-th best at the last compaction.
struct Running {
  float* scores;
  int32_t* ids;
  float* kept_scores;
  int32_t* kept_ids;
  int64_t k;
};
struct RunningState {
  int count;
  bool full;
  float ts;
  int32_t ti;
};

__device__ void running_reset(RunningState& st) {
  if (threadIdx.x == 0) st.count = 0, st.full = false;
  __syncthreads();
}

// Called by one thread per candidate; the caller syncs before the next compaction.
__device__ void running_offer(const Running& r, RunningState& st, float s, int32_t id) {
  if (!indexer_admits(st.full, st.ts, st.ti, s, id)) return;
  const int slot = atomicAdd(&st.count, 1);
  r.scores[slot] = s;
  r.ids[slot] = id;
}

// The `limit` best (at most k) of the held candidates, in rank order, when more than `limit` are held.
__device__ void running_compact(const Running& r, RunningState& st, int64_t limit) {
  const int64_t m = st.count;
  if (m <= limit) return;
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const int64_t rank = indexer_rank(r.scores, r.ids, m, i);
    if (rank < r.k) r.kept_scores[rank] = r.scores[i], r.kept_ids[rank] = r.ids[i];
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < r.k; i += kThreads) r.scores[i] = r.kept_scores[i], r.ids[i] = r.kept_ids[i];
  if (threadIdx.x == 0)
    st.count = static_cast<int>(r.k), st.full = true, st.ts = r.kept_scores[r.k - 1], st.ti = r.kept_ids[r.k - 1];
  __syncthreads();
}

__device__ Running running_in(float* shared, int64_t k) {
  const int64_t cap = 2 * k + kThreads;
  Running r;
  r.scores = shared;
  r.ids = reinterpret_cast<int32_t*>(r.scores + cap);
  r.kept_scores = reinterpret_cast<float*>(r.ids + cap);
  r.kept_ids = reinterpret_cast<int32_t*>(r.kept_scores + k);
  r.k = k;
  return r;
}

// The held candidates (at most k after the final compaction) to ids[0 … count) and, for a part, scores; the rest
// of a part's slots marked empty (id −1).
__device__ void running_write(const Running& r, RunningState& st, int32_t* ids, float* scores, int32_t* count) {
  running_compact(r, st, r.k);
  const int64_t m = st.count;
  for (int64_t i = threadIdx.x; i < r.k; i += kThreads) {
    if (i < m) ids[i] = r.ids[i];
    if (scores) {
      scores[i] = i < m ? r.scores[i] : 0.0f;
      if (i >= m) ids[i] = -1;
    }
  }
  if (count && threadIdx.x == 0) *count = static_cast<int32_t>(m);
  __syncthreads();  // the buffers are the next token's
}

// A token's part done: its best to sel directly when it is the only part, else to its scratch slot.
__device__ void write_part(const IndexerArgs& a, const Running& r, RunningState& st, int64_t t, int64_t part,
                           int64_t parts) {
  if (parts == 1) {
    running_write(r, st, a.sel + t * a.topk, nullptr, a.sel_count + t);
  } else {
    float* slot = a.scratch + (t * parts + part) * 2 * a.topk;
    running_write(r, st, reinterpret_cast<int32_t*>(slot + a.topk), slot, nullptr);
  }
}

// A block per (token, part): the part's keys in tiles, decoded into shared memory (row stride dim + 1, so that
// the threads' rows fall in different banks), a thread scoring each key against the token's queries.
__global__ void __launch_bounds__(kThreads) indexer_score_kernel(IndexerArgs a, int64_t parts) {
  extern __shared__ float shared[];
  __shared__ RunningState st;
  const int64_t dim = a.head_dim, k = a.topk, stride = dim + 1, part = blockIdx.y;
  float* tile = shared;
  const Running r = running_in(tile + kThreads * stride, k);
  for (int64_t t = blockIdx.x; t < a.n; t += gridDim.x) {
    const int64_t visible = (a.p0 + t + 1) / 4;
    if (visible <= k) {  // the whole of a token's few entries, in order
      for (int64_t j = threadIdx.x; part == 0 && j < visible; j += kThreads) a.sel[t * k + j] = static_cast<int32_t>(j);
      if (part == 0 && threadIdx.x == 0) a.sel_count[t] = static_cast<int32_t>(visible);
      continue;
    }
    int64_t begin = 0, end = 0;
    indexer_part_range(visible, part, parts, begin, end);
    running_reset(st);
    const float* q = a.q + t * a.heads * dim;
    const float* w = a.w + t * a.heads;
    for (int64_t j0 = begin; j0 < end; j0 += kThreads) {
      const int64_t rows = end - j0 < kThreads ? end - j0 : kThreads;
      for (int64_t i = threadIdx.x; i < rows * dim; i += kThreads)
        tile[i / dim * stride + i % dim] = decode_kv_value(a.layout, a.keys + (j0 + i / dim) * a.layout.bytes, i % dim);
      __syncthreads();
      if (threadIdx.x < rows)
        running_offer(r, st, indexer_key_score(q, w, a.heads, dim, tile + threadIdx.x * stride),
                      static_cast<int32_t>(j0 + threadIdx.x));
      __syncthreads();
      running_compact(r, st, 2 * k);
    }
    write_part(a, r, st, t, part, parts);
  }
}

// ---- the int8 path (fp8 cache; indexer_math.h) ----
//
// A block per (token, part) as above, its queries turned into int8 A fragments once a token (heads padded to
// 4 MMA row tiles of 16) and each tile of kThreads keys into int8 rows in shared memory; warp w takes keys
// 32w … 32w+31, 4 column tiles of 8. Per (row tile, column tile) one m16n8k32 MMA a block of 32 dims, each into
// its own int32 accumulator (started at kIndexerIntBias); each value then scaled to float and summed over the blocks in
// order, the dot products to shared memory [head][key]; a thread a key then sums its heads in order and offers the
// score. Columns past a tile's last key are computed from stale rows and never read.

constexpr int kMTiles = kIndexerInt8MaxHeads / 16, kMaxBlocks = kIndexerInt8MaxBlocks, kNTiles = 4;
static_assert(kNTiles * 8 * (kThreads / 32) == kThreads, "the warps' column tiles cover a tile's keys");
constexpr int64_t kRowPad = 16;             // bytes after an int8 row: 8 rows' fragment words fall in 32 banks
constexpr int64_t kDStride = kThreads + 8;  // floats a head row of dot products: a half warp's float2 in 32 banks

// c = kIndexerIntBias + a·b (s8 × s8 → s32).
__device__ __forceinline__ void mma_s8(uint32_t c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(kIndexerIntBias));
}

struct Int8Tiles {
  float* d;      // [kIndexerInt8MaxHeads, kDStride]
  float* qf;     // [kIndexerInt8MaxHeads, kMaxBlocks]: 2^(x−1) of each query block
  float* kf;     // [kThreads, kMaxBlocks]: 2^(ek−1) of each key block
  int8_t* q;     // [kIndexerInt8MaxHeads, dim + kRowPad]
  int8_t* keys;  // [kThreads, dim + kRowPad]
  float* running;
};

size_t int8_tile_bytes(int64_t dim) {
  const auto row = static_cast<size_t>(dim + kRowPad);
  return sizeof(float) *
             static_cast<size_t>(kIndexerInt8MaxHeads * kDStride + (kIndexerInt8MaxHeads + kThreads) * kMaxBlocks) +
         row * static_cast<size_t>(kIndexerInt8MaxHeads + kThreads);
}

__device__ Int8Tiles int8_tiles(char* shared, int64_t dim) {
  Int8Tiles t;
  t.d = reinterpret_cast<float*>(shared);
  t.qf = t.d + kIndexerInt8MaxHeads * kDStride;
  t.kf = t.qf + kIndexerInt8MaxHeads * kMaxBlocks;
  t.q = reinterpret_cast<int8_t*>(t.kf + kThreads * kMaxBlocks);
  t.keys = t.q + kIndexerInt8MaxHeads * (dim + kRowPad);
  t.running = reinterpret_cast<float*>(t.keys + kThreads * (dim + kRowPad));
  return t;
}

__device__ uint32_t load_word(const int8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// A warp's share of a token's queries, held in registers for all its keys: the A fragments of each row tile and
// block, and the factors of the two heads (group, group + 8) of each.
struct QueryFrags {
  uint32_t a[kMTiles][kMaxBlocks][4];
  float f[kMTiles][kMaxBlocks][2];
};

// The token's queries as int8 rows (padded heads zero) and their factors; then the warp's fragments (PTX
// "Matrix Fragments for mma.m16n8k32": register i holds 4 int8 of row group + 8·(i % 2), columns
// 4·tig + 16·(i / 2)).
__device__ void int8_queries(const IndexerArgs& a, const float* q, const Int8Tiles& t, QueryFrags& qf) {
  const int64_t dim = a.head_dim, blocks = dim / kKvFp4Block, row = dim + kRowPad;
  for (int64_t u = threadIdx.x; u < kIndexerInt8MaxHeads * blocks; u += kThreads) {
    const int64_t h = u / blocks, b = u % blocks;
    auto* words = reinterpret_cast<uint32_t*>(t.q + h * row + b * kKvFp4Block);
    if (h < a.heads) {
      t.qf[h * kMaxBlocks + b] = fp4_query_block(q + h * dim + b * kKvFp4Block, words);
    } else {
      t.qf[h * kMaxBlocks + b] = 0;
      for (int i = 0; i < kKvFp4Block / 4; ++i) words[i] = 0;
    }
  }
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, tig = lane % 4;
#pragma unroll
  for (int m = 0; m < kMTiles; ++m)
#pragma unroll
    for (int b = 0; b < kMaxBlocks; ++b) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        qf.a[m][b][i] =
            b < blocks ? load_word(t.q + (16 * m + g + 8 * (i % 2)) * row + b * kKvFp4Block + 4 * tig + 16 * (i / 2))
                       : 0u;
#pragma unroll
      for (int i = 0; i < 2; ++i) qf.f[m][b][i] = t.qf[(16 * m + g + 8 * i) * kMaxBlocks + b];
    }
}

// Keys j0 … j0+rows−1 as int8 rows and their factors, a thread a (key, block).
__device__ void int8_keys(const IndexerArgs& a, int64_t j0, int64_t rows, const Int8Tiles& t) {
  const int64_t dim = a.head_dim, blocks = dim / kKvFp4Block;
  for (int64_t u = threadIdx.x; u < rows * blocks; u += kThreads) {
    const int64_t key = u / blocks, b = u % blocks;
    auto* words = reinterpret_cast<uint32_t*>(t.keys + key * (dim + kRowPad) + b * kKvFp4Block);
    t.kf[key * kMaxBlocks + b] = fp4_key_block(a.layout, a.keys + (j0 + key) * a.layout.bytes, b, words);
  }
}

// The warp's dot products of the tile: per column tile the B fragments (register i: 4 int8 of key group, dims
// 4·tig + 16·i), per row tile and block an MMA; C value e is head 16m + group + 8·(e / 2), key 2·tig + e % 2.
__device__ void int8_dots(const IndexerArgs& a, int64_t rows, const Int8Tiles& t, const QueryFrags& qf) {
  const int64_t blocks = a.head_dim / kKvFp4Block, row = a.head_dim + kRowPad;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4, tig = lane % 4;
  for (int n = 0; n < kNTiles; ++n) {
    const int n0 = 32 * warp + 8 * n;
    if (n0 >= rows) break;  // warp-uniform
    uint32_t bf[kMaxBlocks][2];
    float kf[kMaxBlocks][2];
#pragma unroll
    for (int b = 0; b < kMaxBlocks; ++b)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        bf[b][i] = b < blocks ? load_word(t.keys + (n0 + g) * row + b * kKvFp4Block + 4 * tig + 16 * i) : 0u;
        kf[b][i] = t.kf[(n0 + 2 * tig + i) * kMaxBlocks + b];
      }
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      if (16 * m >= a.heads) break;
      float v[4][kMaxBlocks];
#pragma unroll
      for (int b = 0; b < kMaxBlocks; ++b) {
        if (b >= blocks) break;
        uint32_t c[4];
        mma_s8(c, qf.a[m][b], bf[b]);
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e][b] = fp4_block_value(c[e], qf.f[m][b][e / 2], kf[b][e % 2]);
      }
      for (int half = 0; half < 2; ++half) {
        const float2 d = make_float2(fp4_head_dot(v[2 * half], blocks), fp4_head_dot(v[2 * half + 1], blocks));
        *reinterpret_cast<float2*>(t.d + (16 * m + g + 8 * half) * kDStride + n0 + 2 * tig) = d;
      }
    }
  }
}

// The int8 path's score kernel: indexer_score_kernel's parts and running top-k, its scores from int8_dots.
__global__ void __launch_bounds__(kThreads) indexer_score_int8_kernel(IndexerArgs a, int64_t parts) {
  extern __shared__ __align__(16) char raw[];
  __shared__ RunningState st;
  const Int8Tiles tiles = int8_tiles(raw, a.head_dim);
  const int64_t k = a.topk, part = blockIdx.y;
  const Running r = running_in(tiles.running, k);
  QueryFrags qf;
  for (int64_t tk = blockIdx.x; tk < a.n; tk += gridDim.x) {
    const int64_t visible = (a.p0 + tk + 1) / 4;
    if (visible <= k) {
      for (int64_t j = threadIdx.x; part == 0 && j < visible; j += kThreads)
        a.sel[tk * k + j] = static_cast<int32_t>(j);
      if (part == 0 && threadIdx.x == 0) a.sel_count[tk] = static_cast<int32_t>(visible);
      continue;
    }
    int64_t begin = 0, end = 0;
    indexer_part_range(visible, part, parts, begin, end);
    running_reset(st);
    int8_queries(a, a.q + tk * a.heads * a.head_dim, tiles, qf);
    const float* w = a.w + tk * a.heads;
    for (int64_t j0 = begin; j0 < end; j0 += kThreads) {
      const int64_t rows = end - j0 < kThreads ? end - j0 : kThreads;
      int8_keys(a, j0, rows, tiles);
      __syncthreads();
      int8_dots(a, rows, tiles, qf);
      __syncthreads();
      if (threadIdx.x < rows) {
        float score = 0;
        for (int64_t h = 0; h < a.heads; ++h)
          score = indexer_add_head(score, w[h], tiles.d[h * kDStride + threadIdx.x]);
        running_offer(r, st, score, static_cast<int32_t>(j0 + threadIdx.x));
      }
      __syncthreads();
      running_compact(r, st, 2 * k);
    }
    write_part(a, r, st, tk, part, parts);
  }
}

// A block per token with parts: the parts' best, merged.
__global__ void __launch_bounds__(kThreads) indexer_merge_kernel(IndexerArgs a, int64_t parts) {
  extern __shared__ float shared[];
  __shared__ RunningState st;
  const int64_t k = a.topk;
  const Running r = running_in(shared, k);
  for (int64_t t = blockIdx.x; t < a.n; t += gridDim.x) {
    if ((a.p0 + t + 1) / 4 <= k) continue;
    running_reset(st);
    for (int64_t i0 = 0; i0 < parts * k; i0 += kThreads) {
      const int64_t i = i0 + threadIdx.x;
      if (i < parts * k) {
        const float* slot = a.scratch + (t * parts + i / k) * 2 * k;
        const int32_t id = reinterpret_cast<const int32_t*>(slot + k)[i % k];
        if (id >= 0) running_offer(r, st, slot[i % k], id);
      }
      __syncthreads();
      running_compact(r, st, 2 * k);
    }
    running_write(r, st, a.sel + t * k, nullptr, a.sel_count + t);
  }
}

size_t running_bytes(int64_t k) { return sizeof(float) * static_cast<size_t>(2 * (2 * k + kThreads) + 2 * k); }

template <class Kernel>
cudaError_t allow_shared(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

cudaError_t launch_indexer_select(const IndexerArgs& a, cudaStream_t stream) {
  if (a.n == 0) return cudaSuccess;
  indexer_prepare_kernel<<<grid_for(a.n * a.heads, 1), kIndexerMaxDim, 0, stream>>>(a);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const int64_t max_visible = (a.p0 + a.n) / 4;
  const int64_t parts = indexer_parts(a.n, a.topk, max_visible, a.scratch_floats);
  const dim3 grid(grid_for(a.n, 1), static_cast<unsigned>(parts));
  if (indexer_int8_path(a.round_fp4, a.layout.format, a.heads, a.head_dim)) {
    const size_t bytes = int8_tile_bytes(a.head_dim) + running_bytes(a.topk);
    if (const cudaError_t e = allow_shared(indexer_score_int8_kernel, bytes); e != cudaSuccess) return e;
    indexer_score_int8_kernel<<<grid, kThreads, bytes, stream>>>(a, parts);
  } else {
    const size_t bytes = sizeof(float) * static_cast<size_t>(kThreads * (a.head_dim + 1)) + running_bytes(a.topk);
    if (const cudaError_t e = allow_shared(indexer_score_kernel, bytes); e != cudaSuccess) return e;
    indexer_score_kernel<<<grid, kThreads, bytes, stream>>>(a, parts);
  }
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess || parts == 1) return e;
  if (const cudaError_t e = allow_shared(indexer_merge_kernel, running_bytes(a.topk)); e != cudaSuccess) return e;
  indexer_merge_kernel<<<grid_for(a.n, 1), kThreads, running_bytes(a.topk), stream>>>(a, parts);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
