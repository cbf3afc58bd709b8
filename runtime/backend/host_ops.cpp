// The host's small ops: embedding, norms, RoPE, mHC, linear layers, the SwiGLU expert, KV rows, routing,
// gathering and combining expert rows. Tokens are independent in all of them, so they spread over tokens (or
// rows) with oneTBB; each token's arithmetic is the same whatever the split.
#include "runtime/backend/host_ops.h"
#include "runtime/kernels/cpu/kv_rows.h"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/kernels/cpu/ops.h"

namespace ferry::runtime {

namespace {

using core::WeightFormat;

template <class F>
void for_each_row(int64_t n, F&& f) {
  tbb::parallel_for(int64_t{0}, n, std::forward<F>(f));
}

// The mHC weights of token t in a [n, 2·hc + hc²] buffer.
cpu::HcMix mix_of(float* mix, int64_t hc, int64_t t) {
  float* m = mix + t * (2 * hc + hc * hc);
  return {m, m + hc, m + 2 * hc};
}

void run(const ops::Embed& a) {
  const int64_t d = a.table.cols;
  for_each_row(a.n, [&](int64_t t) {
    float* h = a.out + t * a.copies * d;
    const auto* row = reinterpret_cast<const uint16_t*>(a.table.data) + a.tokens[t] * d;
    for (int64_t k = 0; k < d; ++k) h[k] = core::bf16_to_float(row[k]);
    for (int64_t s = 1; s < a.copies; ++s) std::copy_n(h, d, h + s * d);
  });
}

void run(const ops::RmsNorm& a) {
  const int64_t xs = a.x_stride ? a.x_stride : a.dim, os = a.out_stride ? a.out_stride : a.dim;
  for_each_row(a.rows, [&](int64_t r) { cpu::rms_norm(a.x + r * xs, a.weight, a.dim, a.eps, a.out + r * os); });
}

void run(const ops::Rope& a) {
  FERRY_CHECK(a.head_dim - a.offset == 2 * a.freqs.count, "rope: the rope part of a head is not 2 x its frequencies");
  for_each_row(a.n, [&](int64_t t) {
    for (int64_t h = 0; h < a.heads; ++h)
      cpu::rope_rotate(a.x + (t * a.heads + h) * a.head_dim + a.offset, a.freqs.freqs, a.freqs.count, a.p0 + t,
                       a.inverse);
  });
}

void run(const ops::HcPre& a) {
  for_each_row(a.n, [&](int64_t t) {
    cpu::HcMix m = mix_of(a.mix, a.hc, t);
    cpu::hc_pre(a.H + t * a.hc * a.d, a.hc, a.d, a.fn, a.scale, a.base, a.sinkhorn_iters, a.hc_eps, a.norm_eps, m,
                a.x + t * a.d);
  });
}

void run(const ops::HcPost& a) {
  for_each_row(a.n, [&](int64_t t) {
    const cpu::HcMix m = mix_of(const_cast<float*>(a.mix), a.hc, t);
    cpu::hc_post(a.y + t * a.d, m, a.hc, a.d, a.H + t * a.hc * a.d);
  });
}

void run(const ops::HcHead& a) {
  for_each_row(a.n, [&](int64_t t) {
    cpu::hc_head(a.H + t * a.hc * a.d, a.hc, a.d, a.fn, a.scale, a.base, a.hc_eps, a.norm_eps, a.y + t * a.d);
  });
}

void run(const ops::Linear& a) {
  cpu::linear(a.w, a.x, a.n, a.x_stride ? a.x_stride : a.w.cols, a.y, a.y_stride ? a.y_stride : a.w.rows, a.bits);
}

void run(const ops::LinearGrouped& a) {
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t r0 = a.row_begin[g], rows = a.row_begin[g + 1] - r0;
    const core::WeightView& w = a.w[g];
    const int64_t xs = a.x_stride ? a.x_stride : w.cols, ys = a.y_stride ? a.y_stride : w.rows;
    if (rows > 0) cpu::linear(w, a.x + r0 * xs, rows, xs, a.y + r0 * ys, ys, a.bits);
  }
}

// The route weight is applied by the combine, after w2, as the contract writes it: w2's input is rounded (MXFP4
// activations), and a rounding does not commute with a scale that is not a power of two.
void run(const ops::ExpertFfn& a) {
  const int64_t d = a.w1.cols, inter = a.w1.rows, m = a.m;
  // Routed experts (MXFP4): w1 and w3 read the same input, so it is rounded once for both.
  std::vector<cpu::Mxfp4Activation> rounded;
  if (a.w1.format == WeightFormat::MXFP4 && a.w3.format == WeightFormat::MXFP4)
    rounded = cpu::round_mxfp4_inputs(a.x, m, d, d, a.bits);
  const auto* shared_rounding = rounded.empty() ? nullptr : &rounded;
  cpu::linear(a.w1, a.x, m, d, a.gate, inter, a.bits, shared_rounding);
  cpu::linear(a.w3, a.x, m, d, a.up, inter, a.bits, shared_rounding);
  const float L = static_cast<float>(a.limit);
  for (int64_t t = 0; t < m; ++t) {
    float* g = a.gate + t * inter;
    const float* u = a.up + t * inter;
    for (int64_t k = 0; k < inter; ++k) {
      float gk = g[k], uk = u[k];
      if (L > 0) {
        gk = std::min(gk, L);
        uk = std::clamp(uk, -L, L);
      }
      g[k] = cpu::silu(gk) * uk;
    }
  }
  cpu::linear(a.w2, a.gate, m, inter, a.out, d, a.bits);
}

void run(const ops::KvEncode& a) {
  for_each_row(a.rows,
               [&](int64_t r) { encode_kv_row(a.layout, a.x + r * a.layout.dims, a.out + r * a.layout.bytes); });
}

// The chunk's last W rows enter the ring only after its attention: earlier tokens of the chunk still needed the
// rows they replace.
void run(const ops::KvWindowStore& a) {
  for (int64_t t = std::max<int64_t>(0, a.n - a.window); t < a.n; ++t) {
    const int64_t p = a.p0 + t;
    std::memcpy(a.ring + (p % a.window) * a.row_bytes, a.rows + t * a.row_bytes, static_cast<size_t>(a.row_bytes));
  }
}

void run(const ops::Route& a) {
  const int64_t E = a.experts, k = a.k;
  FERRY_CHECK(a.bias || (a.tid2eid && a.tokens), "route: neither a bias nor a hash table");
  for_each_row(a.n, [&](int64_t t) {
    float* sc = a.scores + t * E;
    for (int64_t e = 0; e < E; ++e) sc[e] = std::sqrt(cpu::softplus(sc[e]));
    int32_t* ids = a.ids + t * k;
    if (a.tid2eid) {
      for (int64_t i = 0; i < k; ++i) ids[i] = a.tid2eid[a.tokens[t] * k + i];
    } else {
      std::vector<int32_t> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      auto biased = [&](int32_t e) { return sc[e] + a.bias[e]; };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t x, int32_t y) {
        const float sx = biased(x), sy = biased(y);
        return sx != sy ? sx > sy : x < y;
      });
      std::copy_n(order.begin(), k, ids);
    }
    float sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += sc[ids[i]];
    for (int64_t i = 0; i < k; ++i) a.weights[t * k + i] = sc[ids[i]] / sum * static_cast<float>(a.scaling);
  });
}

void run(const ops::GatherRows& a) {
  for (int64_t i = 0; i < a.m; ++i) std::copy_n(a.src + (a.index[i] / a.div) * a.d, a.d, a.dst + i * a.d);
}

// Each token's expert outputs weighted and summed in ascending sorted position (= expert order), then added to
// y: the same order whichever device computed which expert.
void run(const ops::MoeCombine& a) {
  const int64_t n = a.n, k = a.k, d = a.d;
  FERRY_CHECK(k <= 64, "num_experts_per_tok above 64");
  std::vector<int32_t> positions(static_cast<size_t>(n * k));  // token t's choices at [t·k, t·k + k)
  for (int64_t p = 0; p < n * k; ++p) positions[static_cast<size_t>(a.order[p])] = static_cast<int32_t>(p);
  for_each_row(n, [&](int64_t t) {
    int32_t p[64];
    std::copy_n(positions.begin() + t * k, k, p);
    std::sort(p, p + k);
    float wt[64];
    const float* rows[64];
    for (int64_t i = 0; i < k; ++i) {
      wt[i] = a.weights[a.order[p[i]]];
      rows[i] = a.expert_out + p[i] * d;
    }
    float* yt = a.y + t * d;
    for (int64_t j = 0; j < d; ++j) {
      float acc = 0.0f;
      for (int64_t i = 0; i < k; ++i) acc += wt[i] * rows[i][j];
      yt[j] = a.add ? yt[j] + acc : acc;
    }
  });
}

void run(const ops::AddStreams& a) {
  for (int64_t t = 0; t < a.n; ++t)
    for (int64_t s = 0; s < a.streams; ++s)
      for (int64_t j = 0; j < a.d; ++j)
        a.out[(t * a.streams + s) * a.d + j] = a.a[t * a.d + j] + a.b[(t * a.streams + s) * a.d + j];
}

void run(const ops::Attention& a) { host_ops::attention(a); }
void run(const ops::Compress& a) { host_ops::compress(a); }
void run(const ops::IndexerSelect& a) { host_ops::indexer_select(a); }

}  // namespace

void run_on_host(const ops::Op& op) {
  std::visit([](const auto& a) { run(a); }, op);
}

}  // namespace ferry::runtime
