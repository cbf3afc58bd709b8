#include "planner/core/weight_view.h"

#include "planner/core/error.h"

namespace ferry::core {

WeightView WeightView::slice_rows(int64_t begin, int64_t count) const {
  FERRY_CHECK(begin >= 0 && count >= 0 && begin + count <= rows, "weight row slice out of range");
  WeightView v = *this;
  v.row_begin = row_begin + begin;
  v.rows = count;
  return v;
}

int64_t weight_view_code_bytes(const WeightView& w) {
  switch (w.format) {
    case WeightFormat::F32: return w.rows * w.cols * 4;
    case WeightFormat::BF16: return w.rows * w.cols * 2;
    case WeightFormat::FP8: return w.rows * w.cols;
    case WeightFormat::MXFP4: return w.rows * w.cols / 2;
  }
  return 0;
}

int64_t weight_view_scale_bytes(const WeightView& w) {
  switch (w.format) {
    case WeightFormat::F32:
    case WeightFormat::BF16: return 0;
    case WeightFormat::FP8: return ((w.rows + kFp8Block - 1) / kFp8Block) * ((w.cols + kFp8Block - 1) / kFp8Block);
    case WeightFormat::MXFP4: return w.rows * w.cols / kFp4Block;
  }
  return 0;
}

const char* activation_bits_name(ActivationBits bits) {
  switch (bits) {
    case ActivationBits::Int8: return "int8";
    case ActivationBits::Int16: return "int16";
    case ActivationBits::Int24: return "int24";
  }
  return "?";
}

int64_t weight_view_bytes(const WeightView& w) { return weight_view_code_bytes(w) + weight_view_scale_bytes(w); }

}  // namespace ferry::core
