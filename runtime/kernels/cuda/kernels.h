// The CUDA kernels of the ops of runtime/backend/ops.h, each a launch on a stream that returns at once with the
// launch's status (a fault inside a kernel shows later, at an event of the stream). Their arguments are plain
// device pointers and sizes, so that nvcc compiles nothing of the rest of ferry: runtime/backend/cuda/cuda_ops.cpp
// checks each op and turns it into these calls. Included only by the CUDA build's own files (it names
// cudaStream_t).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "runtime/kernels/cuda/matvec_math.h"

namespace ferry::runtime::cuda {

// Token ids travel in the launch's own arguments (the op's are host memory): no copy, no staging buffer.
constexpr int kEmbedTokensPerLaunch = 512;
struct EmbedArgs {
  const uint16_t* table = nullptr;  // BF16 [vocab, cols]
  int64_t cols = 0, copies = 1, n = 0;
  float* out = nullptr;  // [n, copies, cols]
  int32_t tokens[kEmbedTokensPerLaunch] = {};
};
cudaError_t launch_embed(const EmbedArgs& a, cudaStream_t stream);

struct RmsNormArgs {
  const float* x = nullptr;
  int64_t rows = 0, dim = 0, x_stride = 0, out_stride = 0;
  const float* weight = nullptr;  // may be null
  double eps = 0;
  float* out = nullptr;
};
cudaError_t launch_rms_norm(const RmsNormArgs& a, cudaStream_t stream);

// The frequency table (host memory in the op) travels in the arguments too: V4 has 32 frequencies.
constexpr int kMaxRopeFreqs = 64;
struct RopeArgs {
  float* x = nullptr;
  int64_t n = 0, heads = 0, head_dim = 0, offset = 0, p0 = 0, count = 0;
  bool inverse = false;
  double freqs[kMaxRopeFreqs] = {};
};
cudaError_t launch_rope(const RopeArgs& a, cudaStream_t stream);

struct AddStreamsArgs {
  const float* a = nullptr;
  const float* b = nullptr;
  int64_t n = 0, streams = 0, d = 0;
  float* out = nullptr;
};
cudaError_t launch_add_streams(const AddStreamsArgs& a, cudaStream_t stream);

// y[t·y_stride + r] = sum_k W[row_begin + r, k]·x[t·x_stride + k]: each warp streams one weight row in 16-byte
// loads (matvec_math.h) and applies it to a tile of up to 4 tokens held in shared memory (for MXFP4, rounded per
// block of 32 to `bits` first, as the CPU rounds them); fp32 accumulation. The matrix-vector product of decode, and of
// prefill until a tensor-core GEMM exists.
constexpr int64_t kMatvecMaxCols = 12288;    // one token's input in the 48 KiB of shared memory a block gets
constexpr int64_t kMatvecMaxTokens = 65535;  // a grid's y extent, at one token a block
struct MatvecArgs {
  MatvecFormat format = MatvecFormat::F32;
  const uint8_t* codes = nullptr;   // the whole tensor
  const uint8_t* scales = nullptr;  // FP8: [ceil(tensor_rows/128), ceil(cols/128)]; MXFP4: [tensor_rows, cols/32]
  int64_t row_begin = 0, rows = 0, cols = 0;
  const float* x = nullptr;
  int64_t n = 0, x_stride = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
  int bits = 24;  // MXFP4 input rounding: 8, 16 or 24
};
cudaError_t launch_matvec(const MatvecArgs& a, cudaStream_t stream);

// gate[i] ← swiglu(gate[i], up[i], limit) (ffn_math.h) over [m, inter]: an expert feed-forward's middle.
struct SwigluArgs {
  float* gate = nullptr;
  const float* up = nullptr;
  int64_t m = 0, inter = 0;
  float limit = 0;
};
cudaError_t launch_swiglu(const SwigluArgs& a, cudaStream_t stream);

}  // namespace ferry::runtime::cuda
