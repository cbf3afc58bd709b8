#include "runtime/cpu/linear.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <string>

#include "planner/error.h"
#include "runtime/cpu/matvec.h"
#include "runtime/dtype_codec.h"

namespace ferry::runtime::cpu {

namespace {

constexpr int64_t kFp8Block = 128;
constexpr int64_t kFp4Block = 32;

float row_dot(const WeightView& w, int64_t r, const float* x) {
  const int64_t row = w.row_begin + r, cols = w.cols;
  double acc = 0;
  switch (w.format) {
    case WeightFormat::F32: {
      const float* p = reinterpret_cast<const float*>(w.data) + row * cols;
      float s = 0;
      for (int64_t k = 0; k < cols; ++k) s += p[k] * x[k];
      return s;
    }
    case WeightFormat::BF16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(w.data) + row * cols;
      float s = 0;
      for (int64_t k = 0; k < cols; ++k) s += bf16_to_float(p[k]) * x[k];
      return s;
    }
    case WeightFormat::FP8: {
      const int64_t scale_cols = (cols + kFp8Block - 1) / kFp8Block;
      const uint8_t* p = w.data + row * cols;
      const uint8_t* sc = w.scales + (row / kFp8Block) * scale_cols;
      for (int64_t b = 0; b < scale_cols; ++b) {
        float s = 0;
        for (int64_t k = b * kFp8Block; k < std::min(cols, (b + 1) * kFp8Block); ++k) s += e4m3_to_float(p[k]) * x[k];
        acc += s * e8m0_to_float(sc[b]);
      }
      return static_cast<float>(acc);
    }
    case WeightFormat::MXFP4: {
      const uint8_t* p = w.data + row * (cols / 2);
      const uint8_t* sc = w.scales + row * (cols / kFp4Block);
      for (int64_t b = 0; b < cols / kFp4Block; ++b) {
        float s = 0;
        for (int64_t k = b * kFp4Block; k < (b + 1) * kFp4Block; k += 2) {
          const uint8_t byte = p[k / 2];
          s += e2m1_to_float(fp4_low(byte)) * x[k] + e2m1_to_float(fp4_high(byte)) * x[k + 1];
        }
        acc += s * e8m0_to_float(sc[b]);
      }
      return static_cast<float>(acc);
    }
  }
  return 0;
}

}  // namespace

WeightView WeightView::slice_rows(int64_t begin, int64_t count) const {
  FERRY_CHECK(begin >= 0 && count >= 0 && begin + count <= rows, "weight row slice out of range");
  WeightView v = *this;
  v.row_begin = row_begin + begin;
  v.rows = count;
  return v;
}

int64_t weight_view_bytes(const WeightView& w) {
  switch (w.format) {
    case WeightFormat::F32: return w.rows * w.cols * 4;
    case WeightFormat::BF16: return w.rows * w.cols * 2;
    case WeightFormat::FP8: return w.rows * w.cols + ((w.rows + 127) / 128) * ((w.cols + 127) / 128);
    case WeightFormat::MXFP4: return w.rows * w.cols / 2 + w.rows * w.cols / kFp4Block;
  }
  return 0;
}

void linear(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y, int64_t y_stride) {
  FERRY_CHECK(w.data != nullptr && w.rows >= 0 && w.cols > 0, "linear: empty weight view");
  FERRY_CHECK(w.format != WeightFormat::MXFP4 || w.cols % kFp4Block == 0, "linear: MXFP4 cols not a multiple of 32");
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * x_stride;
    float* yt = y + t * y_stride;
    // Aligned views go to the tuned matrix-vector kernels; the rest (small or mid-block slices) row by row.
    if (w.format == WeightFormat::MXFP4) {
      matvec_mxfp4(w.data + w.row_begin * (w.cols / 2), w.scales + w.row_begin * (w.cols / kFp4Block), w.rows, w.cols,
                   xt, yt);
      continue;
    }
    if (w.format == WeightFormat::FP8 && w.row_begin % kFp8Block == 0) {
      const int64_t scale_cols = (w.cols + kFp8Block - 1) / kFp8Block;
      matvec_fp8(w.data + w.row_begin * w.cols, w.scales + (w.row_begin / kFp8Block) * scale_cols, w.rows, w.cols, xt,
                 yt);
      continue;
    }
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, w.rows, 64), [&](const tbb::blocked_range<int64_t>& range) {
      for (int64_t r = range.begin(); r != range.end(); ++r) yt[r] = row_dot(w, r, xt);
    });
  }
}

}  // namespace ferry::runtime::cpu
