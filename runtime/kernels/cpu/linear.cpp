#include "runtime/kernels/cpu/linear.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "runtime/kernels/cpu/matvec.h"
#include "runtime/kernels/cpu/matvec_rows.h"
#include "runtime/kernels/cpu/vec.h"

namespace ferry::runtime::cpu {

namespace {

// Row r of the view, decoded to float (scales applied). One row at a time: a chunk's tokens then share it.
void decode_row(const core::WeightView& w, int64_t r, float* out) {
  const int64_t row = w.row_begin + r, cols = w.cols;
  const core::Fp8DecodeTables& tb = core::fp8_decode_tables();
  switch (w.format) {
    case core::WeightFormat::F32:
      std::memcpy(out, reinterpret_cast<const float*>(w.data) + row * cols, static_cast<size_t>(cols) * sizeof(float));
      return;
    case core::WeightFormat::FP8: {
      const int64_t scale_cols = (cols + core::kFp8Block - 1) / core::kFp8Block;
      const uint8_t* p = w.data + row * cols;
      const uint8_t* sc = w.scales + (row / core::kFp8Block) * scale_cols;
      for (int64_t k = 0; k < cols; ++k) out[k] = tb.e4m3[p[k]] * tb.e8m0[sc[k / core::kFp8Block]];
      return;
    }
    case core::WeightFormat::BF16:  // linear() sends BF16 to matmul_bf16, MXFP4 to the integer kernels
    case core::WeightFormat::MXFP4: FERRY_THROW("linear: BF16 and MXFP4 rows are never decoded here");
  }
}

}  // namespace

std::vector<Mxfp4Activation> round_mxfp4_inputs(const float* x, int64_t n, int64_t x_stride, int64_t cols,
                                                core::ActivationBits bits) {
  std::vector<Mxfp4Activation> acts(static_cast<size_t>(n));
  if (n == 1)
    quantize_mxfp4_activation(x, cols, acts[0], bits);
  else
    tbb::parallel_for(int64_t{0}, n,
                      [&](int64_t t) { quantize_mxfp4_activation(x + t * x_stride, cols, acts[size_t(t)], bits); });
  return acts;
}

void linear(const core::WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y, int64_t y_stride,
            core::ActivationBits bits, const std::vector<Mxfp4Activation>* rounded) {
  FERRY_CHECK(w.data != nullptr && w.rows >= 0 && w.cols > 0, "linear: empty weight view");
  FERRY_CHECK(w.format != core::WeightFormat::MXFP4 || w.cols % core::kFp4Block == 0,
              "linear: MXFP4 cols not a multiple of 32");
  // Every output element is computed by the same per-row code whatever n is, so a token's result does not
  // depend on which chunk it was in: prefill with any --ubatch and one-token decode agree bit for bit.
  const bool tuned = w.format == core::WeightFormat::MXFP4 || w.format == core::WeightFormat::BF16 ||
                     (w.format == core::WeightFormat::FP8 && w.row_begin % core::kFp8Block == 0);
  if (tuned) {
    // Blocks of rows small enough to stay in cache while every tile of the chunk's tokens passes over them.
    const int64_t row_bytes = w.format == core::WeightFormat::MXFP4  ? w.cols / 2 + w.cols / core::kFp4Block
                              : w.format == core::WeightFormat::BF16 ? w.cols * 2
                                                                     : w.cols;
    int64_t block = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(row_bytes, 1));
    if (w.format == core::WeightFormat::FP8)
      block = std::max<int64_t>(core::kFp8Block, block / core::kFp8Block * core::kFp8Block);
    // MXFP4: each token's activation is rounded once (mxfp4_activation.h) and shared by all row blocks.
    std::vector<Mxfp4Activation> own;
    if (w.format == core::WeightFormat::MXFP4 && !rounded) {
      own = round_mxfp4_inputs(x, n, x_stride, w.cols, bits);
      rounded = &own;
    }
    if (rounded)
      FERRY_CHECK(static_cast<int64_t>(rounded->size()) == n && (n == 0 || (*rounded)[0].cols == w.cols),
                  "linear: the rounded MXFP4 input does not match the weight");
    // The multi-token kernels decode each weight vector once per tile of tokens and give every token the bits
    // of the matvec (which is their one-token case).
    auto run_block = [&](int64_t r0, int64_t r1) {
      const int64_t row = w.row_begin + r0;
      float* yb = y + r0;
      if (w.format == core::WeightFormat::MXFP4) {
        const uint8_t* codes = w.data + row * (w.cols / 2);
        const uint8_t* scales = w.scales + row * (w.cols / core::kFp4Block);
        matmul_mxfp4(codes, scales, r1 - r0, rounded->data(), n, yb, y_stride);
      } else if (w.format == core::WeightFormat::BF16) {
        const uint16_t* codes = reinterpret_cast<const uint16_t*>(w.data) + row * w.cols;
        matmul_bf16(codes, r1 - r0, w.cols, x, n, x_stride, yb, y_stride);
      } else {
        const int64_t scale_cols = (w.cols + core::kFp8Block - 1) / core::kFp8Block;
        const uint8_t* codes = w.data + row * w.cols;
        const uint8_t* scales = w.scales + (row / core::kFp8Block) * scale_cols;
        matmul_fp8(codes, scales, r1 - r0, w.cols, x, n, x_stride, yb, y_stride);
      }
    };
    if (n == 1) {
      run_block(0, w.rows);
      return;
    }
    const int64_t blocks = (w.rows + block - 1) / block;
    tbb::parallel_for(int64_t{0}, blocks, [&](int64_t b) { run_block(b * block, std::min(w.rows, (b + 1) * block)); });
    return;
  }
  // F32 and FP8 views inside a 128-row block: each row decoded once and applied to every token. Ranges of about
  // kRowChunkBytes of weights per token, so that one token's matvec spreads over the threads too; one decoded
  // row per range: its allocation is noise.
  const int64_t row_bytes = w.format == core::WeightFormat::F32 ? w.cols * 4 : w.cols;
  const int64_t grain = std::max<int64_t>(1, detail::kRowChunkBytes / (row_bytes * std::max<int64_t>(n, 1)));
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, w.rows, grain), [&](const tbb::blocked_range<int64_t>& range) {
    std::vector<float> row(static_cast<size_t>(w.cols));
    for (int64_t r = range.begin(); r != range.end(); ++r) {
      decode_row(w, r, row.data());
      for (int64_t t = 0; t < n; ++t) y[t * y_stride + r] = dot(row.data(), x + t * x_stride, w.cols);
    }
  });
}

}  // namespace ferry::runtime::cpu
