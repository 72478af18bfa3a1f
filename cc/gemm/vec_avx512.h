// AVX-512 vector of 16 floats, for the tile templates in tiles.h.
#pragma once

#include <immintrin.h>

namespace moe {

struct VecAvx512 {
  using T = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;
  static constexpr int kOuterRows = 12;             // 12 x 2 accumulators + 2 B vectors of 32

  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }

  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static Mask mask(int n) { return static_cast<Mask>((1u << n) - 1u); }
  static T load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, Mask m, T v) { _mm512_mask_storeu_ps(p, m, v); }

  // Transposes the 16 × 16 block r[i][j] (r[i] = row i) in place: four rounds of shuffles, each
  // pairing elements from farther apart (1, 2, then 4 and 8 rows as 128-bit lanes).
  static void transpose(T r[W]) {
    T t[W];
    for (int i = 0; i < W; i += 2) {  // per lane: [r_i[4L], r_i+1[4L], r_i[4L+1], r_i+1[4L+1]], ...
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 4; ++g) {  // v[g][c]: lane L holds column 4L + c of rows 4g .. 4g+3
      const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
      const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
      r[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
      r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
      r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
      r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; ++c) {  // 4 × 4 transpose of 128-bit lanes across the groups g
      const T a0 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
      const T a1 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
      const T a2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
      const T a3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
      t[c] = _mm512_shuffle_f32x4(a0, a2, _MM_SHUFFLE(2, 0, 2, 0));       // column c
      t[4 + c] = _mm512_shuffle_f32x4(a0, a2, _MM_SHUFFLE(3, 1, 3, 1));   // column 4 + c
      t[8 + c] = _mm512_shuffle_f32x4(a1, a3, _MM_SHUFFLE(2, 0, 2, 0));   // column 8 + c
      t[12 + c] = _mm512_shuffle_f32x4(a1, a3, _MM_SHUFFLE(3, 1, 3, 1));  // column 12 + c
    }
    for (int i = 0; i < W; ++i) r[i] = t[i];
  }


};

}  // namespace moe
