// A KV row layout (planner::KvRowLayout, the CPU's encode_kv_row's) in the terms of the CUDA kernels
// (runtime/kernels/cuda/kv_math.h). Needs no CUDA header: the CPU tests (test_cuda_math_kv) encode through it.
#pragma once

#include <string>

#include "planner/core/error.h"
#include "planner/kv_cache.h"
#include "runtime/kernels/cuda/kv_math.h"

namespace ferry::runtime::cuda {

// The kernels' terms for a row layout, checked against the planner's row size (kv_row_bytes).
inline KvRow kv_row(const planner::KvRowLayout& l, const std::string& who) {
  using planner::KvType;
  KvRow r;
  r.dims = l.dims, r.rope_dims = l.rope_dims, r.bytes = l.bytes;
  int64_t bytes = 0;
  switch (l.type) {
    case KvType::BF16: r.format = KvFormat::Bf16, bytes = 2 * l.dims; break;
    case KvType::Q8_0:
    case KvType::Q4_0: {
      const bool four = l.type == KvType::Q4_0;
      r.format = four ? KvFormat::Q4 : KvFormat::Q8;
      bytes = (l.dims + kKvQBlock - 1) / kKvQBlock * (2 + (four ? kKvQBlock / 2 : kKvQBlock));
      break;
    }
    case KvType::FP8:
      if (l.indexer) {
        FERRY_CHECK(l.dims % kKvFp4Block == 0, "{}: kv_encode: indexer key dims must be a multiple of 32", who);
        r.format = KvFormat::Fp4Indexer, bytes = l.dims / 2 + l.dims / kKvFp4Block;
      } else {
        r.format = KvFormat::Fp8Main;
        bytes = l.dims + l.rope_dims + (l.dims - l.rope_dims + kKvFp8Block - 1) / kKvFp8Block;
      }
      break;
  }
  FERRY_CHECK(l.rope_dims >= 0 && l.rope_dims <= l.dims && l.bytes >= bytes,
              "{}: kv_encode: a {}-byte row cannot hold {} values of its type", who, l.bytes, l.dims);
  return r;
}

}  // namespace ferry::runtime::cuda
