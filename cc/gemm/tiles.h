// Register-tile GEMM micro-kernels, written once over a vector type V (vec_*.h) and compiled
// once per instruction set (kernels_*.cc). Every function is a template on V, so each
// instruction set gets its own symbols and nothing compiled for AVX-512 can leak into the
// AVX2 or portable paths.
#pragma once

#include <array>
#include <cstdint>
#include <utility>

#include "kernels.h"

namespace moe {

// Inner-product tile, for C = A · Bᵀ with both operands contiguous along the reduction:
//   C[i][j] = (accumulate ? C[i][j] : 0) + Σ_{k<K} A(i, k) · B[j·ldb + k]
// for i < mr ≤ V::kDotRows and j < nr ≤ V::kDotCols. A comes packed by pack_dot_rows: one
// sequential stream instead of kDotRows strided ones. Columns past nr alias column 0; their
// sums are computed and dropped, which keeps one fully unrolled body for every edge.
template <class V>
void dot_tile(int mr, int nr, int64_t K, const float* A, const float* B, int64_t ldb, float* C,
              int64_t ldc, bool accumulate) {
  constexpr int R = V::kDotRows, S = V::kDotCols, W = V::W;
  static_assert(R * S % 4 == 0, "reduce4 folds four accumulators at a time");
  using T = typename V::T;
  const float* b[S];
  for (int j = 0; j < S; ++j) b[j] = B + (j < nr ? j : 0) * ldb;
  T acc[R * S];
  for (int i = 0; i < R * S; ++i) acc[i] = V::zero();
  auto step = [&](const T* bv) {
    for (int i = 0; i < R; ++i) {
      T av = V::in_register(V::load(A + i * W));
      for (int j = 0; j < S; ++j) acc[i * S + j] = V::fma(av, bv[j], acc[i * S + j]);
    }
    A += R * W;
  };
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    T bv[S];
    for (int j = 0; j < S; ++j) bv[j] = V::load(b[j] + k);
    step(bv);
  }
  if (k < K) {  // K tail: B lanes past K load as 0 (the packed A is zero there too)
    const typename V::Mask m = V::mask(static_cast<int>(K - k));
    T bv[S];
    for (int j = 0; j < S; ++j) bv[j] = V::load(b[j] + k, m);
    step(bv);
  }
  float sum[R * S];
  for (int i = 0; i < R * S; i += 4) V::reduce4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3], sum + i);
  for (int i = 0; i < mr; ++i) {
    float* c = C + i * ldc;
    for (int j = 0; j < nr; ++j) c[j] = accumulate ? c[j] + sum[i * S + j] : sum[i * S + j];
  }
}

// Packs mr ≤ V::kDotRows rows of A (row stride lda, K columns) for dot_tile: slices of V::W
// columns, row after row, [k / W][i][k % W], zero beyond mr rows and K columns.
template <class V>
void pack_dot_rows(int mr, int64_t K, const float* A, int64_t lda, float* packed) {
  constexpr int R = V::kDotRows, W = V::W;
  for (int64_t k = 0; k < K; k += W, packed += R * W) {
    const typename V::Mask m = V::mask(K - k < W ? static_cast<int>(K - k) : W);
    for (int i = 0; i < R; ++i)
      V::store(packed + i * W, i >= mr ? V::zero() : K - k < W ? V::load(A + i * lda + k, m)
                                                               : V::load(A + i * lda + k));
  }
}

// Outer-product tile of MR rows and NV vectors of columns, for C = A · B with A stored
// "reduction-major" and B contiguous along its columns:
//   C[i][j] = (accumulate ? C[i][j] : 0) + Σ_{p<P} A[p·lda + i] · B[p·ldb + j]
// Columns past `cols` (only when MASKED, then NV == 1) are neither read nor written.
template <class V, int MR, int NV, bool MASKED>
inline void outer_tile(int64_t P, const float* A, int64_t lda, const float* B, int64_t ldb,
                       float* C, int64_t ldc, bool accumulate, int cols) {
  static_assert(!MASKED || NV == 1, "only a single vector is masked");
  using T = typename V::T;
  constexpr int W = V::W;
  const typename V::Mask m = V::mask(MASKED ? cols : W);
  T acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  for (int64_t p = 0; p < P; ++p) {
    const float* bp = B + p * ldb;
    const float* ap = A + p * lda;
    T bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = MASKED ? V::load(bp, m) : V::load(bp + v * W);
    for (int i = 0; i < MR; ++i) {
      T av = V::bcast(ap + i);
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(av, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    for (int v = 0; v < NV; ++v) {
      if (MASKED) {
        V::store(c, m, accumulate ? V::add(V::load(c, m), acc[i][v]) : acc[i][v]);
      } else {
        V::store(c + v * W, accumulate ? V::add(V::load(c + v * W), acc[i][v]) : acc[i][v]);
      }
    }
  }
}

// MR rows of C across `nc` columns: two-vector tiles, then one, then a masked tail.
template <class V, int MR>
void outer_rows(int64_t nc, int64_t P, const float* A, int64_t lda, const float* B, int64_t ldb,
                float* C, int64_t ldc, bool accumulate) {
  constexpr int W = V::W;
  int64_t j = 0;
  for (; j + 2 * W <= nc; j += 2 * W)
    outer_tile<V, MR, 2, false>(P, A, lda, B + j, ldb, C + j, ldc, accumulate, W);
  for (; j + W <= nc; j += W)
    outer_tile<V, MR, 1, false>(P, A, lda, B + j, ldb, C + j, ldc, accumulate, W);
  if (j < nc)
    outer_tile<V, MR, 1, true>(P, A, lda, B + j, ldb, C + j, ldc, accumulate,
                               static_cast<int>(nc - j));
}

template <class V, std::size_t... I>
constexpr std::array<OuterRowsFn, sizeof...(I)> outer_table(std::index_sequence<I...>) {
  return {&outer_rows<V, static_cast<int>(I) + 1>...};
}

// Picks the outer_rows instance for mr rows (1 ≤ mr ≤ V::kOuterRows).
template <class V>
void outer_block(int mr, int64_t nc, int64_t P, const float* A, int64_t lda, const float* B,
                 int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  static constexpr auto table = outer_table<V>(std::make_index_sequence<V::kOuterRows>{});
  table[mr - 1](nc, P, A, lda, B, ldb, C, ldc, accumulate);
}

template <class V>
GemmKernels make_kernels(const char* name) {
  return GemmKernels{name,           V::kDotRows,     V::kDotCols, V::W, V::kOuterRows,
                     &dot_tile<V>,   &pack_dot_rows<V>, &outer_block<V>};
}

}  // namespace moe
