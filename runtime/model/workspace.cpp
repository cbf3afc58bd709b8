#include <tbb/task_arena.h>

#include <algorithm>

#include "planner/core/error.h"
#include "planner/memory.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime::detail {

namespace {
size_t sz(int64_t v) { return static_cast<size_t>(v); }
}  // namespace

// Every buffer sized from the planner's layout, so what the session holds is what the plan counts.
Workspace::Workspace(const planner::CpuForwardWorkspace& l, const core::ModelConfig& c, Backend* device)
    : ubatch(l.ubatch),
      threads(l.threads),
      scratch_per_thread(l.tile_scratch),
      tile_rows(planner::cpu_tile_layout(c).key_rows),
      tile_scores(planner::cpu_tile_layout(c).scores) {
  FERRY_CHECK(planner::cpu_tile_layout(c).per_thread == scratch_per_thread,
              "the tile scratch layout disagrees with the planner's workspace");
  auto f32 = [&](int64_t n) { return device_vector<float>(device, MemoryClass::Workspace, sz(n)); };
  auto i32 = [&](int64_t n) { return device_vector<int32_t>(device, MemoryClass::Workspace, sz(n)); };
  x = f32(l.x);
  xn = f32(l.xn);
  y = f32(l.y);
  mix = f32(l.mix);
  qa = f32(l.qa);
  q = f32(l.q);
  kv = f32(l.kv);
  o = f32(l.o);
  z = f32(l.z);
  kv_rows = device_vector<uint8_t>(device, MemoryClass::Workspace, sz(l.kv_rows_bytes));
  comp_a = f32(l.comp);
  comp_s = f32(l.comp);
  iq = f32(l.iq);
  iw = f32(l.iw);
  key_tile = f32(l.key_tile);
  sel = i32(l.sel);
  sel_count = i32(l.sel_count);
  gate = f32(l.gate);
  route_ids = i32(l.route_ids);
  route_w = f32(l.route_w);
  expert_tokens = i32(l.expert_tokens);
  xg = f32(l.xg);
  eg = f32(l.eg);
  eu = f32(l.eu);
  eo = f32(l.eo);
  tiles = f32(threads * scratch_per_thread);
}

ops::TileScratch Workspace::tile_scratch() {
  return {tiles.data(), scratch_per_thread, threads, tile_rows, tile_scores};
}

int64_t Workspace::bytes() const {
  auto f = [](const auto& v) { return static_cast<int64_t>(v.capacity() * sizeof(v[0])); };
  return f(x) + f(xn) + f(y) + f(mix) + f(qa) + f(q) + f(kv) + f(o) + f(z) + f(kv_rows) + f(comp_a) + f(comp_s) +
         f(iq) + f(iw) + f(key_tile) + f(sel) + f(sel_count) + f(gate) + f(route_ids) + f(route_w) + f(expert_tokens) +
         f(xg) + f(eg) + f(eu) + f(eo) + f(tiles);
}

ops::RopeFreqs freqs_of(const cpu::Rope& rope) {
  return {rope.freqs().data(), static_cast<int64_t>(rope.freqs().size())};
}

}  // namespace ferry::runtime::detail
