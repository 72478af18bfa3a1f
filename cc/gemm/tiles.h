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

// Packs B(p, j) = src[j·lds + p] (rows of src are columns of B, e.g. w_e for y = x · w_eᵀ)
// into column chunks for outer_block: dst[(j / kChunk)·depth·kChunk + p·kChunk + j % kChunk],
// W × W blocks at a time through an in-register transpose.
template <class V>
void pack_transposed(int64_t depth, int64_t cols, const float* src, int64_t lds, float* dst) {
  constexpr int W = V::W;
  static_assert(kChunk % W == 0, "a chunk holds whole vectors");
  auto out = [&](int64_t p, int64_t j) { return dst + (j / kChunk) * depth * kChunk + p * kChunk + j % kChunk; };
  for (int64_t j0 = 0; j0 < cols; j0 += W) {
    for (int64_t p0 = 0; p0 < depth; p0 += W) {
      if (j0 + W <= cols && p0 + W <= depth) {
        typename V::T block[W];
        for (int r = 0; r < W; ++r) block[r] = V::load(src + (j0 + r) * lds + p0);
        V::transpose(block);
        for (int r = 0; r < W; ++r) V::store(out(p0 + r, j0), block[r]);
      } else {  // ragged edge
        for (int64_t j = j0; j < cols && j < j0 + W; ++j)
          for (int64_t p = p0; p < depth && p < p0 + W; ++p) *out(p, j) = src[j * lds + p];
      }
    }
  }
}

// Packs mr ≤ V::kOuterRows rows of A, A(i, p) = src[i·rs + p·cs], reduction-major for
// outer_block: dst[p·mr + i]. Rows contiguous along p (cs = 1) go through W × W transposes;
// columns contiguous along i (rs = 1) are one masked copy per p.
template <class V>
void pack_rows(int mr, int64_t depth, const float* src, int64_t rs, int64_t cs, float* dst) {
  constexpr int W = V::W;
  static_assert(V::kOuterRows <= W, "a row group fits in one vector");
  const typename V::Mask rows = V::mask(mr);
  if (cs == 1) {
    for (int64_t p0 = 0; p0 < depth; p0 += W) {
      const int w = depth - p0 < W ? static_cast<int>(depth - p0) : W;
      const typename V::Mask cols = V::mask(w);
      typename V::T block[W];
      for (int i = 0; i < W; ++i) block[i] = i < mr ? V::load(src + i * rs + p0, cols) : V::zero();
      V::transpose(block);
      for (int p = 0; p < w; ++p) V::store(dst + (p0 + p) * mr, rows, block[p]);
    }
  } else if (rs == 1) {
    for (int64_t p = 0; p < depth; ++p) V::store(dst + p * mr, rows, V::load(src + p * cs, rows));
  } else {
    for (int64_t p = 0; p < depth; ++p)
      for (int i = 0; i < mr; ++i) dst[p * mr + i] = src[i * rs + p * cs];
  }
}

template <class V>
GemmKernels make_kernels(const char* name) {
  return GemmKernels{name, V::kOuterRows, &outer_block<V>, &pack_rows<V>, &pack_transposed<V>};
}

}  // namespace moe
