// AVX2 + FMA vector of 8 floats, for the tile templates in tiles.h.
#pragma once

#include <immintrin.h>

namespace moe {

struct VecAvx2 {
  using T = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static constexpr int kOuterRows = 6;              // 6 x 2 accumulators + 2 B vectors of 16

  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }

  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static Mask mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static T load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, Mask m, T v) { _mm256_maskstore_ps(p, m, v); }

  // Transposes the 8 × 8 block r[i][j] (r[i] = row i) in place.
  static void transpose(T r[W]) {
    T t[W];
    for (int i = 0; i < W; i += 2) {  // per lane: [r_i[4L], r_i+1[4L], r_i[4L+1], r_i+1[4L+1]], ...
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 2; ++g) {  // v[g][c]: lane L holds column 4L + c of rows 4g .. 4g+3
      const __m256d a = _mm256_castps_pd(t[4 * g]), b = _mm256_castps_pd(t[4 * g + 1]);
      const __m256d c = _mm256_castps_pd(t[4 * g + 2]), d = _mm256_castps_pd(t[4 * g + 3]);
      r[4 * g + 0] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
      r[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
      r[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
      r[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; ++c) {  // join the two row groups: lane 0 gives column c, lane 1 column 4 + c
      t[c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x20);
      t[4 + c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x31);
    }
    for (int i = 0; i < W; ++i) r[i] = t[i];
  }


};

}  // namespace moe
