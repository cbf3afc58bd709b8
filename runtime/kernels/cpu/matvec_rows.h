// Shared by the matvec kernels (matvec.cpp, matvec_mxfp4.cpp): shape checks and the parallel loops over rows.
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "planner/core/error.h"

namespace ferry::runtime::cpu::detail {

constexpr int64_t kRowChunkBytes = 64 << 10;  // weight bytes per TBB task: big enough to amortise scheduling

inline void check_matvec_shape(int64_t rows, int64_t cols, const char* what) {
  FERRY_CHECK(rows >= 0 && cols >= 0, "{}: negative shape {}x{}", what, rows, cols);
}

// Runs range(r0, r1) over consecutive row ranges covering [0, rows), in parallel once the weight is large
// enough for tasks to pay off; each range holds about kRowChunkBytes of weights.
template <class Range>
void for_each_row_range(int64_t rows, int64_t row_bytes, const Range& range) {
  if (rows * row_bytes <= kRowChunkBytes) {
    range(int64_t{0}, rows);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kRowChunkBytes / std::max<int64_t>(row_bytes, 1));
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows, grain),
                    [&](const tbb::blocked_range<int64_t>& r) { range(r.begin(), r.end()); });
}

// Runs row(r) for every row, in the same ranges.
template <class Row>
void for_each_row(int64_t rows, int64_t row_bytes, const Row& row) {
  for_each_row_range(rows, row_bytes, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) row(r);
  });
}

}  // namespace ferry::runtime::cpu::detail
