// The KV cache of one sequence on the CPU: per layer the raw sliding-window ring, the compressed rows, the
// indexer keys and the compressors' running state, stored in the `--kv-type` encoding. Every buffer is sized
// from the context length with the planner's formulas (planner/kv_cache.h) and allocated once, so what the
// runtime holds is exactly what `ferry plan` predicted.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "planner/kv_cache.h"
#include "runtime/backend/device_vector.h"
#include "runtime/kernels/cpu/kv_rows.h"

namespace ferry::runtime {

// A compressor's fp32 state (DeepSeek's kv_state / score_state): [coff·ratio, coff·D] each. For ratio 4 rows
// 0..3 hold the previous block and rows 4..7 the current one (the overlapping window); otherwise rows 0..r−1
// hold the current block.
struct CompressorState {
  int64_t rows = 0, width = 0;
  DeviceVector<float> kv, score;
};

struct LayerKv {
  int64_t ratio = 0;
  int64_t window_rows = 0;       // min(ctx, W)
  int64_t compressed_rows = 0;   // capacity: ctx / ratio
  int64_t n_compressed = 0;      // entries stored so far (== indexer keys stored)
  DeviceVector<uint8_t> window;  // row of position p at slot p % W
  DeviceVector<uint8_t> compressed;
  DeviceVector<uint8_t> index_keys;  // ratio 4 only
  CompressorState main_state, index_state;
};

// A layer's geometry, whether or not this cache holds its buffers (a rank holds only the layers it runs): what a
// session file lays out for every layer (session_file.h).
struct LayerShape {
  int64_t ratio = 0;
  int64_t window_rows = 0;         // min(ctx, W)
  int64_t state_floats = 0;        // of the main compressor's kv (and of its score); 0 when uncompressed
  int64_t index_state_floats = 0;  // of the indexer's compressor (ratio 4 only)
  bool compressed() const { return ratio > 0; }
  bool indexed() const { return ratio == 4; }
};

class KvCache {
 public:
  // Layers 0 … num_hidden_layers−1, plus the MTP layer when `with_mtp`; of those, only the layers `holds` names
  // get buffers (empty: all; a rank holds the layers it runs). The buffers come from `device` (nullptr: the plain
  // heap): the indexer keys as class Indexer, the rest (compressor states included, as the planner counts them)
  // as Kv.
  KvCache(const core::ModelConfig& c, planner::KvType type, int64_t ctx, bool with_mtp, Backend* device = nullptr,
          const std::function<bool(int64_t)>& holds = {});

  planner::KvType type() const { return type_; }
  int64_t ctx() const { return ctx_; }
  const planner::KvRowLayout& main_layout() const { return main_; }
  const planner::KvRowLayout& index_layout() const { return index_; }
  LayerKv& layer(int64_t i) { return layers_[static_cast<size_t>(i)]; }
  const LayerKv& layer(int64_t i) const { return layers_[static_cast<size_t>(i)]; }
  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }
  const LayerShape& shape(int64_t i) const { return shapes_[static_cast<size_t>(i)]; }

  // Bytes held, by kind, measured from the buffers themselves.
  planner::KvBytes bytes() const;
  // Forgets every token (positions restart at 0); keeps the buffers.
  void clear();

 private:
  planner::KvType type_;
  int64_t ctx_;
  planner::KvRowLayout main_, index_;
  std::vector<LayerKv> layers_;
  std::vector<LayerShape> shapes_;
};

}  // namespace ferry::runtime
