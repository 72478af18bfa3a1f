// Keeps a stream busy for a while (moe_cuda.h): one thread spins on the GPU's global timer
// (nanoseconds). Queued before a timed launch, it hides the host's launch latency, so that the
// events around the launch time the GPU's work alone, as nvbench's blocking kernel does.
#include <cuda_runtime.h>

#include <cstdint>

#include "moe_cuda.h"

namespace moe::cuda {
namespace {

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void busy_wait_kernel(uint64_t ns) {
  for (const uint64_t start = global_ns(); global_ns() - start < ns;) __nanosleep(1000);
}

}  // namespace

cudaError_t busy_wait(int64_t microseconds, cudaStream_t stream) {
  if (microseconds < 0 || microseconds > 10'000'000) return cudaErrorInvalidValue;
  busy_wait_kernel<<<1, 1, 0, stream>>>(static_cast<uint64_t>(microseconds) * 1000);
  return cudaGetLastError();
}

}  // namespace moe::cuda
