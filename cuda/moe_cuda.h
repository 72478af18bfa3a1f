// Launchers of the CUDA kernels of tfjs-moe-fused.
//
// Every pointer is a device pointer. Every launcher checks its scalar arguments on the host
// first (returning cudaErrorInvalidValue before any launch), then enqueues its work on `stream`
// and returns the first CUDA error of that (launch errors, not asynchronous faults). Nothing
// here allocates memory the caller must free; temporary workspace is stream-ordered
// (cudaMallocAsync / cudaFreeAsync on the same stream).
//
// Row grouping, as on the CPU: rows of x are grouped by expert in ascending order; expert e
// owns rows [offset(e), offset(e) + group_sizes[e]), offset(e) = Σ_{j<e} group_sizes[j].
// group_sizes lives on the device (the router produces it there) and is read by the kernels:
// they are memory-safe for any contents (negative sizes count as 0, rows past M are never
// touched), but rows that valid sizes would not cover are left unwritten.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda {

// How float32 operands meet the tensor cores; accumulation is always float32.
enum class Precision : int {
  kTf32 = 0,     // operands rounded to tf32 (10-bit mantissa), TensorFlow's GPU default
  kBf16 = 1,     // operands rounded to bf16 (7-bit mantissa), the fastest
  kHighest = 2,  // float32 accuracy from three tf32 products (a_hi·b_hi + a_hi·b_lo + a_lo·b_hi)
};

// transpose_weight = false: w is [E, N, K] and y[m, n] = Σ_k w[g(m), n, k] · x[m, k]   (forward)
// transpose_weight = true:  w is [E, K, N] and y[m, n] = Σ_k w[g(m), k, n] · x[m, k]   (dX = dY · W)
// x [M, K], y [M, N], row-major and contiguous.
cudaError_t grouped_gemm(const float* x, const float* w, const int32_t* group_sizes, float* y, int64_t M,
                         int64_t K, int64_t N, int64_t E, bool transpose_weight, Precision precision,
                         cudaStream_t stream);

// grouped_gemm with w in NF4 (bitsandbytes' 4-bit format, src/quant/nf4.ts): expert e's N·K values
// (w[e] [N, K], or [K, N] when transpose_weight) are ⌈N·K/2⌉ bytes at packed + e·⌈N·K/2⌉ (value f in
// byte f/2, high nibble for even f) and ⌈N·K/blocksize⌉ float32 absmax at absmax + e·⌈N·K/blocksize⌉;
// w(f) = code[nibble] · absmax[f / blocksize]. Decoded while the tiles are loaded: no float copy of w.
// blocksize a power of two in [32, 4096]; N·K even when E > 1.
cudaError_t grouped_gemm_nf4(const float* x, const uint8_t* packed, const float* absmax, const int32_t* group_sizes,
                             float* y, int64_t M, int64_t K, int64_t N, int64_t E, int blocksize, bool transpose_weight,
                             Precision precision, cudaStream_t stream);

// The same NF4 experts dequantised: out [E, n] float32, n = N·K values per expert.
cudaError_t nf4_dequantize(const uint8_t* packed, const float* absmax, int64_t E, int64_t n, int blocksize,
                           float* out, cudaStream_t stream);

// dw[e, n, k] = Σ_{m in e} dy[m, n] · x[m, k]; x [M, K], dy [M, N], dw [E, N, K]. Experts without
// rows get zeros. Deterministic: each element is reduced by one thread in a fixed order.
cudaError_t grouped_gemm_grad_weight(const float* x, const float* dy, const int32_t* group_sizes, float* dw,
                                     int64_t M, int64_t K, int64_t N, int64_t E, Precision precision,
                                     cudaStream_t stream);

// Softmax top-k router: p = softmax(logits[t, :]) in float32 over E experts (E ≤ 1024);
// expert_ids[t, :] = the k largest p, best first (ties: lower id first); weights[t, s] = p of
// that expert, divided by the sum of the k when normalize. logits [T, E]; weights, expert_ids [T, k].
cudaError_t route_top_k(const float* logits, int64_t T, int64_t E, int k, bool normalize, float* weights,
                        int32_t* expert_ids, cudaStream_t stream);

// Stable sort of the R = T·k routed rows r = t·k + s by expert_ids[r] (values in [0, E); others
// are sorted last and counted nowhere): group_sizes [E]; sort_index [R] (sorted row j is row
// sort_index[j]); inverse_sort_index [R] (row r sits at sorted row inverse_sort_index[r]);
// token_index [R] (= sort_index[j] / k).
cudaError_t sort_by_expert(const int32_t* expert_ids, int64_t R, int64_t E, int k, int32_t* group_sizes,
                           int32_t* sort_index, int32_t* inverse_sort_index, int32_t* token_index,
                           cudaStream_t stream);

// out[j, :] = x[index[j], :] for x [rows, H], index [R] (indices outside [0, rows) give zeros).
cudaError_t gather_rows(const float* x, int64_t rows, int64_t H, const int32_t* index, int64_t R, float* out,
                        cudaStream_t stream);

// out[t, :] = Σ_{s<k} weights[t, s] · y[inverse_sort_index[t·k + s], :] for y [T·k, H] in expert
// order, weights [T, k], out [T, H].
cudaError_t combine_rows(const float* y, int64_t H, const int32_t* inverse_sort_index, const float* weights,
                         int64_t T, int k, float* out, cudaStream_t stream);

// Keeps `stream` busy for `microseconds` (at most 10 s) without touching memory, so that work
// queued after it starts without the host's launch latency (benchmarks time the GPU alone).
cudaError_t busy_wait(int64_t microseconds, cudaStream_t stream);

// h[i] = silu(gate[i]) · up[i] = gate[i] / (1 + exp(-gate[i])) · up[i], for i < n.
cudaError_t silu_mul(const float* gate, const float* up, int64_t n, float* h, cudaStream_t stream);

}  // namespace moe::cuda
