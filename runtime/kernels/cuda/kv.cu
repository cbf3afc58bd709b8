// KV rows on the device: the storage encoding of every --kv-type, unit by unit with the functions of kv_math.h
// that the CPU tests compare with the CPU's encode_kv_row, and the sliding-window ring's store.
#include "runtime/kernels/cuda/kernel_util.cuh"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/cuda/kv_math.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) kv_encode_kernel(KvEncodeArgs a) {
  const int64_t units = kv_units(a.layout), total = a.rows * units;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads) {
    const int64_t r = i / units;
    encode_kv_unit(a.layout, a.x + r * a.layout.dims, a.out + r * a.layout.bytes, i % units);
  }
}

__global__ void __launch_bounds__(kThreads) kv_window_store_kernel(KvWindowStoreArgs a) {
  const int64_t first = a.n > a.window ? a.n - a.window : 0;
  for (int64_t t = first + blockIdx.x; t < a.n; t += gridDim.x) {
    uint8_t* slot = a.ring + ((a.p0 + t) % a.window) * a.row_bytes;
    const uint8_t* row = a.rows + t * a.row_bytes;
    for (int64_t b = threadIdx.x; b < a.row_bytes; b += kThreads) slot[b] = row[b];
  }
}

}  // namespace

cudaError_t launch_kv_encode(const KvEncodeArgs& a, cudaStream_t stream) {
  const int64_t total = a.rows * kv_units(a.layout);
  if (total == 0) return cudaSuccess;
  kv_encode_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_kv_window_store(const KvWindowStoreArgs& a, cudaStream_t stream) {
  if (a.n == 0 || a.window == 0 || a.row_bytes == 0) return cudaSuccess;
  kv_window_store_kernel<<<grid_for(a.n < a.window ? a.n : a.window, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
