// The ops CudaBackend computes, checked and turned into launches of the CUDA kernels (runtime/kernels/cuda).
// Includes the CUDA runtime header: for the .cpp files of runtime/backend/cuda only.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "runtime/backend/ops.h"

namespace ferry::runtime::cuda {

// Whether a kernel exists for the kind: every op of the forward pass has one (embedding, RMSNorm, RoPE, mHC, the
// stream sum, linear layers as matrix-vector products for decode and tensor-core GEMMs for chunks, the expert
// feed-forward, KV rows, compressors, the indexer, attention, the router, the gather and the combine).
bool has_kernel(ops::Kind kind);

// Queues the op's kernels on `stream` and returns. Throws ferry::Error starting with `who` when the op's
// arguments are out of what the kernels take (a linear layer wider than the shared-memory tile, an
// embedding that is not BF16, a token outside the table), or the launch fails.
void launch_op(const ops::Op& op, cudaStream_t stream, const std::string& who);

}  // namespace ferry::runtime::cuda
