// The attention kernel's algorithm (runtime/kernels/cuda/attention.cu), run on the CPU through the functions of
// attention_math.h in the kernel's order: per token, the rows staged a key tile at a time (attention_tile_rows,
// stored values decoded one by one), each head's scores as 32 lanes' FMA chains summed by the warp's butterfly,
// the online softmax folded tile by tile, the sink and the inverse RoPE. Against the host's op
// (host_ops::attention) and a float64 attention of the same stored rows, for every --kv-type, at V4-Flash's head
// shape (512 dims, 64 of them rope, window 128: window only, CSA with 512 selected entries, HCA past a thousand
// entries) and the tiny model's. On the device only expf differs (within 2 ulp; the op suite's tolerance). The
// split launch (parts of a token's rows, merged in order) likewise, also at a 1M context, and its choice.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <tbb/task_arena.h>

#include "planner/core/model_config.h"
#include "planner/kv_cache.h"
#include "planner/memory.h"
#include "runtime/backend/cuda/kv_row.h"
#include "runtime/backend/host_ops.h"
#include "runtime/kernels/cpu/kv_rows.h"
#include "runtime/kernels/cuda/attention_math.h"

namespace ferry::runtime::cuda {
namespace {

size_t sz(int64_t i) { return static_cast<size_t>(i); }

struct Case {
  std::string name;
  core::ModelConfig c;
  int64_t ratio, p0, n;
};

// V4-Flash's head shape with 12 heads (the math is per head), and the tiny model's head shape.
std::vector<Case> cases() {
  core::ModelConfig flash = core::preset_config("deepseek-v4-flash");
  flash.num_attention_heads = 12;
  core::ModelConfig tiny = flash;
  tiny.num_attention_heads = 4, tiny.head_dim = 128, tiny.sliding_window = 16, tiny.index_topk = 8;
  return {{"flash window", flash, 0, 200, 5},   {"flash start", flash, 0, 0, 3},  {"flash csa", flash, 4, 2100, 2},
          {"flash hca", flash, 128, 140000, 1}, {"tiny window", tiny, 0, 30, 20}, {"tiny csa", tiny, 4, 45, 4},
          {"tiny hca", tiny, 16, 70, 3}};
}

// An attention op's inputs in host memory: rows stored as the KV type stores them, the chunk's floats rounded.
struct Inputs {
  planner::KvRowLayout layout;
  std::vector<float> q, sink, kv;
  std::vector<uint8_t> ring, comp;
  std::vector<int32_t> sel, sel_count;
  std::vector<double> freqs;
  int64_t topk = 1, heads = 0, hd = 0, W = 0;
  float row_max = 0;  // the largest |value| of any row
};

std::vector<float> normal(int64_t n, float sd, std::mt19937_64& rng) {
  std::normal_distribution<float> g(0.0f, sd);
  std::vector<float> v(sz(n));
  for (float& x : v) x = g(rng);
  return v;
}

// `rows` rows of N(0, 1) values, stored; returns the bytes, and the largest stored |value| in row_max.
std::vector<uint8_t> stored_rows(const planner::KvRowLayout& l, int64_t rows, std::mt19937_64& rng, float& row_max) {
  std::vector<float> x = normal(rows * l.dims, 1.0f, rng);
  std::vector<uint8_t> bytes(sz(rows * l.bytes));
  for (int64_t r = 0; r < rows; ++r) encode_kv_row(l, x.data() + r * l.dims, bytes.data() + r * l.bytes);
  for (float v : x) row_max = std::max(row_max, std::fabs(v));
  return bytes;
}

Inputs make_inputs(const Case& k, planner::KvType t) {
  std::mt19937_64 rng(41);
  Inputs in;
  in.layout = planner::KvRowLayout::main_row(k.c, t);
  in.heads = k.c.num_attention_heads, in.hd = k.c.head_dim, in.W = k.c.sliding_window;
  in.q = normal(k.n * in.heads * in.hd, 1.5f, rng);
  in.sink = normal(in.heads, 1.0f, rng);
  in.kv = normal(k.n * in.hd, 1.0f, rng);
  std::vector<uint8_t> scratch(sz(in.layout.bytes));
  for (int64_t r = 0; r < k.n; ++r) encode_kv_row(in.layout, in.kv.data() + r * in.hd, scratch.data());
  for (float v : in.kv) in.row_max = std::max(in.row_max, std::fabs(v));
  in.ring = stored_rows(in.layout, in.W, rng, in.row_max);
  const int64_t entries = k.ratio > 0 ? (k.p0 + k.n) / k.ratio : 0;
  in.comp = stored_rows(in.layout, std::max<int64_t>(entries, 1), rng, in.row_max);
  if (k.ratio == 4) {  // a random selection of the visible entries, all topk or one fewer; unused slots hold −1
    in.topk = k.c.index_topk;
    in.sel.assign(sz(k.n * in.topk), -1);
    for (int64_t t = 0; t < k.n; ++t) {
      std::vector<int32_t> all(sz((k.p0 + t + 1) / 4));
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      const int64_t count = std::min<int64_t>(in.topk, static_cast<int64_t>(all.size()) - t % 2);
      std::copy_n(all.begin(), count, in.sel.begin() + t * in.topk);
      in.sel_count.push_back(static_cast<int32_t>(count));
    }
  }
  for (int64_t i = 0; i < k.c.qk_rope_head_dim / 2; ++i)
    in.freqs.push_back(std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(k.c.qk_rope_head_dim)));
  return in;
}

AttentionRows rows_of(const Case& k, const Inputs& in) {
  return {in.kv.data(),   in.ring.data(),
          in.comp.data(), kv_row(in.layout, "test"),
          in.sel.data(),  in.sel_count.data(),
          in.topk,        k.p0,
          in.W,           k.ratio};
}

// The host's op on the same inputs.
std::vector<float> host_attention(const Case& k, const Inputs& in) {
  const planner::CpuTileLayout tl = planner::cpu_tile_layout(k.c);
  const int64_t threads = tbb::this_task_arena::max_concurrency();
  std::vector<float> scratch(sz(tl.per_thread * threads)), o(sz(k.n * in.heads * in.hd));
  ops::Attention a{in.q.data(),
                   in.kv.data(),
                   in.ring.data(),
                   in.comp.data(),
                   in.layout,
                   in.sel.data(),
                   in.sel_count.data(),
                   in.topk,
                   k.n,
                   k.p0,
                   in.heads,
                   in.hd,
                   in.W,
                   k.ratio,
                   in.sink.data(),
                   {in.freqs.data(), static_cast<int64_t>(in.freqs.size())},
                   {scratch.data(), tl.per_thread, threads, tl.key_rows, tl.scores},
                   o.data()};
  host_ops::attention(a);
  return o;
}

// The warp's butterfly: lane l adds lane l^off's value, off = 16 … 1 (warp_sum_f of attention.cu).
float butterfly_sum(std::vector<float> v) {
  for (int off = kAttentionLanes / 2; off > 0; off /= 2) {
    const std::vector<float> old = v;
    for (int l = 0; l < kAttentionLanes; ++l) v[sz(l)] = add_rn(old[sz(l)], old[sz(l ^ off)]);
  }
  return v[0];
}

// One warp's head over a staged tile (fold_tile of attention.cu); value k of q and acc is lane k % 32's.
void fold_tile(const std::vector<float>& tile, int64_t m, int64_t hd, const float* q, std::vector<float>& acc,
               SoftmaxState& st) {
  const float scale = attention_scale(hd);
  std::vector<float> scores(sz(m)), lanes(kAttentionLanes);
  float tile_max = -INFINITY;
  for (int64_t i = 0; i < m; ++i) {
    std::fill(lanes.begin(), lanes.end(), 0.0f);
    for (int64_t k = 0; k < hd; ++k)
      lanes[sz(k % kAttentionLanes)] = lane_dot(lanes[sz(k % kAttentionLanes)], q[k], tile[sz(i * hd + k)]);
    scores[sz(i)] = attention_score(butterfly_sum(lanes), scale);
    tile_max = fold_max(tile_max, scores[sz(i)]);
  }
  const float rescale = softmax_enter_tile(st, tile_max);
  for (float& v : acc) v = accumulate_rescaled(v, rescale);
  for (int64_t i = 0; i < m; ++i) {
    const float w = softmax_take(st, scores[sz(i)]);
    for (int64_t k = 0; k < hd; ++k) acc[sz(k)] = accumulate_row(acc[sz(k)], w, tile[sz(i * hd + k)]);
  }
}

// A token's per-head state: the accumulators and the online softmax.
struct TokenState {
  std::vector<std::vector<float>> acc;
  std::vector<SoftmaxState> st;
  TokenState(int64_t heads, int64_t hd) : acc(sz(heads), std::vector<float>(sz(hd), 0.0f)), st(sz(heads)) {}
};

// Rows begin … end of token t's list, each tile staged once, then folded into every head (attention_kernel).
TokenState fold_rows(const AttentionRows& r, const TokenRows& l, int64_t begin, int64_t end, const Inputs& in,
                     int64_t t) {
  const int64_t hd = in.hd, nh = in.heads, tile_rows = attention_tile_rows(hd);
  std::vector<float> tile(sz(tile_rows * hd));
  TokenState s(nh, hd);
  for (int64_t i0 = begin; i0 < end; i0 += tile_rows) {
    const int64_t m = std::min(tile_rows, end - i0);
    for (int64_t i = 0; i < m; ++i) {
      const RowRef row = token_row(r, l, i0 + i);
      for (int64_t c = 0; c < hd; ++c) tile[sz(i * hd + c)] = row_value(r.layout, row, c);
    }
    for (int64_t h = 0; h < nh; ++h) fold_tile(tile, m, hd, in.q.data() + (t * nh + h) * hd, s.acc[sz(h)], s.st[sz(h)]);
  }
  return s;
}

// The sink and the inverse RoPE (finish_head of attention.cu), into token t's rows of o.
void finish_token(const TokenState& s, const Inputs& in, int64_t t, int64_t p, std::vector<float>& o) {
  const int64_t hd = in.hd, nh = in.heads;
  for (int64_t h = 0; h < nh; ++h) {
    const float denom = attention_denominator(s.st[sz(h)], in.sink[sz(h)]);
    std::vector<float> v(sz(hd));
    for (int64_t c = 0; c < hd; ++c) v[sz(c)] = attention_output(s.acc[sz(h)][sz(c)], denom);
    float* out = o.data() + (t * nh + h) * hd;
    const auto count = static_cast<int64_t>(in.freqs.size());
    for (int64_t c = 0; c < hd; ++c)  // the other value of the pair is lane c ^ 1's (the shuffle)
      out[c] = unrope_value(v[sz(c)], v[sz(c ^ 1)], c, hd, count, in.freqs.data(), p);
  }
}

// attention_kernel of attention.cu, unsplit: per token, all its rows.
std::vector<float> kernel_on_cpu(const Case& k, const Inputs& in) {
  const AttentionRows r = rows_of(k, in);
  std::vector<float> o(sz(k.n * in.heads * in.hd));
  for (int64_t t = 0; t < k.n; ++t) {
    const TokenRows l = token_rows(r, t);
    finish_token(fold_rows(r, l, 0, l.size(), in, t), in, t, l.p, o);
  }
  return o;
}

// The split launch (attention_kernel per part, then attention_merge_kernel): each part's rows folded from a
// fresh state, the parts' states merged in order, then the sink and the inverse RoPE.
std::vector<float> split_kernel_on_cpu(const Case& k, const Inputs& in, int64_t max_parts, int64_t min_tiles) {
  const AttentionRows r = rows_of(k, in);
  const int64_t hd = in.hd, nh = in.heads;
  std::vector<float> o(sz(k.n * nh * hd));
  for (int64_t t = 0; t < k.n; ++t) {
    const TokenRows l = token_rows(r, t);
    const int64_t rows = attention_part_rows(l.size(), attention_tile_rows(hd), max_parts, min_tiles);
    const int64_t parts = attention_parts(l.size(), rows);
    EXPECT_LE(parts, max_parts);
    EXPECT_LE(parts, attention_part_slots(attention_rows_bound(r, k.n), attention_tile_rows(hd), max_parts, min_tiles));
    TokenState s = fold_rows(r, l, 0, std::min(rows, l.size()), in, t);
    for (int64_t part = 1; part < parts; ++part) {
      const TokenState b = fold_rows(r, l, part * rows, std::min((part + 1) * rows, l.size()), in, t);
      for (int64_t h = 0; h < nh; ++h) {
        const MergeScales sc = softmax_merge(s.st[sz(h)], b.st[sz(h)]);
        for (int64_t c = 0; c < hd; ++c)
          s.acc[sz(h)][sz(c)] = merge_accumulator(s.acc[sz(h)][sz(c)], b.acc[sz(h)][sz(c)], sc);
      }
    }
    finish_token(s, in, t, l.p, o);
  }
  return o;
}

// Attention in float64 over the same stored rows (decoded by the host's decode_kv_row).
std::vector<double> reference(const Case& k, const Inputs& in) {
  const AttentionRows r = rows_of(k, in);
  const int64_t hd = in.hd, nh = in.heads, rope = 2 * static_cast<int64_t>(in.freqs.size());
  std::vector<double> o;
  std::vector<float> row(sz(hd));
  for (int64_t t = 0; t < k.n; ++t) {
    const TokenRows l = token_rows(r, t);
    std::vector<std::vector<double>> rows;
    for (int64_t i = 0; i < l.size(); ++i) {
      const RowRef ref = token_row(r, l, i);
      if (ref.f)
        std::copy_n(ref.f, hd, row.begin());
      else
        decode_kv_row(in.layout, ref.bytes, row.data());
      rows.emplace_back(row.begin(), row.end());
    }
    for (int64_t h = 0; h < nh; ++h) {
      const float* q = in.q.data() + (t * nh + h) * hd;
      std::vector<double> s;
      for (const auto& x : rows) s.push_back(std::inner_product(x.begin(), x.end(), q, 0.0) / std::sqrt(double(hd)));
      const double mx = std::max(*std::max_element(s.begin(), s.end()), double(in.sink[sz(h)]));
      double denom = std::exp(in.sink[sz(h)] - mx);
      std::vector<double> acc(sz(hd), 0.0);
      for (size_t i = 0; i < rows.size(); ++i) {
        const double w = std::exp(s[i] - mx);
        denom += w;
        for (int64_t c = 0; c < hd; ++c) acc[sz(c)] += w * rows[i][sz(c)];
      }
      for (double& v : acc) v /= denom;
      for (int64_t i = 0; i < rope / 2; ++i) {
        const double angle = -static_cast<double>(l.p) * in.freqs[sz(i)];
        double& a = acc[sz(hd - rope + 2 * i)];
        double& b = acc[sz(hd - rope + 2 * i + 1)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(angle) - b0 * std::sin(angle);
        b = a0 * std::sin(angle) + b0 * std::cos(angle);
      }
      o.insert(o.end(), acc.begin(), acc.end());
    }
  }
  return o;
}

// Largest differences of `got` from the host op's output and from float64's, in units of the largest |row|.
struct Differences {
  double host = 0, exact = 0;
};

Differences differences(const std::vector<float>& got, const std::vector<float>& host, const std::vector<double>& exact,
                        const Inputs& in, const std::string& what) {
  EXPECT_EQ(got.size(), host.size()) << what;
  Differences d;
  for (size_t i = 0; i < got.size() && i < host.size(); ++i) {
    d.host = std::max(d.host, std::fabs(double(got[i]) - host[i]) / in.row_max);
    d.exact = std::max(d.exact, std::fabs(got[i] - exact[i]) / in.row_max);
    EXPECT_TRUE(std::isfinite(got[i])) << what << " output " << i;
  }
  return d;
}

// The kernel's order against the exact value: the op suite's float32 bound, 2e-6 of the largest |row value|
// (each output is a weighted mean of up to ~1200 rows; the scores' FMA chains and butterfly, the exponentials,
// the sums and the inverse RoPE keep it within a few 1e-7 of that). Against the host, whose dot products and
// tile boundaries round differently, 1e-6.
constexpr double kHostBound = 1e-6, kExactBound = 2e-6;

TEST(CudaMath, AttentionKernelOrderMatchesTheHostOp) {
  Differences worst;
  for (const Case& k : cases())
    for (const planner::KvType t : planner::kKvTypesByFidelity) {
      const Inputs in = make_inputs(k, t);
      const std::string what = k.name + " " + std::string(planner::kv_type_name(t));
      const Differences d = differences(kernel_on_cpu(k, in), host_attention(k, in), reference(k, in), in, what);
      EXPECT_LE(d.host, kHostBound) << what << " against the host op";
      EXPECT_LE(d.exact, kExactBound) << what << " against float64";
      worst.host = std::max(worst.host, d.host), worst.exact = std::max(worst.exact, d.exact);
    }
  std::printf("kernel order: largest difference from the host op %.3g, from float64 %.3g (of the largest |row|)\n",
              worst.host, worst.exact);
}

// Token t … t + n − 1 of `in` as a launch of their own: the earlier tokens' rows are in the ring, stored.
Inputs chunk_of(const Case& k, const Inputs& in, int64_t t, int64_t n, Case& chunk) {
  chunk = k, chunk.p0 = k.p0 + t, chunk.n = n;
  Inputs c = in;
  std::vector<float> row(sz(in.hd));
  for (int64_t i = 0; i < t; ++i) {
    std::copy_n(in.kv.begin() + i * in.hd, in.hd, row.begin());
    encode_kv_row(in.layout, row.data(), c.ring.data() + (k.p0 + i) % in.W * in.layout.bytes);
  }
  c.kv.assign(in.kv.begin() + t * in.hd, in.kv.begin() + (t + n) * in.hd);
  c.q.assign(in.q.begin() + t * in.heads * in.hd, in.q.begin() + (t + n) * in.heads * in.hd);
  if (k.ratio == 4) {
    c.sel.assign(in.sel.begin() + t * in.topk, in.sel.begin() + (t + n) * in.topk);
    c.sel_count.assign(in.sel_count.begin() + t, in.sel_count.begin() + t + n);
  }
  return c;
}

// The split launch (several part counts and sizes) against the host op and float64 within the unsplit kernel's
// bounds, for every KV type: window only, CSA with 512 selected, HCA at 140000 and at the last position of a 1M
// context (8192 entries); and, with the same parts, each token's output bitwise the same whether the chunk is
// one launch or a launch per token (a part's rows depend only on the token's own rows: a prompt's first 40
// tokens have parts of 16 and 32 rows at 2 parts of whole tiles).
TEST(CudaMath, AttentionSplitMatchesTheHostOpAndIgnoresTheChunking) {
  std::vector<Case> all = cases();
  all.push_back({"flash hca 1M", all[3].c, 128, (int64_t{1} << 20) - 1, 1});
  all.back().c.num_attention_heads = 4;                 // 8320 rows: fewer heads keep the reference quick
  all.push_back({"flash prompt", all[0].c, 0, 0, 40});  // 1 … 40 rows: part sizes differ between the tokens
  const std::pair<int64_t, int64_t> splits[] = {{2, 4}, {5, 1}, {2, 1}, {kAttentionMaxParts, kAttentionMinPartTiles}};
  Differences worst;
  for (const Case& k : all)
    for (const planner::KvType t : planner::kKvTypesByFidelity) {
      const Inputs in = make_inputs(k, t);
      const std::vector<float> host = host_attention(k, in);
      const std::vector<double> exact = reference(k, in);
      for (const auto& [parts, tiles] : splits) {
        const std::string what = k.name + " " + std::string(planner::kv_type_name(t)) + " split " +
                                 std::to_string(parts) + "×" + std::to_string(tiles);
        const std::vector<float> got = split_kernel_on_cpu(k, in, parts, tiles);
        const Differences d = differences(got, host, exact, in, what);
        EXPECT_LE(d.host, kHostBound) << what << " against the host op";
        EXPECT_LE(d.exact, kExactBound) << what << " against float64";
        worst.host = std::max(worst.host, d.host), worst.exact = std::max(worst.exact, d.exact);
        for (int64_t i = 0; i < k.n && k.n > 1; ++i) {
          Case ck;
          const Inputs ci = chunk_of(k, in, i, 1, ck);
          const std::vector<float> one = split_kernel_on_cpu(ck, ci, parts, tiles);
          ASSERT_TRUE(std::equal(one.begin(), one.end(), got.begin() + i * in.heads * in.hd))
              << what << ": token " << i << " alone differs from the chunk's";
        }
      }
    }
  std::printf("split: largest difference from the host op %.3g, from float64 %.3g (of the largest |row|)\n", worst.host,
              worst.exact);
}

// The launch's choice: the fewest parts (a power of two) that fill twice the SMs, fewer where the partials do
// not fit the scratch, none where the blocks fill the SMs, the scratch holds no two parts or a token has one part.
TEST(CudaMath, AttentionSplitChoice) {
  AttentionRows hca;
  hca.p0 = (int64_t{1} << 20) - 1, hca.window_size = 128, hca.ratio = 128;
  const int64_t partial = 64 * (512 + kAttentionPartialHeader);  // a part's 64 heads
  EXPECT_EQ(attention_split_parts(hca, 1, 64, 512, 8, 132, 1 << 24), 32);
  EXPECT_EQ(attention_split_parts(hca, 1, 64, 512, 8, 16, 1 << 24), 4);
  EXPECT_EQ(attention_split_parts(hca, 1, 64, 512, 8, 132, 31 * partial), 16);
  EXPECT_EQ(attention_split_parts(hca, 1, 64, 512, 8, 132, partial), 0);
  EXPECT_EQ(attention_split_parts(hca, 33, 64, 512, 264, 132, 1 << 30), 0);
  AttentionRows start = hca;
  start.p0 = 0, start.ratio = 0;  // one row
  EXPECT_EQ(attention_split_parts(start, 1, 64, 512, 8, 132, 1 << 24), 0);
  AttentionRows csa = hca;
  csa.ratio = 4, csa.topk = 512;  // 640 rows: 40 tiles of 16, parts of 4 tiles at most 10
  EXPECT_EQ(attention_part_slots(attention_rows_bound(csa, 1), 16, 32, kAttentionMinPartTiles), 10);
}

// A pair of the output rotates back by the angle the Rope kernel turned it by (norm_rope_math.h): rotating a pair
// forward then back is the identity up to float rounding, and dims before the rope part pass through.
TEST(CudaMath, AttentionUnropeUndoesRope) {
  const double freqs[] = {1.0, 0.25, 1e-3};
  const int64_t hd = 10, count = 3, pos = 12345;
  std::vector<float> v = {1.5f, -2.0f, 3.0f, 0.5f, 0.25f, -1.0f, 2.0f, 4.0f, -3.0f, 1.0f}, turned = v;
  for (int64_t i = 0; i < count; ++i) {
    float c = 0, s = 0;
    rope_cos_sin(freqs[i], pos, false, c, s);
    rope_pair(turned[sz(hd - 2 * count + 2 * i)], turned[sz(hd - 2 * count + 2 * i + 1)], c, s);
  }
  for (int64_t k = 0; k < hd; ++k) {
    const float back = unrope_value(turned[sz(k)], turned[sz(k ^ 1)], k, hd, count, freqs, pos);
    if (k < hd - 2 * count)
      EXPECT_EQ(back, v[sz(k)]) << k;
    else
      EXPECT_NEAR(back, v[sz(k)], 1e-6 * 4) << k;
  }
}

}  // namespace
}  // namespace ferry::runtime::cuda
