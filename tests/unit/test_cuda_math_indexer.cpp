// The compressor and lightning-indexer kernels' algorithms (runtime/kernels/cuda/compress.cu, indexer.cu), run on
// the CPU through the functions of compress_math.h and indexer_math.h that the kernels call, against the host's
// ops (runtime/backend/host_compress.cpp):
//  - Compress: the entries pooled all at once from the chunk and the previous chunk's state, and the state the
//    chunk leaves, are the host's bit for bit over chunks that split blocks, from position 0 and from a fresh
//    state deep in the context (here std::exp and std::cos are the host's: on the device only they differ).
//  - IndexerSelect: the prepared queries and weights are the host's bit for bit; a key's score agrees with the
//    host's within the float rounding of both sums (the host sums the dims in SIMD lanes, the device in one FMA
//    chain); the running top-k in parts and its merge choose exactly the k best of the device's scores, and the
//    chosen set is the host's except for entries whose scores are within those roundings of the cut. With the
//    fp8 cache the device scores with int8 MMAs: emulated here from the same int8 operands and factors (the
//    MMA's integer dot products exact), each operand checked to be its float value exactly, the score within its
//    three additions' rounding of the exact one, and within a tighter bound of the host's.
#include <gtest/gtest.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "planner/core/model_config.h"
#include "planner/kv_cache.h"
#include "runtime/backend/cuda/kv_row.h"
#include "runtime/backend/host_ops.h"
#include "runtime/kernels/cpu/kv_rows.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cpu/vec.h"
#include "runtime/kernels/cuda/compress_math.h"
#include "runtime/kernels/cuda/indexer_math.h"
#include "runtime/kernels/cuda/norm_rope_math.h"
#include "same_float.h"

namespace ferry::runtime::cuda {
namespace {

size_t sz(int64_t i) { return static_cast<size_t>(i); }

std::vector<float> normal(int64_t n, float sd, std::mt19937_64& rng) {
  std::normal_distribution<float> g(0.0f, sd);
  std::vector<float> v(sz(n));
  for (float& x : v) x = g(rng);
  return v;
}

// ---- Compress ----

// compress.cu's two kernels in turn: a block per completed entry, then the state, ratio 4 a column at a time
// (all its new values read before any is written).
void device_compress(const ops::Compress& op, const KvRow& row) {
  const CompressView v{op.a, op.s, op.ape, op.state_kv, op.state_score, op.n, op.p0, op.ratio, op.dim, op.width};
  int64_t begin = 0, end = 0;
  compress_entries(op.p0, op.n, op.ratio, begin, end);
  std::vector<float> e(sz(op.dim));
  for (int64_t j = begin; j < end; ++j) {
    double ss = 0;
    for (int64_t k = 0; k < op.dim; ++k) e[sz(k)] = compress_pool(v, j, k);
    for (int64_t k = 0; k < op.dim; ++k) ss = dadd_rn(ss, square(e[sz(k)]));
    const float inv = rms_inverse(ss, op.dim, op.eps);
    for (int64_t k = 0; k < op.dim; ++k) e[sz(k)] = rms_scale(e[sz(k)], inv, op.norm[k]);
    const int64_t off = op.dim - 2 * op.freqs.count;
    for (int64_t i = 0; i < op.freqs.count; ++i) {
      float c = 0, s = 0;
      rope_cos_sin(op.freqs.freqs[i], op.ratio * j, false, c, s);
      rope_pair(e[sz(off + 2 * i)], e[sz(off + 2 * i + 1)], c, s);
    }
    if (op.indexer) hadamard(e.data(), op.dim);
    for (int64_t u = kv_units(row) - 1; u >= 0; --u) encode_kv_unit(row, e.data(), op.rows + j * row.bytes, u);
  }
  const int64_t rows = op.ratio == 4 ? 8 : op.ratio;
  for (int64_t c = 0; c < op.width; ++c) {
    std::vector<float> value(sz(rows)), score(sz(rows));
    std::vector<char> changed(sz(rows));
    for (int64_t r = 0; r < rows; ++r) changed[sz(r)] = compress_new_state(v, r, c, value[sz(r)], score[sz(r)]);
    for (int64_t r = 0; r < rows; ++r)
      if (changed[sz(r)]) op.state_kv[r * op.width + c] = value[sz(r)], op.state_score[r * op.width + c] = score[sz(r)];
  }
}

struct CompressCase {
  int64_t ratio;
  bool indexer;
  int64_t p0;
  std::vector<int64_t> chunks;
};

TEST(CudaMath, CompressIsTheHostsBitForBit) {
  const core::ModelConfig c = core::preset_config("deepseek-v4-flash");
  const cpu::Rope rope(c, true);
  const ops::RopeFreqs freqs{rope.freqs().data(), static_cast<int64_t>(rope.freqs().size())};
  const std::vector<CompressCase> cases = {{4, false, 0, {1, 3, 7, 2, 13, 4, 1}}, {4, true, 0, {5, 1, 1, 1, 16, 3}},
                                           {4, false, 20480, {2, 9, 4}},          {4, true, 20482, {6, 11}},
                                           {128, false, 0, {1, 130, 5, 100, 64}}, {128, false, 20480, {127, 2, 200}}};
  for (const CompressCase& k : cases)
    for (const planner::KvType t : planner::kKvTypesByFidelity) {
      const planner::KvRowLayout l =
          k.indexer ? planner::KvRowLayout::indexer_row(c, t) : planner::KvRowLayout::main_row(c, t);
      const KvRow row = kv_row(l, "test");
      const int64_t dim = l.dims, width = (k.ratio == 4 ? 2 : 1) * dim, state_rows = k.ratio == 4 ? 8 : k.ratio;
      int64_t total = 0;
      for (const int64_t n : k.chunks) total += n;
      const int64_t capacity = (k.p0 + total) / k.ratio;
      std::mt19937_64 rng(71);
      const std::vector<float> a = normal(total * width, 1.0f, rng), s = normal(total * width, 2.0f, rng);
      const std::vector<float> ape = normal(k.ratio * width, 0.5f, rng);
      std::vector<float> norm = normal(dim, 0.2f, rng);
      for (float& x : norm) x += 1;
      std::vector<float> host_kv(sz(state_rows * width)), host_score = host_kv, dev_kv = host_kv, dev_score = host_kv;
      std::vector<uint8_t> host_rows(sz(capacity * l.bytes), 0xAB), dev_rows = host_rows;
      int64_t p = k.p0;
      for (const int64_t n : k.chunks) {
        const int64_t t0 = p - k.p0;
        ops::Compress op{a.data() + t0 * width,
                         s.data() + t0 * width,
                         ape.data(),
                         norm.data(),
                         n,
                         p,
                         k.ratio,
                         dim,
                         width,
                         c.rms_norm_eps,
                         freqs,
                         k.indexer,
                         host_kv.data(),
                         host_score.data(),
                         l,
                         host_rows.data(),
                         capacity};
        host_ops::compress(op);
        op.state_kv = dev_kv.data(), op.state_score = dev_score.data(), op.rows = dev_rows.data();
        device_compress(op, row);
        p += n;
        const std::string what = std::string(planner::kv_type_name(t)) + (k.indexer ? " indexer" : " main") +
                                 " ratio " + std::to_string(k.ratio) + " chunk ending at " + std::to_string(p);
        const auto diff = std::mismatch(dev_rows.begin(), dev_rows.end(), host_rows.begin());
        ASSERT_TRUE(diff.first == dev_rows.end()) << what << ": stored byte " << (diff.first - dev_rows.begin())
                                                  << " (entry " << (diff.first - dev_rows.begin()) / l.bytes << ") is "
                                                  << int(*diff.first) << ", want " << int(*diff.second);
        ASSERT_EQ(0, std::memcmp(dev_kv.data(), host_kv.data(), dev_kv.size() * sizeof(float))) << what << ": state kv";
        ASSERT_EQ(0, std::memcmp(dev_score.data(), host_score.data(), dev_score.size() * sizeof(float)))
            << what << ": state scores";
      }
    }
}

// ---- IndexerSelect ----

struct IndexerShape {
  int64_t heads, dim, topk;
};

// indexer.cu's prepare kernel, row by row.
void device_prepare(float* q, float* w, int64_t n, int64_t p0, const IndexerShape& s, const ops::RopeFreqs& f,
                    bool round_fp4) {
  const float ws = indexer_weight_scale(s.heads, s.dim);
  for (int64_t r = 0; r < n * s.heads; ++r) {
    float* x = q + r * s.dim;
    const int64_t off = s.dim - 2 * f.count;
    for (int64_t i = 0; i < f.count; ++i) {
      float c = 0, sn = 0;
      rope_cos_sin(f.freqs[i], p0 + r / s.heads, false, c, sn);
      rope_pair(x[off + 2 * i], x[off + 2 * i + 1], c, sn);
    }
    hadamard(x, s.dim);
    for (int64_t b = 0; round_fp4 && b * kKvFp4Block < s.dim; ++b)
      round_query_block(x + b * kKvFp4Block, std::min(kKvFp4Block, s.dim - b * kKvFp4Block));
    w[r] = mul_rn(w[r], ws);
  }
}

// A block's running top-k as indexer.cu keeps it: candidates offered a round of kRound at a time, admitted
// against the k-th best of the last compaction, compacted by rank when more than 2·k are held.
class Running {
 public:
  static constexpr int64_t kRound = 128;
  explicit Running(int64_t k) : k_(k) {}
  void offer(float s, int32_t id) {
    if (!indexer_admits(full_, ts_, ti_, s, id)) return;
    scores_.push_back(s), ids_.push_back(id);
    EXPECT_LE(static_cast<int64_t>(ids_.size()), 2 * k_ + kRound) << "running top-k over capacity";
  }
  void end_round() { compact(2 * k_); }
  // The best k (fewer if fewer were offered).
  std::vector<std::pair<float, int32_t>> best() {
    compact(k_);
    std::vector<std::pair<float, int32_t>> v;
    for (size_t i = 0; i < ids_.size(); ++i) v.emplace_back(scores_[i], ids_[i]);
    return v;
  }

 private:
  void compact(int64_t limit) {
    const int64_t m = static_cast<int64_t>(ids_.size());
    if (m <= limit) return;
    std::vector<float> ks(sz(k_));
    std::vector<int32_t> ki(sz(k_));
    for (int64_t i = 0; i < m; ++i) {
      const int64_t rank = indexer_rank(scores_.data(), ids_.data(), m, i);
      if (rank < k_) ks[sz(rank)] = scores_[sz(i)], ki[sz(rank)] = ids_[sz(i)];
    }
    scores_ = ks, ids_ = ki;
    full_ = true, ts_ = ks.back(), ti_ = ki.back();
  }
  int64_t k_;
  std::vector<float> scores_;
  std::vector<int32_t> ids_;
  bool full_ = false;
  float ts_ = 0;
  int32_t ti_ = 0;
};

// indexer.cu's score kernel (a part of a token's keys) and merge kernel; `score(j)` is a key's device score.
template <class Score>
std::vector<int32_t> device_select(int64_t visible, int64_t topk, int64_t parts, Score&& score) {
  if (visible <= topk) {
    std::vector<int32_t> all(sz(visible));
    for (int64_t j = 0; j < visible; ++j) all[sz(j)] = static_cast<int32_t>(j);
    return all;
  }
  Running merged(topk);
  for (int64_t part = 0; part < parts; ++part) {
    int64_t begin = 0, end = 0;
    indexer_part_range(visible, part, parts, begin, end);
    Running run(topk);
    for (int64_t j0 = begin; j0 < end; j0 += Running::kRound) {
      for (int64_t j = j0; j < std::min(end, j0 + Running::kRound); ++j) run.offer(score(j), static_cast<int32_t>(j));
      run.end_round();
    }
    int64_t offered = 0;
    for (const auto& [s, id] : run.best()) {
      merged.offer(s, id);
      if (++offered % Running::kRound == 0) merged.end_round();
    }
    merged.end_round();
  }
  std::vector<int32_t> sel;
  for (const auto& [s, id] : merged.best()) sel.push_back(id);
  return sel;
}

struct IndexerCase {
  IndexerShape shape;
  int64_t p0, n;
  int64_t classes;  // > 0: key j is row j % classes, so that scores tie exactly
};

// A case's inputs: queries, weights, and the stored keys (encoded from random rows, repeated for ties).
struct IndexerInputs {
  planner::KvRowLayout l;
  int64_t entries = 0;
  std::vector<float> q, w;
  std::vector<uint8_t> keys;
};

IndexerInputs indexer_inputs(core::ModelConfig c, const IndexerCase& k, planner::KvType t) {
  const IndexerShape& s = k.shape;
  c.index_head_dim = s.dim;
  IndexerInputs in;
  in.l = planner::KvRowLayout::indexer_row(c, t);
  in.entries = (k.p0 + k.n) / 4;
  std::mt19937_64 rng(72);
  in.q = normal(k.n * s.heads * s.dim, 1.0f, rng), in.w = normal(k.n * s.heads, 1.0f, rng);
  const std::vector<float> distinct = normal(in.entries * s.dim, 1.0f, rng);
  in.keys.resize(sz(in.entries * in.l.bytes));
  for (int64_t j = 0; j < in.entries; ++j) {
    const int64_t src = k.classes ? j % k.classes : j;
    std::vector<float> x(distinct.begin() + src * s.dim, distinct.begin() + (src + 1) * s.dim);
    encode_kv_row(in.l, x.data(), in.keys.data() + j * in.l.bytes);
  }
  return in;
}

// What the host's op leaves: the prepared queries and weights, the choice.
struct HostChoice {
  std::vector<float> q, w;
  std::vector<int32_t> sel, count;
};

HostChoice host_indexer(IndexerInputs& in, const IndexerCase& k, planner::KvType t, const ops::RopeFreqs& freqs,
                        int64_t tile) {
  const IndexerShape& s = k.shape;
  HostChoice h{in.q, in.w, std::vector<int32_t>(sz(k.n * s.topk), -1), std::vector<int32_t>(sz(k.n))};
  std::vector<float> key_tile(sz(tile * s.dim));
  const int64_t threads = tbb::this_task_arena::max_concurrency();
  std::vector<float> scratch(sz(threads * tile));
  host_ops::indexer_select({h.q.data(), h.w.data(), in.keys.data(), in.l, t, k.n, k.p0, s.heads, s.dim, s.topk, freqs,
                            key_tile.data(), tile, ops::TileScratch{scratch.data(), tile, threads, 0, tile},
                            h.sel.data(), h.count.data()});
  return h;
}

// The int8 path's operands (indexer.cu's int8_queries / int8_keys): int8 rows [rows, dim] and the factors of
// their blocks [rows, dim / 32]; every operand checked to give back its float value exactly: i·factor.
struct Int8Operands {
  int64_t dim = 0, blocks = 0;
  std::vector<int8_t> codes;
  std::vector<float> factors;
};

void unpack(const uint32_t* words, int8_t* out) {
  for (int64_t i = 0; i < kKvFp4Block; ++i) out[i] = static_cast<int8_t>(words[i / 4] >> (8 * (i % 4)) & 0xFF);
}

Int8Operands int8_operands(int64_t rows, int64_t dim) {
  return {dim, dim / kKvFp4Block, std::vector<int8_t>(sz(rows * dim)), std::vector<float>(sz(rows * dim / 32))};
}

void expect_exact(const Int8Operands& o, int64_t r, const float* values, const std::string& what) {
  for (int64_t i = 0; i < o.dim; ++i) {
    const int8_t c = o.codes[sz(r * o.dim + i)];
    ASSERT_LE(std::abs(int{c}), 12) << what << " row " << r << " dim " << i;
    ASSERT_EQ(mul_rn(float(c), o.factors[sz(r * o.blocks + i / kKvFp4Block)]), values[i])
        << what << " row " << r << " dim " << i;
  }
}

Int8Operands query_operands(const float* q, int64_t heads, int64_t dim) {
  Int8Operands o = int8_operands(heads, dim);
  uint32_t words[kKvFp4Block / 4];
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t b = 0; b < o.blocks; ++b) {
      o.factors[sz(h * o.blocks + b)] = fp4_query_block(q + h * dim + b * kKvFp4Block, words);
      unpack(words, o.codes.data() + h * dim + b * kKvFp4Block);
    }
    expect_exact(o, h, q + h * dim, "query");
  }
  return o;
}

Int8Operands key_operands(const KvRow& row, const uint8_t* keys, const std::vector<float>& decoded, int64_t entries) {
  Int8Operands o = int8_operands(entries, row.dims);
  uint32_t words[kKvFp4Block / 4];
  for (int64_t j = 0; j < entries; ++j) {
    for (int64_t b = 0; b < o.blocks; ++b) {
      o.factors[sz(j * o.blocks + b)] = fp4_key_block(row, keys + j * row.bytes, b, words);
      unpack(words, o.codes.data() + j * row.dims + b * kKvFp4Block);
    }
    expect_exact(o, j, decoded.data() + j * row.dims, "key");
  }
  return o;
}

// The int8 path's score of key j: per head and block the MMA's integer (exact, here a plain sum), its float
// value, the blocks summed in order, then the heads in order (indexer.cu's int8_dots and score loop).
float int8_score(const Int8Operands& q, const float* w, int64_t heads, const Int8Operands& k, int64_t j) {
  float score = 0;
  for (int64_t h = 0; h < heads; ++h) {
    float values[kIndexerInt8MaxBlocks] = {};
    for (int64_t b = 0; b < q.blocks; ++b) {
      int32_t dot = 0;
      for (int64_t i = b * kKvFp4Block; i < (b + 1) * kKvFp4Block; ++i)
        dot += int32_t{q.codes[sz(h * q.dim + i)]} * k.codes[sz(j * k.dim + i)];
      values[b] = fp4_block_value(kIndexerIntBias + static_cast<uint32_t>(dot), q.factors[sz(h * q.blocks + b)],
                                  k.factors[sz(j * k.blocks + b)]);
    }
    score = indexer_add_head(score, w[h], fp4_head_dot(values, q.blocks));
  }
  return score;
}

// One token's scores of its visible keys: the device's, the host's, and a bound on their difference. The fp32
// path's and the host's scores are float sums of dim products per head, then of heads terms, so each is within
// (dim + heads + 2)·2^-24 of the sum of the terms' magnitudes from the exact value (the usual bound on a float
// sum), and they are within twice that of each other. The int8 path's block values are exact and only their
// blocks − 1 sums round, so its score is within (blocks + heads + 2)·2^-24 of that magnitude from the exact
// value (checked here against float64), and the bound on its difference from the host's is tighter.
struct TokenScores {
  std::vector<float> dev, host;
  std::vector<double> bound;
};

TokenScores token_scores(const float* q, const float* w, const IndexerShape& s, const std::vector<float>& decoded,
                         int64_t visible, const Int8Operands* keys) {
  TokenScores sc{std::vector<float>(sz(visible)), std::vector<float>(sz(visible)), std::vector<double>(sz(visible))};
  cpu::indexer_scores(q, w, s.heads, s.dim, decoded.data(), visible, sc.host.data());
  const Int8Operands qi = keys ? query_operands(q, s.heads, s.dim) : Int8Operands{};
  const double u = std::ldexp(1.0, -24), dev_terms = keys ? double(s.dim / kKvFp4Block) : double(s.dim);
  for (int64_t j = 0; j < visible; ++j) {
    const float* key = decoded.data() + j * s.dim;
    sc.dev[sz(j)] = keys ? int8_score(qi, w, s.heads, *keys, j) : indexer_key_score(q, w, s.heads, s.dim, key);
    double mag = 0, exact = 0;
    for (int64_t h = 0; h < s.heads; ++h) {
      double m = 0, d = 0;
      for (int64_t i = 0; i < s.dim; ++i)
        m += std::fabs(double(q[h * s.dim + i]) * key[i]), d += double(q[h * s.dim + i]) * key[i];
      mag += std::fabs(double(w[h])) * m, exact += double(w[h]) * std::max(d, 0.0);
    }
    const double dev_bound = (dev_terms + double(s.heads) + 2) * u * mag;
    sc.bound[sz(j)] = dev_bound + double(s.dim + s.heads + 2) * u * mag;
    if (keys) {
      EXPECT_LE(std::fabs(double(sc.dev[sz(j)]) - exact), dev_bound + double(s.heads * s.dim) * 0x1p-52 * mag)
          << "int8 path, key " << j << ": not within its rounding of the exact score";
    }
  }
  return sc;
}

// The device's choice (sorted): in `parts` parts and merged, in 3 and 8, or in one, exactly the k best of its
// scores; and the tie rule itself, which the comparison with the host cannot see (a tie only matters at the cut,
// where the host's scores may round the other way): of two entries with one score the later is never kept alone.
std::vector<int32_t> device_choice(const TokenScores& sc, int64_t visible, int64_t topk, int64_t parts,
                                   const std::string& what, int64_t& ties) {
  auto score = [&](int64_t j) { return sc.dev[sz(j)]; };
  std::vector<int32_t> chosen = device_select(visible, topk, 1, score);
  std::sort(chosen.begin(), chosen.end());
  for (const int64_t p : {parts, int64_t{3}, int64_t{8}}) {
    std::vector<int32_t> got = device_select(visible, topk, p, score);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, chosen) << what << " in " << p << " parts";
  }
  std::vector<int32_t> best(sz(visible));
  for (int64_t j = 0; j < visible; ++j) best[sz(j)] = static_cast<int32_t>(j);
  std::sort(best.begin(), best.end(),
            [&](int32_t x, int32_t y) { return indexer_before(sc.dev[sz(x)], x, sc.dev[sz(y)], y); });
  best.resize(sz(std::min(visible, topk)));
  std::sort(best.begin(), best.end());
  EXPECT_EQ(chosen, best) << what << ": not the k best by the device's scores";
  for (const int32_t j : chosen)
    for (int32_t i = 0; i < j; ++i)
      if (sc.dev[sz(i)] == sc.dev[sz(j)]) {
        ++ties;
        EXPECT_TRUE(std::binary_search(chosen.begin(), chosen.end(), i))
            << what << ": entry " << j << " kept, " << i << " of the same score not";
      }
  return chosen;
}

// Against the host's choice: the same count, and an entry in one set only has a score within both scores'
// bounds of the host's cut (the smallest score it kept): only the roundings of the two sums told them apart.
void compare_with_host(const TokenScores& sc, const std::vector<int32_t>& chosen, const int32_t* host_sel,
                       int32_t host_count, const std::string& what, int64_t& near_cut) {
  ASSERT_EQ(static_cast<int64_t>(chosen.size()), host_count) << what;
  const std::set<int32_t> host(host_sel, host_sel + host_count), dev(chosen.begin(), chosen.end());
  if (host == dev) return;
  float cut = INFINITY;
  double cut_bound = 0;
  for (const int32_t j : host)
    if (sc.host[sz(j)] < cut) cut = sc.host[sz(j)], cut_bound = sc.bound[sz(j)];
  for (size_t j = 0; j < sc.host.size(); ++j) {
    if (host.count(static_cast<int32_t>(j)) == dev.count(static_cast<int32_t>(j))) continue;
    ++near_cut;
    EXPECT_LE(std::fabs(double(sc.host[j]) - cut), 2 * (sc.bound[j] + cut_bound))
        << what << " entry " << j << " chosen by one side only";
  }
}

TEST(CudaMath, IndexerSelectsTheHostsEntries) {
  const core::ModelConfig c = core::preset_config("deepseek-v4-flash");
  const cpu::Rope rope(c, true);
  const ops::RopeFreqs freqs{rope.freqs().data(), static_cast<int64_t>(rope.freqs().size())};
  const IndexerShape v4{c.index_n_heads, c.index_head_dim, c.index_topk}, small{4, 64, 16};
  const std::vector<IndexerCase> cases = {{small, 40, 30, 0}, {small, 300, 5, 0}, {small, 300, 3, 9},
                                          {v4, 2100, 3, 0},   {v4, 5000, 1, 0},   {v4, 2200, 2, 37}};
  const int64_t tile = 97;
  int64_t near_cut = 0, ties = 0;
  double worst[2] = {0, 0};  // the largest |device − host| / bound: fp32 path, int8 path
  for (const IndexerCase& k : cases)
    for (const planner::KvType t : planner::kKvTypesByFidelity) {
      const IndexerShape& s = k.shape;
      IndexerInputs in = indexer_inputs(c, k, t);
      const HostChoice host = host_indexer(in, k, t, freqs, tile);
      std::vector<float> q = in.q, w = in.w;
      device_prepare(q.data(), w.data(), k.n, k.p0, s, freqs, t == planner::KvType::FP8);
      const std::string what = std::string(planner::kv_type_name(t)) + " heads " + std::to_string(s.heads) + " at " +
                               std::to_string(k.p0) + (k.classes ? " with ties" : "");
      for (size_t i = 0; i < q.size(); ++i) ASSERT_TRUE(same_float(q[i], host.q[i])) << what << " query " << i;
      for (size_t i = 0; i < w.size(); ++i) ASSERT_TRUE(same_float(w[i], host.w[i])) << what << " weight " << i;
      const KvRow row = kv_row(in.l, "test");
      std::vector<float> decoded(sz(in.entries * s.dim));
      for (int64_t j = 0; j < in.entries; ++j)
        for (int64_t i = 0; i < s.dim; ++i)
          decoded[sz(j * s.dim + i)] = decode_kv_value(row, in.keys.data() + j * in.l.bytes, i);
      const int64_t parts = indexer_parts(k.n, s.topk, in.entries, tile * s.dim);
      const bool int8 = indexer_int8_path(t == planner::KvType::FP8, row.format, s.heads, s.dim);
      ASSERT_EQ(int8, t == planner::KvType::FP8) << what << ": the int8 path is the fp8 cache's";
      const Int8Operands keys = int8 ? key_operands(row, in.keys.data(), decoded, in.entries) : Int8Operands{};
      for (int64_t tk = 0; tk < k.n; ++tk) {
        const std::string token = what + " token " + std::to_string(tk);
        const int64_t visible = (k.p0 + tk + 1) / 4;
        const TokenScores sc = token_scores(q.data() + tk * s.heads * s.dim, w.data() + tk * s.heads, s, decoded,
                                            visible, int8 ? &keys : nullptr);
        for (int64_t j = 0; j < visible; ++j) {
          const double diff = std::fabs(double(sc.dev[sz(j)]) - sc.host[sz(j)]);
          ASSERT_LE(diff, sc.bound[sz(j)]) << token << " key " << j;
          worst[int8] = std::max(worst[int8], diff / sc.bound[sz(j)]);
        }
        const std::vector<int32_t> chosen = device_choice(sc, visible, s.topk, parts, token, ties);
        compare_with_host(sc, chosen, host.sel.data() + tk * s.topk, host.count[sz(tk)], token, near_cut);
      }
    }
  EXPECT_GT(ties, 0) << "no tied scores among the chosen entries";
  std::printf(
      "entries chosen by one side only, all near the cut: %lld; tied pairs checked: %lld; largest score "
      "difference from the host's, of its bound: fp32 path %.3g, int8 path %.3g\n",
      static_cast<long long>(near_cut), static_cast<long long>(ties), worst[0], worst[1]);
}

// The int8 path's operands: twice each E2M1 code's value for all 16 codes, packed 4 a word in byte order; the
// exact integer-to-float conversion (the MMA's biased result) over every block dot product (|dot| <= 32·144) and
// beyond; the grid exponent of a rounded query block, the smallest x with amax <= 6·2^x.
TEST(CudaMath, IndexerInt8Operands) {
  for (int c = 0; c < 16; ++c) {
    const auto code = static_cast<uint8_t>(c);
    EXPECT_EQ(float(e2m1_to_int8(code)), 2 * e2m1_to_float(code)) << "code " << c;
  }
  EXPECT_EQ(pack_int8x4(1, -2, 12, -12), 0xF40CFE01u);
  for (int32_t i = -32 * 144; i <= 32 * 144; ++i)
    ASSERT_EQ(unbias_int(kIndexerIntBias + static_cast<uint32_t>(i)), float(i)) << i;
  for (const int32_t i : {(1 << 22) - 1, -(1 << 22) + 1})
    EXPECT_EQ(unbias_int(kIndexerIntBias + static_cast<uint32_t>(i)), float(i)) << i;
  EXPECT_EQ(fp4_grid_exponent(6.0f), 0);
  EXPECT_EQ(fp4_grid_exponent(4.0f), 0);
  EXPECT_EQ(fp4_grid_exponent(3.0f), -1);
  EXPECT_EQ(fp4_grid_exponent(0.5f), -3);
  EXPECT_EQ(fp4_grid_exponent(0.375f), -4);
  EXPECT_EQ(fp4_grid_exponent(6.0f * 0x1p-130f), -130);  // subnormal
  EXPECT_EQ(fp4_grid_exponent(0.0f), 0);
  // A block that never reaches its scale's top: every value still an integer multiple of 2^(x−1), within ±12.
  float block[kKvFp4Block] = {};
  block[3] = -0.5f * 8, block[7] = 1.5f * 8, block[9] = 0.5f * 8;
  uint32_t words[kKvFp4Block / 4];
  const float f = fp4_query_block(block, words);
  for (int64_t i = 0; i < kKvFp4Block; ++i)
    EXPECT_EQ(mul_rn(float(static_cast<int8_t>(words[i / 4] >> (8 * (i % 4)) & 0xFF)), f), block[i]) << i;
}

// The top-k order and its admission rule on their own: higher score first, the lower entry on equal scores.
TEST(CudaMath, IndexerOrderIsScoreThenEntry) {
  EXPECT_TRUE(indexer_before(2.0f, 9, 1.0f, 0));
  EXPECT_TRUE(indexer_before(1.0f, 3, 1.0f, 4));
  EXPECT_FALSE(indexer_before(1.0f, 4, 1.0f, 3));
  EXPECT_TRUE(indexer_before(0.0f, 3, -0.0f, 4));  // equal scores, as the host compares them
  const float scores[] = {1.0f, 3.0f, 1.0f, 2.0f};
  const int32_t ids[] = {7, 2, 5, 9};
  EXPECT_EQ(indexer_rank(scores, ids, 4, 0), 3);
  EXPECT_EQ(indexer_rank(scores, ids, 4, 2), 2);
  EXPECT_EQ(indexer_rank(scores, ids, 4, 1), 0);
  EXPECT_TRUE(indexer_admits(false, 5.0f, 0, -1.0f, 100));
  EXPECT_FALSE(indexer_admits(true, 1.0f, 4, 1.0f, 5));
  EXPECT_TRUE(indexer_admits(true, 1.0f, 4, 1.0f, 3));
}

}  // namespace
}  // namespace ferry::runtime::cuda
