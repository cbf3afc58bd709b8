// Moving weights onto a device: the views and decoded vectors of a ModelWeights copy re-pointed at device
// buffers of class Weights, the bytes copied on the device's copy stream. Binding a Plan (offload/) decides
// what moves; this file knows how each kind of tensor is laid out. The device must be host-addressable (the
// ops run on the CPU): the host, or the simulated device.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/model/model_weights.h"

namespace ferry::runtime {

class WeightCopier {
 public:
  explicit WeightCopier(Backend& device);

  // Each call moves what it is given onto the device, in place.
  void move(core::WeightView& w);
  void move(DeviceVector<float>& v);
  void move(DeviceVector<int32_t>& v);
  void move(HcWeights& w);
  void move(ExpertWeights& e);
  // Everything of a layer but its routed experts (attention, compressors, indexer, router, shared expert,
  // norms, mHC; MTP projections).
  void move_non_routed(LayerWeights& L);
  // Waits for the queued copies and hands over the buffers, which must outlive the moved weights.
  std::vector<DeviceBuffer> finish();

 private:
  const uint8_t* copy(const void* src, int64_t bytes);
  Backend& device_;
  std::vector<DeviceBuffer> buffers_;
  CopyEvent last_;
};

// One routed expert packed into one buffer (an expert-cache or stream slot): w1, w2, w3, codes then scales.
struct ByteRange {
  const uint8_t* data = nullptr;
  int64_t bytes = 0;
};
std::array<ByteRange, 6> expert_regions(const ExpertWeights& e);
int64_t expert_bytes(const ExpertWeights& e);
// Copies `e`'s regions back to back into `dst` (expert_bytes(e) of room); returns the bytes written.
int64_t pack_expert(const ExpertWeights& e, uint8_t* dst);
// Views of `host`'s layout into a slot that holds its packed bytes.
ExpertWeights expert_in_slot(const ExpertWeights& host, const uint8_t* slot);

}  // namespace ferry::runtime
