#include "interim_host_ops.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "planner/memory.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/kernels/cpu/ops.h"
#include "runtime/kernels/cpu/vec.h"

namespace ferry::runtime::ops_test {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

void rotate(float* v, const ops::RopeFreqs& f, int64_t pos, bool inverse) {
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t i = 0; i < f.count; ++i) {
    const double angle = sign * static_cast<double>(pos) * f.freqs[i];
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    const float a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * c - b * s;
    v[2 * i + 1] = a * s + b * c;
  }
}

float* tile_slice(const ops::TileScratch& t) {
  const int slot = std::max(0, tbb::this_task_arena::current_thread_index());
  FERRY_CHECK(slot < t.threads, "tile scratch: more threads than slices");
  return t.data + slot * t.per_thread;
}

cpu::HcMix mix_view(float* mix, int64_t t, int64_t hc) {
  float* m = mix + t * (2 * hc + hc * hc);
  return {m, m + hc, m + 2 * hc};
}

std::vector<cpu::Mxfp4Activation> rounded_inputs(const float* x, int64_t n, int64_t x_stride, int64_t cols,
                                                 cpu::ActivationBits bits) {
  std::vector<cpu::Mxfp4Activation> acts(sz(n));
  for (int64_t t = 0; t < n; ++t) cpu::quantize_mxfp4_activation(x + t * x_stride, cols, acts[sz(t)], bits);
  return acts;
}

void linear(const core::WeightView& w, const float* x, int64_t n, int64_t xs, float* y, int64_t ys,
            cpu::ActivationBits bits) {
  if (w.format != core::WeightFormat::MXFP4) return cpu::linear(w, x, n, xs, y, ys);
  const auto acts = rounded_inputs(x, n, xs, w.cols, bits);
  cpu::linear(w, x, n, xs, y, ys, &acts);
}

void host(const ops::Embed& o) {
  const int64_t d = o.table.cols;
  const auto* table = reinterpret_cast<const uint16_t*>(o.table.data);
  for (int64_t t = 0; t < o.n; ++t)
    for (int64_t s = 0; s < o.copies; ++s)
      for (int64_t k = 0; k < d; ++k)
        o.out[(t * o.copies + s) * d + k] = core::bf16_to_float(table[o.tokens[t] * d + k]);
}

void host(const ops::RmsNorm& o) {
  const int64_t xs = o.x_stride ? o.x_stride : o.dim, os = o.out_stride ? o.out_stride : o.dim;
  for (int64_t r = 0; r < o.rows; ++r) cpu::rms_norm(o.x + r * xs, o.weight, o.dim, o.eps, o.out + r * os);
}

void host(const ops::Rope& o) {
  for (int64_t t = 0; t < o.n; ++t)
    for (int64_t h = 0; h < o.heads; ++h)
      rotate(o.x + (t * o.heads + h) * o.head_dim + o.offset, o.freqs, o.p0 + t, o.inverse);
}

void host(const ops::HcPre& o) {
  for (int64_t t = 0; t < o.n; ++t) {
    cpu::HcMix m = mix_view(o.mix, t, o.hc);
    cpu::hc_pre(o.H + t * o.hc * o.d, o.hc, o.d, o.fn, o.scale, o.base, o.sinkhorn_iters, o.hc_eps, o.norm_eps, m,
                o.x + t * o.d);
  }
}

void host(const ops::HcPost& o) {
  for (int64_t t = 0; t < o.n; ++t)
    cpu::hc_post(o.y + t * o.d, mix_view(const_cast<float*>(o.mix), t, o.hc), o.hc, o.d, o.H + t * o.hc * o.d);
}

void host(const ops::HcHead& o) {
  for (int64_t t = 0; t < o.n; ++t)
    cpu::hc_head(o.H + t * o.hc * o.d, o.hc, o.d, o.fn, o.scale, o.base, o.hc_eps, o.norm_eps, o.y + t * o.d);
}

void host(const ops::Linear& o) {
  linear(o.w, o.x, o.n, o.x_stride ? o.x_stride : o.w.cols, o.y, o.y_stride ? o.y_stride : o.w.rows, o.bits);
}

void host(const ops::LinearGrouped& o) {
  for (int64_t g = 0; g < o.groups; ++g) {
    const int64_t b = o.row_begin[g], m = o.row_begin[g + 1] - b;
    if (m > 0) linear(o.w[g], o.x + b * o.x_stride, m, o.x_stride, o.y + b * o.y_stride, o.y_stride, o.bits);
  }
}

void host(const ops::ExpertFfn& o) {
  const int64_t d = o.w1.cols, inter = o.w1.rows;
  std::vector<cpu::Mxfp4Activation> rounded;
  if (o.w1.format == core::WeightFormat::MXFP4 && o.w3.format == core::WeightFormat::MXFP4)
    rounded = rounded_inputs(o.x, o.m, d, d, o.bits);
  const auto* shared = rounded.empty() ? nullptr : &rounded;
  cpu::linear(o.w1, o.x, o.m, d, o.gate, inter, shared);
  cpu::linear(o.w3, o.x, o.m, d, o.up, inter, shared);
  const float L = static_cast<float>(o.limit);
  for (int64_t i = 0; i < o.m * inter; ++i) {
    float g = o.gate[i], u = o.up[i];
    if (L > 0) {
      g = std::min(g, L);
      u = std::clamp(u, -L, L);
    }
    o.gate[i] = cpu::silu(g) * u;
  }
  linear(o.w2, o.gate, o.m, inter, o.out, d, o.bits);
}

void host(const ops::KvEncode& o) {
  for (int64_t r = 0; r < o.rows; ++r) encode_kv_row(o.layout, o.x + r * o.layout.dims, o.out + r * o.layout.bytes);
}

void host(const ops::KvWindowStore& o) {
  for (int64_t t = std::max<int64_t>(0, o.n - o.window); t < o.n; ++t)
    std::memcpy(o.ring + (o.p0 + t) % o.window * o.row_bytes, o.rows + t * o.row_bytes, sz(o.row_bytes));
}

// Pooled entry of a finished block from the state (compressor.cpp's pool).
void pool(const ops::Compress& o, bool has_prev, float* e) {
  const int64_t r = o.ratio, w = o.width, dim = o.dim;
  for (int64_t k = 0; k < dim; ++k) {
    auto visit = [&](auto&& f) {
      if (r == 4) {
        if (has_prev)
          for (int64_t i = 0; i < r; ++i) f(o.state_kv[i * w + k], o.state_score[i * w + k]);
        for (int64_t i = r; i < 2 * r; ++i) f(o.state_kv[i * w + dim + k], o.state_score[i * w + dim + k]);
      } else {
        for (int64_t i = 0; i < r; ++i) f(o.state_kv[i * w + k], o.state_score[i * w + k]);
      }
    };
    float mx = -INFINITY;
    visit([&](float, float s) { mx = std::max(mx, s); });
    double num = 0, den = 0;
    visit([&](float a, float s) {
      const double x = std::exp(static_cast<double>(s) - mx);
      num += x * a;
      den += x;
    });
    e[k] = static_cast<float>(num / den);
  }
}

void host(const ops::Compress& o) {
  const int64_t r = o.ratio, w = o.width;
  std::vector<float> e(sz(o.dim));
  for (int64_t t = 0; t < o.n; ++t) {
    const int64_t p = o.p0 + t, slot = p % r, row = r == 4 ? r + slot : slot;
    for (int64_t k = 0; k < w; ++k) {
      o.state_kv[row * w + k] = o.a[t * w + k];
      o.state_score[row * w + k] = o.s[t * w + k] + o.ape[slot * w + k];
    }
    if ((p + 1) % r != 0) continue;
    const int64_t j = (p + 1) / r - 1;
    pool(o, j > 0, e.data());
    if (r == 4) {  // the current block becomes the previous one
      std::memcpy(o.state_kv, o.state_kv + r * w, sz(r * w) * sizeof(float));
      std::memcpy(o.state_score, o.state_score + r * w, sz(r * w) * sizeof(float));
    }
    cpu::rms_norm(e.data(), o.norm, o.dim, o.eps, e.data());
    rotate(e.data() + o.dim - 2 * o.freqs.count, o.freqs, r * j, false);
    if (o.indexer) cpu::hadamard(e.data(), o.dim);
    FERRY_CHECK(j < o.capacity, "compress: the entries are full");
    encode_kv_row(o.layout, e.data(), o.rows + j * o.layout.bytes);
  }
}

// Keeps the k best (score descending, entry ascending on equal scores) of `cand`.
void keep_best(std::vector<std::pair<float, int32_t>>& cand, int64_t k) {
  auto better = [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  if (static_cast<int64_t>(cand.size()) > k) {
    std::nth_element(cand.begin(), cand.begin() + k, cand.end(), better);
    cand.resize(sz(k));
  }
}

void host(const ops::IndexerSelect& o) {
  const int64_t ih = o.heads, hd = o.head_dim, rd = 2 * o.freqs.count;
  const float wscale =
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)) / std::sqrt(static_cast<double>(ih)));
  for (int64_t t = 0; t < o.n; ++t) {
    for (int64_t h = 0; h < ih; ++h) {
      float* q = o.q + (t * ih + h) * hd;
      rotate(q + hd - rd, o.freqs, o.p0 + t, false);
      cpu::hadamard(q, hd);
      round_indexer_query(o.kv_type, q, hd);
    }
    for (int64_t h = 0; h < ih; ++h) o.w[t * ih + h] *= wscale;
  }
  std::vector<std::vector<std::pair<float, int32_t>>> best(sz(o.n));
  const int64_t max_visible = (o.p0 + o.n) / 4;
  for (int64_t j0 = 0; j0 < max_visible; j0 += o.key_tile_rows) {
    const int64_t j1 = std::min(max_visible, j0 + o.key_tile_rows);
    for (int64_t j = j0; j < j1; ++j) decode_kv_row(o.layout, o.keys + j * o.layout.bytes, o.key_tile + (j - j0) * hd);
    tbb::parallel_for(int64_t{0}, o.n, [&](int64_t t) {
      const int64_t visible = (o.p0 + t + 1) / 4;
      if (visible <= o.topk || visible <= j0) return;
      const int64_t end = std::min(j1, visible);
      float* scores = tile_slice(o.tiles);
      cpu::indexer_scores(o.q + t * ih * hd, o.w + t * ih, ih, hd, o.key_tile, end - j0, scores);
      auto& b = best[sz(t)];
      for (int64_t j = j0; j < end; ++j) b.emplace_back(scores[j - j0], static_cast<int32_t>(j));
      keep_best(b, o.topk);
    });
  }
  for (int64_t t = 0; t < o.n; ++t) {
    const int64_t visible = (o.p0 + t + 1) / 4;
    int32_t* sel = o.sel + t * o.topk;
    if (visible <= o.topk) {
      std::iota(sel, sel + visible, 0);
      o.sel_count[t] = static_cast<int32_t>(visible);
    } else {
      for (size_t i = 0; i < best[sz(t)].size(); ++i) sel[i] = best[sz(t)][i].second;
      o.sel_count[t] = static_cast<int32_t>(best[sz(t)].size());
    }
  }
}

// Decoded row i of token t's rows: its window (this chunk's rows from kv, earlier ones from the ring), then its
// compressed entries.
void fetch_row(const ops::Attention& o, int64_t t, int64_t i, float* out) {
  const int64_t p = o.p0 + t, first = std::max<int64_t>(0, p - o.window_size + 1), nw = p - first + 1;
  if (i < nw) {
    const int64_t pos = first + i;
    if (pos >= o.p0)
      std::memcpy(out, o.kv + (pos - o.p0) * o.head_dim, sz(o.head_dim) * sizeof(float));
    else
      decode_kv_row(o.layout, o.window + pos % o.window_size * o.layout.bytes, out);
    return;
  }
  const int64_t j = o.ratio == 4 ? o.sel[t * o.topk + (i - nw)] : i - nw;
  decode_kv_row(o.layout, o.compressed + j * o.layout.bytes, out);
}

int64_t row_count(const ops::Attention& o, int64_t t) {
  const int64_t p = o.p0 + t, nw = p - std::max<int64_t>(0, p - o.window_size + 1) + 1;
  if (o.ratio == 4) return nw + o.sel_count[t];
  return nw + (o.ratio > 0 ? (p + 1) / o.ratio : 0);
}

void host(const ops::Attention& o) {
  const int64_t nh = o.heads, hd = o.head_dim, tile = planner::kAttnKeyTile, rd = 2 * o.freqs.count;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  tbb::parallel_for(int64_t{0}, o.n, [&](int64_t t) {
    float* rows = tile_slice(o.tiles);
    float *scores = rows + tile * hd, *acc = scores + std::max(tile, planner::kIndexerTile);
    float *mxs = acc + nh * hd, *sums = mxs + nh;
    std::fill_n(acc, nh * hd, 0.0f);
    std::fill_n(mxs, nh, -INFINITY);
    std::fill_n(sums, nh, 0.0f);
    const int64_t total = row_count(o, t);
    for (int64_t i0 = 0; i0 < total; i0 += tile) {
      const int64_t m = std::min(tile, total - i0);
      for (int64_t i = 0; i < m; ++i) fetch_row(o, t, i0 + i, rows + i * hd);
      for (int64_t h = 0; h < nh; ++h) {
        const float* q = o.q + (t * nh + h) * hd;
        float mx = mxs[h];
        for (int64_t i = 0; i < m; ++i) mx = std::max(mx, scores[i] = cpu::dot(q, rows + i * hd, hd) * scale);
        const float rescale = std::exp(mxs[h] - mx);
        float sum = sums[h] * rescale;
        cpu::scale(rescale, acc + h * hd, hd);
        for (int64_t i = 0; i < m; ++i) {
          const float e = std::exp(scores[i] - mx);
          sum += e;
          cpu::axpy(e, rows + i * hd, acc + h * hd, hd);
        }
        mxs[h] = mx;
        sums[h] = sum;
      }
    }
    for (int64_t h = 0; h < nh; ++h) {
      const float denom = sums[h] + std::exp(o.sink[h] - mxs[h]);
      float* out = o.o + (t * nh + h) * hd;
      for (int64_t k = 0; k < hd; ++k) out[k] = acc[h * hd + k] / denom;
      rotate(out + hd - rd, o.freqs, o.p0 + t, true);
    }
  });
}

void host(const ops::Route& o) {
  for (int64_t t = 0; t < o.n; ++t) {
    float* sc = o.scores + t * o.experts;
    for (int64_t e = 0; e < o.experts; ++e) sc[e] = std::sqrt(cpu::softplus(sc[e]));
    int32_t* ids = o.ids + t * o.k;
    if (o.tid2eid) {
      for (int64_t i = 0; i < o.k; ++i) ids[i] = o.tid2eid[o.tokens[t] * o.k + i];
    } else {
      std::vector<int32_t> order(sz(o.experts));
      std::iota(order.begin(), order.end(), 0);
      auto biased = [&](int32_t e) { return sc[e] + o.bias[e]; };
      std::partial_sort(order.begin(), order.begin() + o.k, order.end(), [&](int32_t a, int32_t b) {
        const float sa = biased(a), sb = biased(b);
        return sa != sb ? sa > sb : a < b;
      });
      std::copy_n(order.begin(), o.k, ids);
    }
    float sum = 0;
    for (int64_t i = 0; i < o.k; ++i) sum += sc[ids[i]];
    for (int64_t i = 0; i < o.k; ++i) o.weights[t * o.k + i] = sc[ids[i]] / sum * static_cast<float>(o.scaling);
  }
}

void host(const ops::GatherRows& o) {
  for (int64_t i = 0; i < o.m; ++i) std::copy_n(o.src + o.index[i] / o.div * o.d, o.d, o.dst + i * o.d);
}

void host(const ops::MoeCombine& o) {
  std::vector<int64_t> pos_of(sz(o.n * o.k));
  for (int64_t p = 0; p < o.n * o.k; ++p) pos_of[sz(o.order[p])] = p;
  for (int64_t t = 0; t < o.n; ++t) {
    std::vector<int64_t> p(pos_of.begin() + t * o.k, pos_of.begin() + (t + 1) * o.k);
    std::sort(p.begin(), p.end());
    for (int64_t j = 0; j < o.d; ++j) {
      float acc = 0.0f;
      for (int64_t i = 0; i < o.k; ++i) acc += o.weights[o.order[p[sz(i)]]] * o.expert_out[p[sz(i)] * o.d + j];
      o.y[t * o.d + j] += acc;
    }
  }
}

void host(const ops::AddStreams& o) {
  for (int64_t t = 0; t < o.n; ++t)
    for (int64_t s = 0; s < o.streams; ++s)
      for (int64_t k = 0; k < o.d; ++k)
        o.out[(t * o.streams + s) * o.d + k] = o.a[t * o.d + k] + o.b[(t * o.streams + s) * o.d + k];
}

}  // namespace

bool supports(const Backend& b, ops::Kind) { return b.host_addressable(); }

void run_op(Backend& b, const ops::Op& op) {
  FERRY_CHECK(b.host_addressable(), b.name() + " runs no ops yet");
  auto work = [&op] { std::visit([](const auto& o) { host(o); }, op); };
  if (dynamic_cast<SimBackend*>(&b))
    b.wait(b.launch(work));
  else
    work();
}

}  // namespace ferry::runtime::ops_test
