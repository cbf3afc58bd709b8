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

using ops::Kind;
using planner::KvType;

size_t z(int64_t i) { return static_cast<size_t>(i); }

template <class F>
class KvOps : public OpTest<F> {};
TYPED_TEST_SUITE(KvOps, Backends, BackendNames);

KvRowLayout layout_of(const core::ModelConfig& c, KvType t, bool indexer) {
  return indexer ? KvRowLayout::indexer_row(c, t) : KvRowLayout::main_row(c, t);
}

std::string layout_text(const Shape& s, const KvRowLayout& l) {
  return s.name + " " + std::string(planner::kv_type_name(l.type)) + (l.indexer ? " indexer" : " main");
}

// The values stored rows decode to, on the host.
std::vector<float> decode_rows(const KvRowLayout& l, const std::vector<uint8_t>& bytes, int64_t rows) {
  std::vector<float> v(z(rows * l.dims));
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
        const KvRowLayout l = layout_of(s.c, t, indexer);
        std::mt19937_64 rng(21);
        const int64_t rows = 6;
        std::vector<float> x = normal(rows * l.dims, 1.0, rng);
        const double range[rows] = {1, 30, 1e-3, 0, 1e-7, 2};
        for (int64_t i = 0; i < rows * l.dims; ++i) x[z(i)] *= static_cast<float>(range[i / l.dims]);
        const auto out = this->run(Kind::KvEncode, [&](DeviceMemory& m) {
          ops::KvEncode op{l, m.upload(x), rows, m.zeros<uint8_t>(rows * l.bytes)};
          m.run(op);
          Outputs o;
          o.add("x", m.read(op.x, rows * l.dims));
          o.add("bytes", m.read(op.out, rows * l.bytes));
          return o;
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
    const int64_t W = s.c.sliding_window, bytes = KvRowLayout::main_row(s.c, KvType::FP8).bytes;
    const std::pair<int64_t, int64_t> cases[] = {{3, W - 2}, {W + 5, 7}, {1, 1000003}};  // (n, p0)
    for (const auto& [n, p0] : cases) {
      std::mt19937_64 rng(22);
      std::vector<uint8_t> ring(z(W * bytes)), rows(z(n * bytes));
      for (uint8_t& b : ring) b = static_cast<uint8_t>(rng());
      for (uint8_t& b : rows) b = static_cast<uint8_t>(rng());
      const auto out = this->run(Kind::KvWindowStore, [&](DeviceMemory& m) {
        ops::KvWindowStore op{m.upload(rows), n, p0, W, bytes, m.upload(ring)};
        m.run(op);
        Outputs o;
        o.add("ring", m.read(op.ring, W * bytes));
        return o;
      });
      if (!out) return;
      std::vector<uint8_t> ref = ring;
      reference::window_store(ref, rows, n, p0, W, bytes);
      EXPECT_EQ(out->u8("ring"), ref) << s.name << " window store of " << n << " rows at " << p0;
    }
  }
}

// One compressor's inputs over `total` positions, run as two chunks that split a block.
struct CompressCase {
  int64_t ratio, dim, width, total, first;
  bool indexer;
};

std::vector<CompressCase> compress_cases(const Shape& s) {
  const int64_t hd = s.c.head_dim, ihd = s.c.index_head_dim, r = s.hca_ratio;
  return {{4, hd, 2 * hd, 13, 6, false}, {4, ihd, 2 * ihd, 13, 7, true}, {r, hd, hd, 2 * r + 3, r + 1, false}};
}

// Every block completed in either chunk is pooled, normalised, rotated, (indexer) Hadamard-transformed and
// stored rounded. Float32 moves an entry by a few 1e-7 of its row's largest value (pooling in double, then
// norm, RoPE and the Hadamard butterflies in float): 1e-5 of that may put an exact value on the other side of
// a rounding boundary (a flip, at most a few per case); a q type's f16 scale d = f16(amax/qmax) may then
// also take the other neighbour, which moves each value q·d of its block by up to qmax·ulp(d) = amax·2^-10.
TYPED_TEST(KvOps, Compress) {
  for (const Shape& s : shapes())
    for (const CompressCase& k : compress_cases(s))
      for (const KvType t : planner::kKvTypesByFidelity) {
        const KvRowLayout l = layout_of(s.c, t, k.indexer);
        const int64_t r = k.ratio, entries = k.total / r, state_rows = r == 4 ? 2 * r : r;
        std::mt19937_64 rng(23);
        const std::vector<float> a = normal(k.total * k.width, 1.0, rng), sc = normal(k.total * k.width, 2.0, rng);
        const std::vector<float> ape = normal(r * k.width, 0.5, rng);
        std::vector<float> norm = normal(k.dim, 0.2, rng);
        for (float& v : norm) v += 1;
        const Vec freqs = reference::rope_frequencies(s.c, true);
        const auto out = this->run(Kind::Compress, [&](DeviceMemory& m) {
          ops::Compress op{m.upload(a),
                           m.upload(sc),
                           m.upload(ape),
                           m.upload(norm),
                           k.first,
                           0,
                           r,
                           k.dim,
                           k.width,
                           s.c.rms_norm_eps,
                           rope_table(freqs),
                           k.indexer,
                           m.zeros<float>(state_rows * k.width),
                           m.zeros<float>(state_rows * k.width),
                           l,
                           m.zeros<uint8_t>(entries * l.bytes),
                           entries};
          m.run(op);
          op.a += k.first * k.width;  // the second chunk continues from the state
          op.s += k.first * k.width;
          op.p0 = k.first;
          op.n = k.total - k.first;
          m.run(op);
          Outputs o;
          o.add("rows", m.read(op.rows, entries * l.bytes));
          return o;
        });
        if (!out) return;
        std::vector<Vec> ah, sh;
        for (int64_t p = 0; p < k.total; ++p) {
          ah.push_back(slice(a, p, k.width));
          sh.push_back(slice(sc, p, k.width));
          for (int64_t i = 0; i < k.width; ++i) sh.back()[z(i)] += ape[z(p % r * k.width + i)];
        }
        const auto kind = k.indexer ? reference::RowKind::IndexerKey : reference::RowKind::Main;
        const reference::CompressorShape shape{r, k.dim, nullptr, s.c.rms_norm_eps, &freqs, kind, t};
        const Vec norm_d = to_double(norm);
        Vec ref, exact, noise;
        for (int64_t j = 0; j < entries; ++j) {
          reference::CompressorShape sj = shape;
          sj.norm = &norm_d;
          const Vec e = reference::pooled_entry(ah, sh, j, sj);
          Vec rounded = e;
          reference::round_kv_row(rounded.data(), k.dim, kind, t, s.c.qk_rope_head_dim, {});
          double amax = 0;
          for (double v : e) amax = std::max(amax, std::fabs(v));
          const bool q = t == KvType::Q8_0 || t == KvType::Q4_0;
          for (int64_t i = 0; i < k.dim; ++i) {
            double block_amax = 0;  // the q types' 32-value block
            for (int64_t b = i / 32 * 32; b < i / 32 * 32 + 32 && q; ++b)
              block_amax = std::max(block_amax, std::fabs(e[z(b)]));
            noise.push_back(1e-5 * amax + (q ? block_amax * std::ldexp(1.0, -10) : 0.0));
          }
          ref.insert(ref.end(), rounded.begin(), rounded.end());
          exact.insert(exact.end(), e.begin(), e.end());
        }
        const std::string what = layout_text(s, l) + " compress ratio " + std::to_string(r);
        expect_rounded(decode_rows(l, out->u8("rows"), entries), ref, exact, noise, 3 + entries * k.dim / 200, what);
      }
}

}  // namespace
}  // namespace ferry::runtime::ops_test
