#include "runtime/backend/cuda/cuda_ops.h"

#include <algorithm>

#include "planner/core/error.h"
#include "runtime/backend/cuda/cuda_util.h"
#include "runtime/backend/cuda/kv_row.h"
#include "runtime/kernels/cuda/indexer_math.h"
#include "runtime/kernels/cuda/kernels.h"

namespace ferry::runtime::cuda {

namespace {

void launch(const ops::Embed& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.table.format == core::WeightFormat::BF16, "{}: embed: the CUDA kernel reads a BF16 table", who);
  EmbedArgs args;
  args.table = reinterpret_cast<const uint16_t*>(a.table.data) + a.table.row_begin * a.table.cols;
  args.cols = a.table.cols;
  args.copies = a.copies;
  for (int64_t t0 = 0; t0 < a.n; t0 += kEmbedTokensPerLaunch) {
    args.n = std::min<int64_t>(kEmbedTokensPerLaunch, a.n - t0);
    args.out = a.out + t0 * a.copies * a.table.cols;
    for (int64_t t = 0; t < args.n; ++t) {
      const int32_t token = a.tokens[t0 + t];
      FERRY_CHECK(token >= 0 && token < a.table.rows, "{}: embed: token {} is outside the table of {} rows", who, token,
                  a.table.rows);
      args.tokens[t] = token;
    }
    check(launch_embed(args, stream), who, "embed kernel launch");
  }
}

void launch(const ops::RmsNorm& a, cudaStream_t stream, const std::string& who) {
  RmsNormArgs args;
  args.x = a.x, args.rows = a.rows, args.dim = a.dim;
  args.x_stride = a.x_stride ? a.x_stride : a.dim, args.out_stride = a.out_stride ? a.out_stride : a.dim;
  args.weight = a.weight, args.eps = a.eps, args.out = a.out;
  check(launch_rms_norm(args, stream), who, "rms_norm kernel launch");
}

void launch(const ops::Rope& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.head_dim - a.offset == 2 * a.freqs.count,
              "{}: rope: the rope part of a head is not 2 x its frequencies", who);
  FERRY_CHECK(a.freqs.count <= kMaxRopeFreqs, "{}: rope: {} frequencies, the CUDA kernel takes at most {}", who,
              a.freqs.count, kMaxRopeFreqs);
  RopeArgs args;
  args.x = a.x;
  args.n = a.n, args.heads = a.heads, args.head_dim = a.head_dim, args.offset = a.offset, args.p0 = a.p0;
  args.count = a.freqs.count;
  args.inverse = a.inverse;
  std::copy_n(a.freqs.freqs, a.freqs.count, args.freqs);
  check(launch_rope(args, stream), who, "rope kernel launch");
}

void launch(const ops::AddStreams& a, cudaStream_t stream, const std::string& who) {
  check(launch_add_streams({a.a, a.b, a.n, a.streams, a.d, a.out}, stream), who, "add_streams kernel launch");
}

void check_hc(int64_t hc, const std::string& who, const char* op) {
  FERRY_CHECK(hc >= 1 && hc <= kMaxHc, "{}: {}: {} streams; the CUDA kernels take 1 to {}", who, op, hc, kMaxHc);
}

void launch(const ops::HcPre& a, cudaStream_t stream, const std::string& who) {
  check_hc(a.hc, who, "hc_pre");
  const HcPreArgs args{a.H, a.n, a.hc, a.d, a.fn, a.scale, a.base, a.sinkhorn_iters, a.hc_eps, a.norm_eps, a.mix, a.x};
  check(launch_hc_pre(args, stream), who, "hc_pre kernel launch");
}

void launch(const ops::HcPost& a, cudaStream_t stream, const std::string& who) {
  check_hc(a.hc, who, "hc_post");
  check(launch_hc_post({a.y, a.mix, a.n, a.hc, a.d, a.H}, stream), who, "hc_post kernel launch");
}

void launch(const ops::HcHead& a, cudaStream_t stream, const std::string& who) {
  check_hc(a.hc, who, "hc_head");
  const HcHeadArgs args{a.H, a.n, a.hc, a.d, a.fn, a.scale, a.base, a.hc_eps, a.norm_eps, a.y};
  check(launch_hc_head(args, stream), who, "hc_head kernel launch");
}

void launch(const ops::Route& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.bias || (a.tid2eid && a.tokens), "{}: route: neither a bias nor a hash table", who);
  FERRY_CHECK(a.k >= 1 && a.k <= std::min(a.experts, kMaxRouteK),
              "{}: route: {} choices of {} experts; the CUDA "
              "kernel takes 1 to min(experts, {})",
              who, a.k, a.experts, kMaxRouteK);
  FERRY_CHECK(a.experts <= kRouteMaxExperts, "{}: route: {} experts; the CUDA kernel takes at most {}", who, a.experts,
              kRouteMaxExperts);
  RouteArgs args;
  args.experts = a.experts, args.k = a.k;
  args.bias = a.tid2eid ? nullptr : a.bias, args.tid2eid = a.tid2eid;
  args.scaling = static_cast<float>(a.scaling);
  for (int64_t t0 = 0; t0 < a.n; t0 += kRouteTokensPerLaunch) {
    args.n = std::min<int64_t>(kRouteTokensPerLaunch, a.n - t0);
    args.scores = a.scores + t0 * a.experts;
    args.ids = a.ids + t0 * a.k, args.weights = a.weights + t0 * a.k;
    if (a.tid2eid)
      for (int64_t t = 0; t < args.n; ++t) {
        FERRY_CHECK(a.tokens[t0 + t] >= 0, "{}: route: token {} is negative", who, a.tokens[t0 + t]);
        args.tokens[t] = a.tokens[t0 + t];
      }
    check(launch_route(args, stream), who, "route kernel launch");
  }
}

void launch(const ops::GatherRows& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.div >= 1, "{}: gather_rows: divisor {}", who, a.div);
  check(launch_gather_rows({a.src, a.d, a.index, a.div, a.m, a.dst}, stream), who, "gather_rows kernel launch");
}

void launch(const ops::MoeCombine& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.k >= 1 && a.k <= kMaxRouteK, "{}: moe_combine: {} choices a token; the CUDA kernel takes 1 to {}", who,
              a.k, kMaxRouteK);
  const MoeCombineArgs args{a.expert_out, a.order, a.weights, a.n, a.k, a.d, a.y, a.add};
  check(launch_moe_combine(args, stream), who, "moe_combine kernel launch");
}

void launch(const ops::KvEncode& a, cudaStream_t stream, const std::string& who) {
  check(launch_kv_encode({kv_row(a.layout, who), a.x, a.rows, a.out}, stream), who, "kv_encode kernel launch");
}

void launch(const ops::KvWindowStore& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.window > 0 && a.p0 >= 0, "{}: kv_window_store: window {} at position {}", who, a.window, a.p0);
  check(launch_kv_window_store({a.rows, a.n, a.p0, a.window, a.row_bytes, a.ring}, stream), who,
        "kv_window_store kernel launch");
}

// The rows' sources and the output's rope table (host memory in the op) go in the launch's arguments.
void launch(const ops::Attention& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.head_dim > 0 && a.head_dim % 2 == 0 && a.head_dim <= kAttentionMaxHeadDim,
              "{}: attention: head_dim {}; the CUDA kernel takes an even head_dim up to {}", who, a.head_dim,
              kAttentionMaxHeadDim);
  FERRY_CHECK(a.layout.dims == a.head_dim, "{}: attention: {}-value KV rows for head_dim {}", who, a.layout.dims,
              a.head_dim);
  FERRY_CHECK(2 * a.freqs.count <= a.head_dim && a.freqs.count <= kMaxRopeFreqs,
              "{}: attention: {} rope frequencies for head_dim {}; the CUDA kernel takes at most {}", who,
              a.freqs.count, a.head_dim, kMaxRopeFreqs);
  FERRY_CHECK(a.window_size > 0 && a.p0 >= 0 && a.ratio >= 0, "{}: attention: window {}, ratio {} at position {}", who,
              a.window_size, a.ratio, a.p0);
  FERRY_CHECK(a.ratio != 4 || (a.sel && a.sel_count && a.topk > 0), "{}: attention: ratio 4 without a selection", who);
  AttentionArgs args;
  args.rows = {a.kv,        a.window, a.compressed, kv_row(a.layout, who), a.sel,
               a.sel_count, a.topk,   a.p0,         a.window_size,         a.ratio};
  args.q = a.q, args.sink = a.sink, args.o = a.o;
  args.partials = a.tiles.data, args.partial_floats = a.tiles.data ? a.tiles.threads * a.tiles.per_thread : 0;
  args.n = a.n, args.heads = a.heads, args.head_dim = a.head_dim, args.count = a.freqs.count;
  std::copy_n(a.freqs.freqs, a.freqs.count, args.freqs);
  check(launch_attention(args, stream), who, "attention kernel launch");
}

MatvecFormat matvec_format(core::WeightFormat f) {
  switch (f) {
    case core::WeightFormat::F32: return MatvecFormat::F32;
    case core::WeightFormat::BF16: return MatvecFormat::BF16;
    case core::WeightFormat::FP8: return MatvecFormat::FP8;
    case core::WeightFormat::MXFP4: return MatvecFormat::MXFP4;
  }
  FERRY_THROW("linear: unknown weight format {}", static_cast<int>(f));
}

void check_view(const core::WeightView& w, const std::string& who) {
  FERRY_CHECK(w.data != nullptr && w.rows >= 0 && w.cols > 0, "{}: linear: empty weight view", who);
  FERRY_CHECK(w.format != core::WeightFormat::MXFP4 || w.cols % core::kFp4Block == 0,
              "{}: linear: MXFP4 cols not a multiple of 32", who);
}

// Whether n tokens through w take the tensor-core GEMM (kernels.h: kGemmMinTokens, gemm_takes).
bool takes_gemm(const core::WeightView& w, int64_t n) {
  return n >= kGemmMinTokens && gemm_takes(matvec_format(w.format), w.cols, w.data);
}

// A GEMM launch over groups of w's shape and format; add_group appends one (false when the table is full).
GemmArgs gemm_args(const core::WeightView& w, const float* x, int64_t xs, float* y, int64_t ys,
                   core::ActivationBits bits) {
  GemmArgs args;
  args.format = matvec_format(w.format);
  args.rows = w.rows, args.cols = w.cols;
  args.x = x, args.x_stride = xs, args.y = y, args.y_stride = ys;
  args.bits = static_cast<int>(bits);
  return args;
}

bool add_group(GemmArgs& args, const core::WeightView& w, int64_t token_begin, int64_t tokens) {
  const int64_t tiles = (tokens + kGemmTokens - 1) / kGemmTokens;
  if (args.groups == kGemmMaxGroups || args.tiles + tiles > 65535) return false;
  GemmGroup& g = args.group[args.groups++];
  g.codes = w.data, g.scales = w.scales, g.row_begin = w.row_begin, g.token_begin = token_begin;
  g.tokens = static_cast<int32_t>(tokens), g.tile_begin = args.tiles;
  args.tiles += static_cast<int>(tiles);
  return true;
}

// y[t·ys + r] = W·x[t·xs] for n tokens, one launch: the GEMM for a chunk, else the matrix-vector kernel.
void launch_linear(const core::WeightView& w, const float* x, int64_t n, int64_t xs, float* y, int64_t ys,
                   core::ActivationBits bits, cudaStream_t stream, const std::string& who) {
  check_view(w, who);
  xs = xs ? xs : w.cols, ys = ys ? ys : w.rows;
  if (takes_gemm(w, n)) {
    GemmArgs args = gemm_args(w, x, xs, y, ys, bits);
    FERRY_CHECK(add_group(args, w, 0, n), "{}: linear: {} tokens; the CUDA GEMM takes at most {} a launch", who, n,
                int64_t{65535} * kGemmTokens);
    check(launch_gemm(args, stream), who, "linear GEMM launch");
    return;
  }
  FERRY_CHECK(w.cols <= kMatvecMaxCols,
              "{}: linear: {} input columns; the CUDA matrix-vector kernel stages at most {} in shared memory", who,
              w.cols, kMatvecMaxCols);
  FERRY_CHECK(n <= kMatvecMaxTokens, "{}: linear: {} tokens; the CUDA matrix-vector kernel takes at most {} a launch",
              who, n, kMatvecMaxTokens);
  MatvecArgs args;
  args.format = matvec_format(w.format);
  args.codes = w.data, args.scales = w.scales;
  args.row_begin = w.row_begin, args.rows = w.rows, args.cols = w.cols;
  args.x = x, args.n = n, args.x_stride = xs;
  args.y = y, args.y_stride = ys;
  args.bits = static_cast<int>(bits);
  check(launch_matvec(args, stream), who, "linear kernel launch");
}

void launch(const ops::Linear& a, cudaStream_t stream, const std::string& who) {
  launch_linear(a.w, a.x, a.n, a.x_stride, a.y, a.y_stride, a.bits, stream, who);
}

// A chunk's groups (routed experts' runs of tokens; the views and row ranges are host memory) in as few GEMM
// launches as their shapes and formats allow: consecutive groups alike share one, up to kGemmMaxGroups. A
// decode step's few tokens, and weights the GEMM does not take, go to the matrix-vector kernel group by group.
void launch(const ops::LinearGrouped& a, cudaStream_t stream, const std::string& who) {
  const int64_t n = a.groups > 0 ? a.row_begin[a.groups] : 0;
  GemmArgs batch;
  const auto flush = [&] {
    if (batch.groups > 0) check(launch_gemm(batch, stream), who, "linear_grouped GEMM launch");
    batch.groups = 0, batch.tiles = 0;
  };
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t r0 = a.row_begin[g], rows = a.row_begin[g + 1] - r0;
    FERRY_CHECK(rows >= 0, "{}: linear_grouped: group {} ends before it begins", who, g);
    if (rows == 0) continue;
    const core::WeightView& w = a.w[g];
    const int64_t xs = a.x_stride ? a.x_stride : w.cols, ys = a.y_stride ? a.y_stride : w.rows;
    if (!takes_gemm(w, n)) {
      launch_linear(w, a.x + r0 * xs, rows, xs, a.y + r0 * ys, ys, a.bits, stream, who);
      continue;
    }
    check_view(w, who);
    const bool alike = batch.format == matvec_format(w.format) && batch.rows == w.rows && batch.cols == w.cols &&
                       batch.x_stride == xs && batch.y_stride == ys;
    if (batch.groups > 0 && (!alike || !add_group(batch, w, r0, rows))) flush();
    if (batch.groups == 0) {
      batch = gemm_args(w, a.x, xs, a.y, ys, a.bits);
      FERRY_CHECK(add_group(batch, w, r0, rows), "{}: linear_grouped: group {} of {} tokens is too large for a launch",
                  who, g, rows);
    }
  }
  flush();
}

// w1 and w3 (each rounding x as the CPU rounds it once for both: the same rounding twice), the SwiGLU in place
// of gate, then w2; the route weight is the combine's, as on the host.
void launch(const ops::ExpertFfn& a, cudaStream_t stream, const std::string& who) {
  const int64_t d = a.w1.cols, inter = a.w1.rows;
  FERRY_CHECK(a.w3.rows == inter && a.w3.cols == d && a.w2.rows == d && a.w2.cols == inter,
              "{}: expert_ffn: w1 {}x{}, w3 {}x{} and w2 {}x{} do not chain", who, a.w1.rows, a.w1.cols, a.w3.rows,
              a.w3.cols, a.w2.rows, a.w2.cols);
  if (a.m == 0) return;
  launch_linear(a.w1, a.x, a.m, d, a.gate, inter, a.bits, stream, who);
  launch_linear(a.w3, a.x, a.m, d, a.up, inter, a.bits, stream, who);
  check(launch_swiglu({a.gate, a.up, a.m, inter, static_cast<float>(a.limit)}, stream), who, "swiglu kernel launch");
  launch_linear(a.w2, a.gate, a.m, inter, a.out, d, a.bits, stream, who);
}

// ---- compressors and the lightning indexer ----

// The op's rope frequencies into the launch's arguments, checked against the rotated part of a row of `dims`.
template <class Args>
void copy_freqs(const ops::RopeFreqs& f, int64_t dims, Args& args, const std::string& who, const char* op) {
  FERRY_CHECK(f.count <= kMaxRopeFreqs && 2 * f.count <= dims,
              "{}: {}: {} rope frequencies for {} dims; the CUDA kernel takes at most {}", who, op, f.count, dims,
              kMaxRopeFreqs);
  args.count = f.count;
  std::copy_n(f.freqs, f.count, args.freqs);
}

bool power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

void launch(const ops::Compress& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(a.ratio >= 1 && a.width == (a.ratio == 4 ? 2 : 1) * a.dim, "{}: compress: state width mismatch", who);
  FERRY_CHECK(a.dim <= kCompressMaxDim, "{}: compress: {} dims; the CUDA kernel takes at most {}", who, a.dim,
              kCompressMaxDim);
  FERRY_CHECK(!a.indexer || power_of_two(a.dim), "{}: compress: hadamard: size must be a power of two", who);
  FERRY_CHECK(a.layout.dims == a.dim, "{}: compress: {}-dim rows for {}-dim entries", who, a.layout.dims, a.dim);
  FERRY_CHECK((a.p0 + a.n) / a.ratio <= a.capacity, "{}: KV cache full: compressed entries", who);
  CompressArgs args;
  args.a = a.a, args.s = a.s, args.ape = a.ape, args.norm = a.norm;
  args.n = a.n, args.p0 = a.p0, args.ratio = a.ratio, args.dim = a.dim, args.width = a.width;
  args.eps = a.eps, args.indexer = a.indexer;
  args.state_kv = a.state_kv, args.state_score = a.state_score;
  args.layout = kv_row(a.layout, who), args.rows = a.rows;
  copy_freqs(a.freqs, a.dim, args, who, "compress");
  check(launch_compress(args, stream), who, "compress kernel launch");
}

void launch(const ops::IndexerSelect& a, cudaStream_t stream, const std::string& who) {
  FERRY_CHECK(power_of_two(a.head_dim) && a.head_dim <= kIndexerMaxDim,
              "{}: indexer_select: head dim {}; the CUDA kernel takes a power of two up to {}", who, a.head_dim,
              kIndexerMaxDim);
  FERRY_CHECK(a.topk >= 1 && a.topk <= kIndexerMaxTopk, "{}: indexer_select: top-{}; the CUDA kernel takes 1 to {}",
              who, a.topk, kIndexerMaxTopk);
  FERRY_CHECK(a.heads >= 1 && a.layout.dims == a.head_dim,
              "{}: indexer_select: {} heads, {}-dim keys for {}-dim queries", who, a.heads, a.layout.dims, a.head_dim);
  IndexerArgs args;
  args.q = a.q, args.w = a.w, args.keys = a.keys;
  args.layout = kv_row(a.layout, who);
  args.round_fp4 = a.kv_type == planner::KvType::FP8;
  args.n = a.n, args.p0 = a.p0, args.heads = a.heads, args.head_dim = a.head_dim, args.topk = a.topk;
  args.weight_scale = indexer_weight_scale(a.heads, a.head_dim);
  args.scratch = a.key_tile, args.scratch_floats = a.key_tile ? a.key_tile_rows * a.head_dim : 0;
  args.sel = a.sel, args.sel_count = a.sel_count;
  copy_freqs(a.freqs, a.head_dim, args, who, "indexer_select");
  check(launch_indexer_select(args, stream), who, "indexer_select kernel launch");
}

}  // namespace

bool has_kernel(ops::Kind kind) {
  using ops::Kind;
  switch (kind) {
    case Kind::Embed:
    case Kind::RmsNorm:
    case Kind::Rope:
    case Kind::HcPre:
    case Kind::HcPost:
    case Kind::HcHead:
    case Kind::Linear:
    case Kind::LinearGrouped:
    case Kind::ExpertFfn:
    case Kind::KvEncode:
    case Kind::KvWindowStore:
    case Kind::Compress:
    case Kind::IndexerSelect:
    case Kind::Attention:
    case Kind::Route:
    case Kind::GatherRows:
    case Kind::MoeCombine:
    case Kind::AddStreams: return true;
    default: return false;
  }
}

void launch_op(const ops::Op& op, cudaStream_t stream, const std::string& who) {
  std::visit([&](const auto& a) { launch(a, stream, who); }, op);
}

}  // namespace ferry::runtime::cuda
