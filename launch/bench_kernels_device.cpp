#include "launch/bench_kernels_device.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "launch/hardware_flags.h"
#include "planner/core/error.h"
#include "planner/core/model_config.h"
#include "planner/core/units.h"
#include "planner/hardware.h"
#include "planner/kv_cache.h"
#include "planner/memory.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/hardware_probe.h"
#include "runtime/kernels/cpu/ops.h"

namespace ferry::launch {
namespace {

using core::WeightFormat;

struct Shape {
  WeightFormat format;
  int64_t rows, cols;
  const char* what;
};

// V4-Flash (../shared/reference/deepseek-v4-flash/config.json): the attention's FP8 projections and the shared
// expert, then a routed expert's MXFP4 matrices.
constexpr Shape kShapes[] = {
    {WeightFormat::FP8, 1024, 4096, "wq_a"},           {WeightFormat::FP8, 32768, 1024, "wq_b"},
    {WeightFormat::FP8, 4096, 8192, "wo_b"},           {WeightFormat::FP8, 2048, 4096, "shared w1/w3"},
    {WeightFormat::MXFP4, 2048, 4096, "expert w1/w3"}, {WeightFormat::MXFP4, 4096, 2048, "expert w2"},
};

int cuda_index(const std::string& device) {
  const std::optional<int> index = cuda_device_index(device);
  FERRY_CHECK(index.has_value(), "--device '{}': give a CUDA device as cuda:N (cuda:0), or leave it out for the CPU",
              device);
  return *index;
}

// Filler codes that decode to ordinary values (no E4M3 NaN), scales near 2^-6, as the CPU bench's.
std::vector<uint8_t> filler(int64_t bytes, uint32_t seed) {
  std::vector<uint8_t> v(static_cast<size_t>(bytes));
  for (auto& b : v) {
    seed = seed * 1664525u + 1013904223u;
    b = static_cast<uint8_t>((seed >> 24) & 0x77);
  }
  return v;
}

// One matrix in device memory in the checkpoint's own format.
struct DeviceMatrix {
  runtime::DeviceBuffer codes, scales;
  core::WeightView view;
};

DeviceMatrix upload(runtime::Backend& dev, const Shape& s, uint32_t seed) {
  DeviceMatrix m;
  m.view.format = s.format, m.view.rows = m.view.tensor_rows = s.rows, m.view.cols = s.cols;
  const int64_t code_bytes = s.format == WeightFormat::FP8 ? s.rows * s.cols : s.rows * s.cols / 2;
  const int64_t scale_bytes =
      s.format == WeightFormat::FP8 ? (s.rows + 127) / 128 * ((s.cols + 127) / 128) : s.rows * s.cols / 32;
  m.codes = dev.allocate(runtime::MemoryClass::Weights, code_bytes);
  m.scales = dev.allocate(runtime::MemoryClass::Weights, scale_bytes);
  const std::vector<uint8_t> codes = filler(code_bytes, seed), scales(static_cast<size_t>(scale_bytes), 121);
  dev.wait(dev.copy_to_device(m.codes, 0, codes.data(), code_bytes));
  dev.wait(dev.copy_to_device(m.scales, 0, scales.data(), scale_bytes));
  m.view.data = static_cast<const uint8_t*>(m.codes.data());
  m.view.scales = static_cast<const uint8_t*>(m.scales.data());
  return m;
}

// Seconds per op of `n` tokens through each matrix in turn, the best pass of `reps` (after one warm-up pass).
double seconds_per_op(runtime::Backend& dev, const std::vector<DeviceMatrix>& ms, int64_t n, float* x, float* y,
                      int reps) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    runtime::ComputeEvent last;
    for (const DeviceMatrix& m : ms) last = dev.run(runtime::ops::Linear{m.view, x, n, 0, y, 0});
    dev.wait(last);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::min(best, t / static_cast<double>(ms.size()));
  }
  return best;
}

void bench_shape(runtime::Backend& dev, const Shape& s, int64_t working_set, const std::vector<int>& token_counts,
                 int reps, double copy_bw, double peak_flops) {
  std::vector<DeviceMatrix> ms;
  ms.push_back(upload(dev, s, 1));
  const int64_t bytes = weight_view_bytes(ms.front().view);
  while (static_cast<int64_t>(ms.size()) * bytes < working_set) ms.push_back(upload(dev, s, uint32_t(ms.size() + 1)));
  const int64_t most =
      std::max<int64_t>(1, token_counts.empty() ? 1 : *std::max_element(token_counts.begin(), token_counts.end()));
  runtime::DeviceBuffer x = dev.allocate(runtime::MemoryClass::Workspace, most * s.cols * 4);
  runtime::DeviceBuffer y = dev.allocate(runtime::MemoryClass::Workspace, most * s.rows * 4);
  const std::vector<float> ones(static_cast<size_t>(most * s.cols), 0.5f);
  dev.wait(dev.copy_to_device(x, 0, ones.data(), x.bytes()));
  auto* xp = static_cast<float*>(x.data());
  auto* yp = static_cast<float*>(y.data());
  char label[96];
  std::snprintf(label, sizeof label, "%s %lldx%lld (%s)", s.format == WeightFormat::FP8 ? "FP8" : "MXFP4",
                (long long)s.rows, (long long)s.cols, s.what);
  const double decode = static_cast<double>(bytes) / seconds_per_op(dev, ms, 1, xp, yp, reps);
  std::printf("%-34s %8s %9.1f GB/s %7.0f%% of copy\n", label, "1 token", decode / 1e9, 100 * decode / copy_bw);
  for (const int n : token_counts) {
    const double flops = 2.0 * double(s.rows) * double(s.cols) * n / seconds_per_op(dev, ms, n, xp, yp, reps);
    std::printf("%-34s %8d %9.2f TFLOP/s %5.0f%% of BF16 peak\n", label, n, flops / 1e12,
                peak_flops > 0 ? 100 * flops / peak_flops : 0.0);
  }
  std::fflush(stdout);
}

// Device memory of `bytes` filled with filler codes (no E4M3 NaN: attention and the indexer read ordinary rows).
runtime::DeviceBuffer filled(runtime::Backend& dev, int64_t bytes, uint32_t seed) {
  runtime::DeviceBuffer b = dev.allocate(runtime::MemoryClass::Workspace, std::max<int64_t>(bytes, 4));
  const std::vector<uint8_t> v = filler(b.bytes(), seed);
  dev.wait(dev.copy_to_device(b, 0, v.data(), b.bytes()));
  return b;
}

// Seconds per run of `op`, the best pass of `reps` passes of 20 runs (after a warm-up pass).
double seconds_per_run(runtime::Backend& dev, const runtime::ops::Op& op, int reps) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    runtime::ComputeEvent last;
    for (int i = 0; i < 20; ++i) last = dev.run(op);
    dev.wait(last);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 20;
    if (r > 0) best = std::min(best, t);
  }
  return best;
}

// One decode token's indexer (a CSA layer: scores over ctx/4 keys, top-k) and attention (ratio 4: the window and
// the top-k selected rows; ratio 128: the window and every ctx/128 row) at V4-Flash's shapes, fp8 KV, with the
// GB/s of the KV rows each reads; the attention split over the token's rows (the session's tile scratch holds its
// partials), then unsplit.
void bench_attention(runtime::Backend& dev, int64_t ctx, int reps, double copy_bw) {
  using planner::KvRowLayout;
  const core::ModelConfig c = core::preset_config("deepseek-v4-flash");
  const KvRowLayout main = KvRowLayout::main_row(c, planner::KvType::FP8);
  const KvRowLayout index = KvRowLayout::indexer_row(c, planner::KvType::FP8);
  const int64_t entries = ctx / 4, hd = c.head_dim, ihd = c.index_head_dim, topk = c.index_topk;
  const runtime::cpu::Rope rope(c, false), rope_c(c, true);
  const runtime::ops::RopeFreqs freqs{rope.freqs().data(), static_cast<int64_t>(rope.freqs().size())};
  const runtime::ops::RopeFreqs freqs_c{rope_c.freqs().data(), static_cast<int64_t>(rope_c.freqs().size())};
  runtime::DeviceBuffer keys = filled(dev, entries * index.bytes, 1), rows = filled(dev, entries * main.bytes, 2);
  runtime::DeviceBuffer ring = filled(dev, c.sliding_window * main.bytes, 3);
  runtime::DeviceBuffer iq = dev.allocate(runtime::MemoryClass::Workspace, c.index_n_heads * ihd * 4);
  runtime::DeviceBuffer iw = dev.allocate(runtime::MemoryClass::Workspace, c.index_n_heads * 4);
  runtime::DeviceBuffer tile = dev.allocate(runtime::MemoryClass::Workspace, planner::kIndexerTile * ihd * 4);
  runtime::DeviceBuffer sel = dev.allocate(runtime::MemoryClass::Workspace, topk * 4);
  runtime::DeviceBuffer count = dev.allocate(runtime::MemoryClass::Workspace, 4);
  runtime::DeviceBuffer q = dev.allocate(runtime::MemoryClass::Workspace, c.num_attention_heads * hd * 4);
  runtime::DeviceBuffer kv = dev.allocate(runtime::MemoryClass::Workspace, hd * 4);
  runtime::DeviceBuffer sink = dev.allocate(runtime::MemoryClass::Workspace, c.num_attention_heads * 4);
  runtime::DeviceBuffer o = dev.allocate(runtime::MemoryClass::Workspace, c.num_attention_heads * hd * 4);
  // The tile scratch a session's workspace holds (a slice per CPU worker): the attention's split partials.
  const planner::CpuTileLayout tl = planner::cpu_tile_layout(c);
  const int64_t threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  runtime::DeviceBuffer tiles = dev.allocate(runtime::MemoryClass::Workspace, tl.per_thread * threads * 4);
  const std::vector<float> small(static_cast<size_t>(c.num_attention_heads * hd), 0.01f);
  for (runtime::DeviceBuffer* b : {&iq, &iw, &q, &kv, &sink})
    dev.wait(dev.copy_to_device(*b, 0, small.data(), b->bytes()));
  auto f = [](runtime::DeviceBuffer& b) { return static_cast<float*>(b.data()); };
  auto i32 = [](runtime::DeviceBuffer& b) { return static_cast<int32_t*>(b.data()); };
  auto u8 = [](runtime::DeviceBuffer& b) { return static_cast<const uint8_t*>(b.data()); };
  const runtime::ops::IndexerSelect select{.q = f(iq),
                                           .w = f(iw),
                                           .keys = u8(keys),
                                           .layout = index,
                                           .kv_type = planner::KvType::FP8,
                                           .n = 1,
                                           .p0 = ctx - 1,
                                           .heads = c.index_n_heads,
                                           .head_dim = ihd,
                                           .topk = topk,
                                           .freqs = freqs_c,
                                           .key_tile = f(tile),
                                           .key_tile_rows = planner::kIndexerTile,
                                           .tiles = {},  // the device's indexer keeps no per-thread tiles
                                           .sel = i32(sel),
                                           .sel_count = i32(count)};
  const double t_select = seconds_per_run(dev, select, reps);
  auto line = [&](const char* what, double bytes, double t) {
    std::printf("%-34s %8lld %9.1f GB/s %7.0f%% of copy %9.1f us\n", what, (long long)ctx, bytes / t / 1e9,
                100 * bytes / t / copy_bw, t * 1e6);
  };
  line("indexer (CSA, fp8 keys)", double(entries * index.bytes), t_select);
  for (const int64_t ratio : {int64_t{4}, int64_t{128}}) {
    runtime::ops::Attention attn{.q = f(q),
                                 .kv = f(kv),
                                 .window = u8(ring),
                                 .compressed = u8(rows),
                                 .layout = main,
                                 .sel = i32(sel),
                                 .sel_count = i32(count),
                                 .topk = topk,
                                 .n = 1,
                                 .p0 = ctx - 1,
                                 .heads = c.num_attention_heads,
                                 .head_dim = hd,
                                 .window_size = c.sliding_window,
                                 .ratio = ratio,
                                 .sink = f(sink),
                                 .freqs = freqs,
                                 .tiles = {f(tiles), tl.per_thread, threads, tl.key_rows, tl.scores},
                                 .o = f(o)};
    const double read = double((c.sliding_window + (ratio == 4 ? topk : ctx / ratio)) * main.bytes);
    line(ratio == 4 ? "attention (CSA: window + top-k)" : "attention (HCA: window + all)", read,
         seconds_per_run(dev, attn, reps));
    attn.tiles = {};  // no room for partials: a block per head group
    line("  unsplit (a block per 8 heads)", read, seconds_per_run(dev, attn, reps));
  }
  std::fflush(stdout);
}

}  // namespace

void run_device_kernel_bench(const std::string& device, int repetitions, int working_set_mib,
                             const std::vector<int>& token_counts) {
  const int index = cuda_index(device);
  std::vector<std::string> notes;
  const std::vector<planner::GpuSpec> gpus = runtime::probe_gpus(notes);
  if (gpus.empty()) {
    std::string why = notes.empty() ? "no CUDA GPU found" : notes.front();
    FERRY_THROW("--device {}: {}", device, why.substr(0, why.rfind(": planning")));
  }
  FERRY_CHECK(index < static_cast<int>(gpus.size()), "--device {}: this machine has {} GPU(s)", device, gpus.size());
  const planner::GpuSpec& gpu = gpus[static_cast<size_t>(index)];
  std::unique_ptr<runtime::Backend> dev = runtime::cuda::make_cuda_backend(index);
  const double copy_bw = runtime::cuda::device_copy_bandwidth(index, 512 * core::kMiB, 5);
  const int64_t working_set = (working_set_mib > 0 ? working_set_mib : 1024) * core::kMiB;
  std::printf("ferry bench kernels: %s %s (%s), %s of weights cycled\n", device.c_str(), gpu.name.c_str(),
              gpu.sm.c_str(), core::format_bytes(working_set).c_str());
  std::printf("device copy %.0f GB/s measured (datasheet %.0f GB/s); BF16 tensor peak %.0f TFLOP/s (datasheet)\n",
              copy_bw / 1e9, gpu.memory_bandwidth / 1e9, gpu.bf16_tflops);
  for (const Shape& s : kShapes)
    bench_shape(*dev, s, working_set, token_counts, repetitions, copy_bw, gpu.bf16_tflops * 1e12);
  std::printf("\n%-34s %8s %14s %17s %12s\n", "decode step, one token", "context", "KV rows read", "", "per call");
  for (const int64_t ctx : {int64_t{64} << 10, int64_t{1} << 20}) bench_attention(*dev, ctx, repetitions, copy_bw);
}

}  // namespace ferry::launch
