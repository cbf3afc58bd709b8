#include "runtime/model/weight_placement.h"

#include <cstring>

#include "planner/core/error.h"

namespace ferry::runtime {

WeightCopier::WeightCopier(Backend& device) : device_(device) {}

const uint8_t* WeightCopier::copy(const void* src, int64_t bytes) {
  if (!src || bytes == 0) return static_cast<const uint8_t*>(src);
  DeviceBuffer b = device_.allocate(MemoryClass::Weights, bytes);
  last_ = device_.copy_to_device(b, 0, src, bytes);
  const auto* p = static_cast<const uint8_t*>(b.data());
  buffers_.push_back(std::move(b));
  return p;
}

void WeightCopier::move(core::WeightView& w) {
  FERRY_CHECK(w.row_begin == 0 && w.rows == w.tensor_rows, "only whole tensors move to a device");
  w.data = copy(w.data, core::weight_view_code_bytes(w));
  w.scales = copy(w.scales, core::weight_view_scale_bytes(w));
}

void WeightCopier::move(DeviceVector<float>& v) {
  v = DeviceVector<float>(v.begin(), v.end(), DeviceAllocator<float>(&device_, MemoryClass::Weights));
}

void WeightCopier::move(DeviceVector<int32_t>& v) {
  v = DeviceVector<int32_t>(v.begin(), v.end(), DeviceAllocator<int32_t>(&device_, MemoryClass::Weights));
}

void WeightCopier::move(HcWeights& w) {
  move(w.fn);
  move(w.base);
  move(w.scale);
}

void WeightCopier::move(ExpertWeights& e) {
  move(e.w1);
  move(e.w2);
  move(e.w3);
}

void WeightCopier::move_non_routed(LayerWeights& L) {
  move(L.hc_attn);
  move(L.hc_ffn);
  move(L.attn_norm);
  move(L.ffn_norm);
  for (core::WeightView* w : {&L.wq_a, &L.wq_b, &L.wkv, &L.wo_a, &L.wo_b}) move(*w);
  move(L.q_norm);
  move(L.kv_norm);
  move(L.attn_sink);
  for (auto* comp : {&L.compressor, &L.indexer_compressor}) {
    if (!*comp) continue;
    move((*comp)->wkv);
    move((*comp)->wgate);
    move((*comp)->ape);
    move((*comp)->norm);
  }
  if (L.indexer_wq_b.data) move(L.indexer_wq_b);
  if (L.indexer_weights_proj.data) move(L.indexer_weights_proj);
  move(L.gate);
  move(L.gate_bias);
  move(L.tid2eid);
  move(L.shared);
  if (L.e_proj.data) {
    move(L.e_proj);
    move(L.h_proj);
    move(L.enorm);
    move(L.hnorm);
    move(L.mtp_norm);
    move(L.hc_head);
  }
}

std::vector<DeviceBuffer> WeightCopier::finish() {
  device_.wait(last_);
  last_ = {};
  return std::move(buffers_);
}

std::array<ByteRange, 6> expert_regions(const ExpertWeights& e) {
  std::array<ByteRange, 6> r;
  const core::WeightView* w[3] = {&e.w1, &e.w2, &e.w3};
  for (int i = 0; i < 3; ++i) {
    r[2 * i] = {w[i]->data, core::weight_view_code_bytes(*w[i])};
    r[2 * i + 1] = {w[i]->scales, core::weight_view_scale_bytes(*w[i])};
  }
  return r;
}

int64_t expert_bytes(const ExpertWeights& e) {
  int64_t b = 0;
  for (const ByteRange& r : expert_regions(e)) b += r.bytes;
  return b;
}

int64_t pack_expert(const ExpertWeights& e, uint8_t* dst) {
  int64_t offset = 0;
  for (const ByteRange& r : expert_regions(e)) {
    if (r.bytes) std::memcpy(dst + offset, r.data, static_cast<size_t>(r.bytes));
    offset += r.bytes;
  }
  return offset;
}

ExpertWeights expert_in_slot(const ExpertWeights& host, const uint8_t* slot) {
  ExpertWeights e = host;
  core::WeightView* w[3] = {&e.w1, &e.w2, &e.w3};
  int64_t offset = 0;
  for (core::WeightView* v : w) {
    v->data = slot + offset;
    offset += core::weight_view_code_bytes(*v);
    v->scales = core::weight_view_scale_bytes(*v) ? slot + offset : nullptr;
    offset += core::weight_view_scale_bytes(*v);
  }
  return e;
}

}  // namespace ferry::runtime
