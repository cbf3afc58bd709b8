// The ops CudaBackend computes, checked and turned into launches of the CUDA kernels (runtime/kernels/cuda).
// Includes the CUDA runtime header: for the .cpp files of runtime/backend/cuda only.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "runtime/backend/ops.h"

namespace ferry::runtime::cuda {

// Whether a kernel exists for the kind: embedding, RMSNorm, RoPE, mHC (pre, post, head), the stream sum, linear
// layers (F32, BF16, FP8 and MXFP4 weights, as matrix-vector products over tiles of tokens), KV rows (every
// --kv-type's encoding, the window ring's store), the router (score and hash), the gather of expert rows and
// the combine of their outputs.
bool has_kernel(ops::Kind kind);

// Queues the op's kernels on `stream` and returns. Throws ferry::Error starting with `who` when the op has no
// kernel, its arguments are out of what the kernels take (a linear layer wider than the shared-memory tile, an
// embedding that is not BF16, a token outside the table), or the launch fails.
void launch_op(const ops::Op& op, cudaStream_t stream, const std::string& who);

}  // namespace ferry::runtime::cuda
