// AVX2 + FMA vector of 8 floats, for the tile templates in tiles.h.
#pragma once

#include <immintrin.h>

namespace moe {

struct VecAvx2 {
  using T = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static constexpr int kDotRows = 6, kDotCols = 2;  // 12 accumulators + 3 operand registers of 16
  static constexpr int kOuterRows = 6;              // 6 x 2 accumulators + 2 B vectors of 16

  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  // Keeps a loaded operand in a register: left alone, GCC folds the load into every FMA that
  // uses it, which doubles the loads of the inner-product tile and makes it load-bound.
  static T in_register(T v) {
    asm("" : "+v"(v));
    return v;
  }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static Mask mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static T load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, Mask m, T v) { _mm256_maskstore_ps(p, m, v); }

  // out[0..3] = horizontal sums of a, b, c, d.
  static void reduce4(T a, T b, T c, T d, float* out) {
    T ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    T cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    __m256d abd = _mm256_castps_pd(ab), cdd = _mm256_castps_pd(cd);
    T s = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(abd, cdd)),
                        _mm256_castpd_ps(_mm256_unpackhi_pd(abd, cdd)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
  }
};

}  // namespace moe
