// Grouped GEMM over experts whose weights are stored in NF4 (bitsandbytes' 4-bit NormalFloat,
// src/quant/nf4.ts), decoded panel by panel into the packed panels of the float GEMM, so no
// float copy of a whole weight is ever made.
//
// W[e] is [N, K] (nn.Linear's layout). Its value i = n·K + k has the 4-bit code in byte
// e·S + i/2 of `packed` (the high nibble for even i; S = ceil(N·K/2) bytes per expert) and the
// scale absmax[e·B + i/blocksize] (B = ceil(N·K/blocksize) blocks per expert):
//   W[e][n, k] = NF4[code] · absmax[e·B + i/blocksize]       (float32, as bitsandbytes dequantises)
#pragma once

#include <cstdint>
#include <string>

namespace moe {

// Returns "" when `packed_words` little-endian int32 words and `absmax_len` floats hold E NF4
// experts of [N, K] in blocks of `blocksize` (a power of two in [32, 4096], as bitsandbytes
// allows); otherwise a message naming what is wrong. Callers check this before any kernel runs.
std::string check_nf4_weight(int64_t packed_words, int64_t absmax_len, int64_t E, int64_t N, int64_t K,
                             int64_t blocksize);

// transpose_weight = false: x [M, K], y [M, N], y[m, n] = Σ_k W[g(m)][n, k] · x[m, k]   (forward)
// transpose_weight = true:  x [M, N], y [M, K], y[m, k] = Σ_n W[g(m)][n, k] · x[m, n]   (dX = dY · W)
// Every element of y is written.
void moe_nf4_linear(const float* x, const uint8_t* packed, const float* absmax, const int32_t* group_sizes,
                    float* y, int64_t M, int64_t N, int64_t K, int64_t E, int64_t blocksize, bool transpose_weight);

}  // namespace moe
