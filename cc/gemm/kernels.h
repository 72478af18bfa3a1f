// The micro-kernels of one instruction set, chosen once at load time (see kernels.cc).
#pragma once

#include <cstdint>

namespace moe {

using OuterRowsFn = void (*)(int64_t nc, int64_t P, const float* A, int64_t lda, const float* B,
                             int64_t ldb, float* C, int64_t ldc, bool accumulate);

struct GemmKernels {
  const char* name;
  int dot_rows, dot_cols;  // largest tile of `dot`
  int width;               // floats per vector
  int outer_rows;          // largest row count of `outer`
  // C[i][j] (+)= Σ_{k<K} A(i, k) · B[j·ldb + k], for i < mr ≤ dot_rows, j < nr ≤ dot_cols,
  // with A packed by pack_dot (dot_rows × round_up(K, width) floats).
  void (*dot)(int mr, int nr, int64_t K, const float* A, const float* B, int64_t ldb, float* C,
              int64_t ldc, bool accumulate);
  void (*pack_dot)(int mr, int64_t K, const float* A, int64_t lda, float* packed);
  // C[i][j] (+)= Σ_{p<P} A[p·lda + i] · B[p·ldb + j], for i < mr ≤ outer_rows, j < nc.
  void (*outer)(int mr, int64_t nc, int64_t P, const float* A, int64_t lda, const float* B,
                int64_t ldb, float* C, int64_t ldc, bool accumulate);
};

const GemmKernels& kernels_avx512();
const GemmKernels& kernels_avx2();
const GemmKernels& kernels_generic();

// The kernels in use: the best the CPU supports, unless set_isa (moe_fused_linear.h) chose
// a lower one.
const GemmKernels& active_kernels();

}  // namespace moe
