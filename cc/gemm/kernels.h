// The micro-kernels of one instruction set, chosen once at load time (see kernels.cc).
#pragma once

#include <cstdint>

namespace moe {

using OuterRowsFn = void (*)(int64_t nc, int64_t P, const float* A, int64_t lda, const float* B,
                             int64_t ldb, float* C, int64_t ldc, bool accumulate);

// Outer-product tiles read B in column chunks of kChunk floats ([chunk][p][kChunk]).
constexpr int64_t kChunk = 32;

struct GemmKernels {
  const char* name;
  int outer_rows;  // largest row count of `outer`
  // C[i][j] (+)= Σ_{p<P} A[p·lda + i] · B[p·ldb + j], for i < mr ≤ outer_rows, j < nc.
  void (*outer)(int mr, int64_t nc, int64_t P, const float* A, int64_t lda, const float* B,
                int64_t ldb, float* C, int64_t ldc, bool accumulate);
  // Packs A(i, p) = src[i·rs + p·cs], i < mr ≤ outer_rows, p < depth, as dst[p·mr + i].
  void (*pack_rows)(int mr, int64_t depth, const float* src, int64_t rs, int64_t cs, float* dst);
  // Packs B(p, j) = src[j·lds + p], p < depth, j < cols, into kChunk-column chunks.
  void (*pack_transposed)(int64_t depth, int64_t cols, const float* src, int64_t lds, float* dst);
};

const GemmKernels& kernels_avx512();
const GemmKernels& kernels_avx2();
const GemmKernels& kernels_generic();

// The kernels in use: the best the CPU supports, unless set_isa (moe_fused_linear.h) chose
// a lower one.
const GemmKernels& active_kernels();

}  // namespace moe
