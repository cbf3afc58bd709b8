// The element-wise and per-token ops on every backend against the float64 reference: embedding, RMS norm,
// RoPE, the mHC pre/post/head mixes, the MTP's stream sum; and what each backend says it supports.
#include <algorithm>
#include <cmath>
#include <iterator>

#include "op_test_support.h"
#include "reference_op_math.h"

namespace ferry::runtime::ops_test {
namespace {

FERRY_OP_SUITE(BasicOps);

// Every backend runs every op of the forward pass (CUDA too: runtime/kernels/cuda has a kernel for each kind, so
// that `ferry run --gpu cuda:N` needs no op of the CPU). What each runs is reported.
TYPED_TEST(BasicOps, SupportsEveryKind) {
  std::string runs;
  for (int k = 0; k < ops::kKinds; ++k) {
    const bool yes = this->backend_->supports(static_cast<Kind>(k));
    EXPECT_TRUE(yes) << ops::kind_name(static_cast<Kind>(k));
    runs += (yes ? "+" : "-") + std::string(ops::kind_name(static_cast<Kind>(k))) + " ";
  }
  this->RecordProperty("supports", runs);
  std::printf("%s supports: %s\n", TypeParam::kName, runs.c_str());
}

// Rows of the BF16 table, decoded exactly (every backend: a BF16 value is a float's top half), copied into every
// stream.
TYPED_TEST(BasicOps, Embed) {
  for (const Shape& s : shapes()) {
    std::mt19937_64 rng(1);
    const int64_t vocab = 300, d = s.c.hidden_size, hc = s.c.hc_mult;
    const StoredWeight table = stored_weight(core::WeightFormat::BF16, vocab, d, 1.0, rng);
    const std::vector<int32_t> tokens{0, 299, 17, 17};
    const auto out = this->run(Kind::Embed, [&](DeviceMemory& m) {
      ops::Embed op{m.weight(table), tokens.data(), 4, hc, m.zeros<float>(4 * hc * d)};
      m.run(op);
      return Outputs().add("out", m.read(op.out, 4 * hc * d));
    });
    if (!out) return;
    const reference::Matrix ref_table = table.decoded();
    Vec ref;
    for (int32_t t : tokens) {
      const Vec H = reference::embed_streams(ref_table, t, hc);
      ref.insert(ref.end(), H.begin(), H.end());
    }
    expect_exact(out->f32("out"), ref, s.name + " embed");
  }
}

// Every row normalised, through strides, in place: the hidden vector and the query's low rank with a weight,
// a head (the per-head query norm) without; within the backend's rms_norm tolerance of each value
// (OpTolerances).
TYPED_TEST(BasicOps, RmsNorm) {
  for (const Shape& s : shapes()) {
    const std::pair<int64_t, bool> cases[] = {
        {s.c.hidden_size, true}, {s.c.q_lora_rank, true}, {s.c.head_dim, false}};  // (dim, weighted)
    for (const auto& [dim, weighted] : cases) {
      std::mt19937_64 rng(2);
      const int64_t rows = 3, stride = dim + 8;
      const std::vector<float> x = normal(rows * stride, 3.0, rng), w = normal(dim, 1.0, rng);
      const auto out = this->run(Kind::RmsNorm, [&](DeviceMemory& m) {
        float* xs = m.upload(x);
        float* y = m.zeros<float>(rows * dim);
        float* wd = weighted ? m.upload(w) : nullptr;
        m.run(ops::RmsNorm{xs, rows, dim, stride, 0, wd, s.c.rms_norm_eps, y});
        m.run(ops::RmsNorm{xs, rows, dim, stride, stride, wd, s.c.rms_norm_eps, xs});  // out aliases x
        return Outputs().add("out", m.read(y, rows * dim)).add("in_place", m.read(xs, rows * stride));
      });
      if (!out) return;
      Vec ref, tol, ref_in_place = to_double(x), tol_in_place(ref_in_place.size(), 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        Vec row = slice(x, r, stride);
        row.resize(sz(dim));  // the padding after each row is not normalised
        const Vec y = reference::rms_norm(row, weighted ? to_double(w) : Vec{}, s.c.rms_norm_eps);
        for (int64_t k = 0; k < dim; ++k) {
          ref.push_back(y[sz(k)]);
          tol.push_back(TypeParam::kTol.rms_norm * std::fabs(y[sz(k)]));
          ref_in_place[sz(r * stride + k)] = y[sz(k)];
          tol_in_place[sz(r * stride + k)] = tol.back();
        }
      }
      const std::string what = s.name + " rms_norm of " + std::to_string(dim) + (weighted ? "" : " without weight");
      expect_near(out->f32("out"), ref, tol, what);
      expect_near(out->f32("in_place"), ref_in_place, tol_in_place, what + " in place");
    }
  }
}

// The rope dims of every head rotated at its token's position, forwards and back, with the plain and the
// YaRN frequencies, at positions up to V4's million; the other dims untouched. Each rotated value within the
// backend's rope tolerance of |a| + |b| (OpTolerances).
TYPED_TEST(BasicOps, Rope) {
  for (const Shape& s : shapes()) {
    std::mt19937_64 rng(3);
    const int64_t n = 3, heads = s.c.num_attention_heads, hd = s.c.head_dim, rd = s.c.qk_rope_head_dim;
    const int64_t offset = hd - rd;
    const std::vector<float> x = normal(n * heads * hd, 2.0, rng);
    for (const bool compressed : {false, true})
      for (const bool inverse : {false, true})
        for (const int64_t p0 : {int64_t{0}, int64_t{1000003}}) {
          const Vec freqs = reference::rope_frequencies(s.c, compressed);
          const auto out = this->run(Kind::Rope, [&](DeviceMemory& m) {
            float* v = m.upload(x);
            m.run(ops::Rope{v, n, heads, hd, offset, p0, rope_table(freqs), inverse});
            return Outputs().add("x", m.read(v, n * heads * hd));
          });
          if (!out) return;
          Vec ref = to_double(x), tol(ref.size(), 0.0);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t h = 0; h < heads; ++h) {
              const size_t base = static_cast<size_t>((t * heads + h) * hd + offset);
              reference::apply_rope(ref.data() + base, freqs, p0 + t, inverse);
              for (int64_t i = 0; i < rd; ++i)
                tol[base + sz(i)] =
                    TypeParam::kTol.rope * (std::fabs(x[base + sz(i & ~1)]) + std::fabs(x[base + sz(i | 1)]));
            }
          expect_near(
              out->f32("x"), ref, tol,
              s.name + " rope at " + std::to_string(p0) + (compressed ? " yarn" : "") + (inverse ? " inverse" : ""));
        }
  }
}

// The mHC weights of one token from random streams and parameters of the trained magnitudes.
struct HcCase {
  int64_t n = 3, hc = 0, d = 0;
  std::vector<float> H, fn, scale, base;
  reference::HcShape shape;
  reference::HcWeights weights(int64_t rows) const {
    return {to_double(fn), Vec(base.begin(), base.begin() + rows), to_double(scale)};
  }
};

// The case's streams and parameters on the device.
struct HcBuffers {
  const float *H, *fn, *scale, *base;
};
HcBuffers upload(DeviceMemory& m, const HcCase& k) {
  return {m.upload(k.H), m.upload(k.fn), m.upload(k.scale), m.upload(k.base)};
}

HcCase hc_case(const core::ModelConfig& c, int64_t fn_rows, int64_t scales, std::mt19937_64& rng) {
  HcCase k;
  k.hc = c.hc_mult;
  k.d = c.hidden_size;
  k.H = normal(k.n * k.hc * k.d, 1.0, rng);
  k.fn = normal(fn_rows * k.hc * k.d, 1.0 / std::sqrt(double(k.hc * k.d)), rng);
  k.scale = normal(scales, 0.5, rng);
  k.base = normal(fn_rows, 0.5, rng);
  k.shape = {k.hc, k.d, c.hc_sinkhorn_iters, c.hc_eps, c.rms_norm_eps};
  return k;
}

// The mix weights and the pre-mixed input, within the backend's hc tolerance (OpTolerances): the weights
// absolutely, x of sum_s |H[s]|.
TYPED_TEST(BasicOps, HcPre) {
  for (const Shape& s : shapes()) {
    std::mt19937_64 rng(4);
    const int64_t hc = s.c.hc_mult, rows = (2 + hc) * hc, mw = 2 * hc + hc * hc;
    const HcCase k = hc_case(s.c, rows, 3, rng);
    const auto out = this->run(Kind::HcPre, [&](DeviceMemory& m) {
      const HcBuffers b = upload(m, k);
      ops::HcPre op{b.H,
                    k.n,
                    hc,
                    k.d,
                    b.fn,
                    b.scale,
                    b.base,
                    s.c.hc_sinkhorn_iters,
                    s.c.hc_eps,
                    s.c.rms_norm_eps,
                    m.zeros<float>(k.n * mw),
                    m.zeros<float>(k.n * k.d)};
      m.run(op);
      return Outputs().add("mix", m.read(op.mix, k.n * mw)).add("x", m.read(op.x, k.n * k.d));
    });
    if (!out) return;
    Vec ref_mix, ref_x, tol_x;
    for (int64_t t = 0; t < k.n; ++t) {
      const Vec H = slice(k.H, t, hc * k.d);
      reference::HcMix mix;
      const Vec x = reference::hc_pre(H, k.weights(rows), k.shape, mix);
      for (const Vec* part : {&mix.pre, &mix.post, &mix.comb})
        ref_mix.insert(ref_mix.end(), part->begin(), part->end());
      ref_x.insert(ref_x.end(), x.begin(), x.end());
      for (int64_t i = 0; i < k.d; ++i) {
        double sum = 0;
        for (int64_t st = 0; st < hc; ++st) sum += std::fabs(H[sz(st * k.d + i)]);
        tol_x.push_back(TypeParam::kTol.hc * sum);
      }
    }
    expect_near(out->f32("mix"), ref_mix, {TypeParam::kTol.hc}, s.name + " hc_pre mix");
    expect_near(out->f32("x"), ref_x, tol_x, s.name + " hc_pre x");
  }
}

// Random mix weights (post in (0, 2), comb in (0, 1)) mixed back into the streams: a sum of hc + 1 float
// products, within the backend's hc tolerance of the sum of their magnitudes.
TYPED_TEST(BasicOps, HcPost) {
  for (const Shape& s : shapes()) {
    std::mt19937_64 rng(5);
    const int64_t n = 3, hc = s.c.hc_mult, d = s.c.hidden_size, mw = 2 * hc + hc * hc;
    const std::vector<float> H = normal(n * hc * d, 1.0, rng), y = normal(n * d, 1.0, rng);
    std::vector<float> mix = normal(n * mw, 1.0, rng);
    for (float& v : mix) v = 1 / (1 + std::exp(-v));
    const auto out = this->run(Kind::HcPost, [&](DeviceMemory& m) {
      float* h = m.upload(H);
      m.run(ops::HcPost{m.upload(y), m.upload(mix), n, hc, d, h});
      return Outputs().add("H", m.read(h, n * hc * d));
    });
    if (!out) return;
    Vec ref, tol;
    for (int64_t t = 0; t < n; ++t) {
      const Vec mt = slice(mix, t, mw);
      const reference::HcMix mx{Vec(mt.begin(), mt.begin() + hc), Vec(mt.begin() + hc, mt.begin() + 2 * hc),
                                Vec(mt.begin() + 2 * hc, mt.end())};
      Vec Ht = slice(H, t, hc * d);
      const Vec yt = slice(y, t, d);
      reference::hc_post(Ht, yt, mx, {hc, d, 0, 0, 0});
      ref.insert(ref.end(), Ht.begin(), Ht.end());
      for (int64_t j = 0; j < hc; ++j)
        for (int64_t k = 0; k < d; ++k) {
          double mag = std::fabs(mx.post[sz(j)] * yt[sz(k)]);
          for (int64_t i = 0; i < hc; ++i)
            mag += std::fabs(mx.comb[sz(i * hc + j)] * H[static_cast<size_t>((t * hc + i) * d + k)]);
          tol.push_back(TypeParam::kTol.hc * mag);
        }
    }
    expect_near(out->f32("H"), ref, tol, s.name + " hc_post");
  }
}

// The head's reduction of the streams: as hc_pre's x, within the backend's hc tolerance of sum_s |H[s]|.
TYPED_TEST(BasicOps, HcHead) {
  for (const Shape& s : shapes()) {
    std::mt19937_64 rng(6);
    const int64_t hc = s.c.hc_mult;
    const HcCase k = hc_case(s.c, hc, 1, rng);
    const auto out = this->run(Kind::HcHead, [&](DeviceMemory& m) {
      const HcBuffers b = upload(m, k);
      ops::HcHead op{b.H, k.n, hc, k.d, b.fn, b.scale, b.base, s.c.hc_eps, s.c.rms_norm_eps, m.zeros<float>(k.n * k.d)};
      m.run(op);
      return Outputs().add("y", m.read(op.y, k.n * k.d));
    });
    if (!out) return;
    Vec ref, tol;
    for (int64_t t = 0; t < k.n; ++t) {
      const Vec H = slice(k.H, t, hc * k.d);
      const Vec y = reference::hc_head(H, k.weights(hc), k.shape);
      ref.insert(ref.end(), y.begin(), y.end());
      for (int64_t i = 0; i < k.d; ++i) {
        double sum = 0;
        for (int64_t st = 0; st < hc; ++st) sum += std::fabs(H[sz(st * k.d + i)]);
        tol.push_back(TypeParam::kTol.hc * sum);
      }
    }
    expect_near(out->f32("y"), ref, tol, s.name + " hc_head");
  }
}

// a + b[s] is one float addition (every backend; CUDA's is __fadd_rn): exactly the rounded sum.
TYPED_TEST(BasicOps, AddStreams) {
  for (const Shape& s : shapes()) {
    std::mt19937_64 rng(7);
    const int64_t n = 3, st = s.c.hc_mult, d = s.c.hidden_size;
    const std::vector<float> a = normal(n * d, 1.0, rng), b = normal(n * st * d, 1.0, rng);
    const auto out = this->run(Kind::AddStreams, [&](DeviceMemory& m) {
      ops::AddStreams op{m.upload(a), m.upload(b), n, st, d, m.zeros<float>(n * st * d)};
      m.run(op);
      return Outputs().add("out", m.read(op.out, n * st * d));
    });
    if (!out) return;
    Vec ref;
    for (int64_t t = 0; t < n; ++t) {
      const Vec sum = reference::add_streams(slice(a, t, d), slice(b, t, st * d), st);
      ref.insert(ref.end(), sum.begin(), sum.end());
    }
    expect_exact(out->f32("out"), ref, s.name + " add_streams");
  }
}

}  // namespace
}  // namespace ferry::runtime::ops_test
