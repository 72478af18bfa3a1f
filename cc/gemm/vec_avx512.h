// AVX-512 vector of 16 floats, for the tile templates in tiles.h.
#pragma once

#include <immintrin.h>

namespace moe {

struct VecAvx512 {
  using T = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;
  static constexpr int kDotRows = 8, kDotCols = 2;  // 16 accumulators + 10 operand registers of 32
  static constexpr int kOuterRows = 12;             // 12 x 2 accumulators + 2 B vectors of 32

  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  // Keeps a loaded operand in a register: left alone, GCC folds the load into every FMA that
  // uses it, which doubles the loads of the inner-product tile and makes it load-bound.
  static T in_register(T v) {
    asm("" : "+v"(v));
    return v;
  }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static Mask mask(int n) { return static_cast<Mask>((1u << n) - 1u); }
  static T load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, Mask m, T v) { _mm512_mask_storeu_ps(p, m, v); }

  // out[0..3] = horizontal sums of a, b, c, d.
  static void reduce4(T a, T b, T c, T d, float* out) {
    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
    T ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    T cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // Per lane: [a, b, c, d] partial sums.
    __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    T s = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                        _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
};

}  // namespace moe
