// The KV-row ops on every backend against the float64 reference, for every KV type: the storage rounding of
// main and indexer rows, the sliding-window ring, and the compressors (ratio 4 overlapping, the HCA ratio
// plain; main rows and indexer keys) over two chunks that carry the running state. Stored rows are read with
// the format's host decoder (runtime/kernels/cpu/kv_rows.h: the bytes every backend writes).
#include <cmath>

#include "op_test_support.h"
#include "reference_op_math.h"
#include "runtime/kernels/cpu/kv_rows.h"

namespace ferry::runtime::ops_test {
namespace {

FERRY_OP_SUITE(KvOps);

planner::KvRowLayout layout_of(const core::ModelConfig& c, KvType t, bool indexer) {
  return indexer ? planner::KvRowLayout::indexer_row(c, t) : planner::KvRowLayout::main_row(c, t);
}

std::string layout_text(const Shape& s, const planner::KvRowLayout& l) {
  return s.name + " " + std::string(planner::kv_type_name(l.type)) + (l.indexer ? " indexer" : " main");
}

// The values stored rows decode to, on the host.
std::vector<float> decode_rows(const planner::KvRowLayout& l, const std::vector<uint8_t>& bytes, int64_t rows) {
  std::vector<float> v(sz(rows * l.dims));
  for (int64_t r = 0; r < rows; ++r) decode_kv_row(l, bytes.data() + r * l.bytes, v.data() + r * l.dims);
  return v;
}

// The input is exact, so the rounding is the reference's to the bit (the kernels divide by powers of two, or
// by the q types' f16 scale where only a quotient within 2^-24 of a midpoint could round the other way), and
// the stored bytes decode to the rounded values. Rows of very different ranges, an all-zero row and one below
// FP8's amax floor.
TYPED_TEST(KvOps, KvEncode) {
  for (const Shape& s : shapes())
    for (const KvType t : planner::kKvTypesByFidelity)
      for (const bool indexer : {false, true}) {
        const planner::KvRowLayout l = layout_of(s.c, t, indexer);
        std::mt19937_64 rng(21);
        const int64_t rows = 6;
        std::vector<float> x = normal(rows * l.dims, 1.0, rng);
        const double range[rows] = {1, 30, 1e-3, 0, 1e-7, 2};
        for (int64_t i = 0; i < rows * l.dims; ++i) x[sz(i)] *= static_cast<float>(range[i / l.dims]);
        const auto out = this->run(Kind::KvEncode, [&](DeviceMemory& m) {
          ops::KvEncode op{l, m.upload(x), rows, m.zeros<uint8_t>(rows * l.bytes)};
          m.run(op);
          return Outputs().add("x", m.read(op.x, rows * l.dims)).add("bytes", m.read(op.out, rows * l.bytes));
        });
        if (!out) return;
        Vec ref = to_double(x);
        const auto kind = indexer ? reference::RowKind::IndexerKey : reference::RowKind::Main;
        for (int64_t r = 0; r < rows; ++r)
          reference::round_kv_row(ref.data() + r * l.dims, l.dims, kind, t, s.c.qk_rope_head_dim, {});
        expect_exact(out->f32("x"), ref, layout_text(s, l) + " rounding");
        EXPECT_EQ(decode_rows(l, out->u8("bytes"), rows), out->f32("x")) << layout_text(s, l) << " stored bytes";
      }
}

// The chunk's last rows into the ring at slot p % window: a chunk that wraps, one longer than the window,
// one token far into the context. Bytes are copied exactly.
TYPED_TEST(KvOps, KvWindowStore) {
  for (const Shape& s : shapes()) {
    const int64_t W = s.c.sliding_window, bytes = planner::KvRowLayout::main_row(s.c, KvType::FP8).bytes;
    const std::pair<int64_t, int64_t> cases[] = {{3, W - 2}, {W + 5, 7}, {1, 1000003}};  // (n, p0)
    for (const auto& [n, p0] : cases) {
      std::mt19937_64 rng(22);
      std::vector<uint8_t> ring(sz(W * bytes)), rows(sz(n * bytes));
      for (uint8_t& b : ring) b = static_cast<uint8_t>(rng());
      for (uint8_t& b : rows) b = static_cast<uint8_t>(rng());
      const auto out = this->run(Kind::KvWindowStore, [&](DeviceMemory& m) {
        ops::KvWindowStore op{m.upload(rows), n, p0, W, bytes, m.upload(ring)};
        m.run(op);
        return Outputs().add("ring", m.read(op.ring, W * bytes));
      });
      if (!out) return;
      std::vector<uint8_t> ref = ring;
      reference::window_store(ref, rows, n, p0, W, bytes);
      EXPECT_EQ(out->u8("ring"), ref) << s.name << " window store of " << n << " rows at " << p0;
    }
  }
}

// One compressor's inputs over `total` positions from p0 (a multiple of the ratio), run as two chunks that split
// a block.
struct CompressCase {
  int64_t ratio, dim, width, p0, total, first;
  bool indexer;
};

// From the start, where ratio 4's first block has no previous one, and at position 20480, where RoPE turns
// even the lowest frequencies by a visible angle.
std::vector<CompressCase> compress_cases(const Shape& s) {
  const int64_t hd = s.c.head_dim, ihd = s.c.index_head_dim, r = s.hca_ratio;
  std::vector<CompressCase> cases;
  for (const int64_t p0 : {int64_t{0}, int64_t{20480}}) {
    cases.push_back({4, hd, 2 * hd, p0, 13, 6, false});
    cases.push_back({4, ihd, 2 * ihd, p0, 13, 7, true});
    cases.push_back({r, hd, hd, p0, 2 * r + 3, r + 1, false});
  }
  return cases;
}

struct CompressInputs {
  std::vector<float> a, s, ape, norm;
};

// The stored entries the reference expects (rounded), their values before rounding, and the noise float32
// may add to each: a few 1e-7 of its row's largest value (pooling in double, then norm, RoPE and the Hadamard
// butterflies in float), so 1e-5 of it; for the q types plus a flip of the f16 scale d = f16(amax/qmax), which
// moves each value q·d of its block by up to qmax·ulp(d) = amax·2^-10.
struct CompressExpected {
  Vec ref, exact, noise;
};

CompressExpected compress_reference(const Shape& s, const CompressCase& k, KvType t, const CompressInputs& in,
                                    const Vec& freqs) {
  const int64_t r = k.ratio;
  // Positions before p0 of ratio 4's previous block: what a fresh state holds, values and scores 0.
  const int64_t first = r == 4 && k.p0 > 0 ? k.p0 - r : k.p0;
  std::vector<Vec> a(sz(k.p0 - first), Vec(sz(k.width), 0.0)), sc = a;
  for (int64_t t0 = 0; t0 < k.total; ++t0) {
    a.push_back(slice(in.a, t0, k.width));
    sc.push_back(slice(in.s, t0, k.width));
    for (int64_t i = 0; i < k.width; ++i) sc.back()[sz(i)] += in.ape[sz((k.p0 + t0) % r * k.width + i)];
  }
  const Vec norm = to_double(in.norm);
  const auto kind = k.indexer ? reference::RowKind::IndexerKey : reference::RowKind::Main;
  const reference::CompressorShape shape{r, k.dim, &norm, s.c.rms_norm_eps, &freqs, kind, t, first};
  const bool q = t == KvType::Q8_0 || t == KvType::Q4_0;
  CompressExpected x;
  for (int64_t j = k.p0 / r; j < (k.p0 + k.total) / r; ++j) {
    const Vec e = reference::pooled_entry(a, sc, j, shape);
    Vec rounded = e;
    reference::round_kv_row(rounded.data(), k.dim, kind, t, s.c.qk_rope_head_dim, {});
    double amax = 0;
    for (double v : e) amax = std::max(amax, std::fabs(v));
    for (int64_t i = 0; i < k.dim; ++i) {
      double block_amax = 0;  // the q types' block of 32
      for (int64_t b = i / 32 * 32; q && b < i / 32 * 32 + 32; ++b)
        block_amax = std::max(block_amax, std::fabs(e[sz(b)]));
      x.noise.push_back(1e-5 * amax + block_amax * std::ldexp(1.0, -10));
    }
    x.ref.insert(x.ref.end(), rounded.begin(), rounded.end());
    x.exact.insert(x.exact.end(), e.begin(), e.end());
  }
  return x;
}

// Every block completed in either chunk is pooled, normalised, rotated, (indexer) Hadamard-transformed and
// stored rounded; values within noise of a rounding boundary may take the other neighbour (at most a few).
TYPED_TEST(KvOps, Compress) {
  for (const Shape& s : shapes())
    for (const CompressCase& k : compress_cases(s))
      for (const KvType t : planner::kKvTypesByFidelity) {
        const planner::KvRowLayout l = layout_of(s.c, t, k.indexer);
        const int64_t r = k.ratio, state_rows = r == 4 ? 2 * r : r;
        const int64_t j0 = k.p0 / r, capacity = (k.p0 + k.total) / r;
        std::mt19937_64 rng(23);
        CompressInputs in{normal(k.total * k.width, 1.0, rng), normal(k.total * k.width, 2.0, rng),
                          normal(r * k.width, 0.5, rng), normal(k.dim, 0.2, rng)};
        for (float& v : in.norm) v += 1;
        const Vec freqs = reference::rope_frequencies(s.c, true);
        const auto out = this->run(Kind::Compress, [&](DeviceMemory& m) {
          ops::Compress op{m.upload(in.a),
                           m.upload(in.s),
                           m.upload(in.ape),
                           m.upload(in.norm),
                           k.first,
                           k.p0,
                           r,
                           k.dim,
                           k.width,
                           s.c.rms_norm_eps,
                           rope_table(freqs),
                           k.indexer,
                           m.zeros<float>(state_rows * k.width),
                           m.zeros<float>(state_rows * k.width),
                           l,
                           m.zeros<uint8_t>(capacity * l.bytes),
                           capacity};
          m.run(op);
          op.a += k.first * k.width;  // the second chunk continues from the state
          op.s += k.first * k.width;
          op.p0 += k.first;
          op.n = k.total - k.first;
          m.run(op);
          return Outputs().add("rows", m.read(op.rows + j0 * l.bytes, (capacity - j0) * l.bytes));
        });
        if (!out) return;
        const CompressExpected x = compress_reference(s, k, t, in, freqs);
        const std::string what =
            layout_text(s, l) + " compress ratio " + std::to_string(r) + " from " + std::to_string(k.p0);
        expect_rounded(decode_rows(l, out->u8("rows"), capacity - j0), x.ref, x.exact, x.noise,
                       3 + static_cast<int64_t>(x.ref.size()) / 200, what);
      }
}

}  // namespace
}  // namespace ferry::runtime::ops_test
