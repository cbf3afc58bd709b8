// The element-wise middle of an expert feed-forward on the device: gate ← swiglu(gate, up) (ffn_math.h), between
// the w1/w3 and the w2 matrix-vector products that cuda_ops.cpp launches around it.
#include <algorithm>

#include "runtime/kernels/cuda/ffn_math.h"
#include "runtime/kernels/cuda/kernels.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) swiglu_kernel(SwigluArgs a) {
  const int64_t total = a.m * a.inter;
  for (int64_t i = int64_t{blockIdx.x} * kThreads + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads)
    a.gate[i] = swiglu(a.gate[i], a.up[i], a.limit);
}

}  // namespace

cudaError_t launch_swiglu(const SwigluArgs& a, cudaStream_t stream) {
  const int64_t total = a.m * a.inter;
  if (total == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
  swiglu_kernel<<<blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
