// NF4 experts to float32 (moe_cuda.h): out[e, f] = code[nibble(f)] · absmax[e, f / blocksize], the
// value bitsandbytes' dequantize_4bit gives. The dequantise-then-GEMM baseline of the fused NF4
// GEMM, and what a dense use of the weight needs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "moe_cuda.h"
#include "nf4_operand.cuh"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;

// Thread b of expert e writes values 2b and 2b + 1 of the expert from byte b (high nibble first).
__global__ void __launch_bounds__(kThreads) nf4_dequantize_kernel(const uint8_t* packed, const float* absmax,
                                                                  int64_t E, int64_t n, int log2_block, float* out) {
  const int64_t bytes = (n + 1) / 2, blocks = (n + (int64_t{1} << log2_block) - 1) >> log2_block;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < E * bytes; i += int64_t{gridDim.x} * kThreads) {
    const int64_t e = i / bytes, b = i - e * bytes, f = 2 * b;
    const uint8_t byte = packed[i];
    const float* scale = absmax + e * blocks;
    out[e * n + f] = gemm::kNf4Code[byte >> 4] * scale[f >> log2_block];
    if (f + 1 < n) out[e * n + f + 1] = gemm::kNf4Code[byte & 15] * scale[(f + 1) >> log2_block];
  }
}

}  // namespace

cudaError_t nf4_dequantize(const uint8_t* packed, const float* absmax, int64_t E, int64_t n, int blocksize, float* out,
                           cudaStream_t stream) {
  if (E < 0 || n < 0 || blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0 ||
      (E > 1 && n % 2 != 0) || (E > 0 && n > 0 && (!packed || !absmax || !out)))
    return cudaErrorInvalidValue;
  if (E == 0 || n == 0) return cudaSuccess;
  const int64_t work = E * ((n + 1) / 2);
  const int64_t grid = std::min<int64_t>((work + kThreads - 1) / kThreads, 65536);
  nf4_dequantize_kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(packed, absmax, E, n,
                                                                               __builtin_ctz(static_cast<unsigned>(blocksize)), out);
  return cudaGetLastError();
}

}  // namespace moe::cuda
