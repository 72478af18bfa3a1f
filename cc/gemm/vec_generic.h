// Portable "vector" of 8 floats in plain C++, for the tile templates in tiles.h. The compiler
// vectorises the loops with whatever the baseline target offers (SSE2 on x86-64, NEON on arm64).
#pragma once

namespace moe {

struct VecGeneric {
  static constexpr int W = 8;
  struct T {
    float v[W];
  };
  using Mask = int;  // number of active lanes, counted from lane 0
  static constexpr int kOuterRows = 4;

  static T zero() { return T{}; }
  static T load(const float* p) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(float* p, T a) {
    for (int i = 0; i < W; ++i) p[i] = a.v[i];
  }
  static T bcast(const float* p) {
    T r;
    for (int i = 0; i < W; ++i) r.v[i] = *p;
    return r;
  }
  static T fma(T a, T b, T c) {
    for (int i = 0; i < W; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static T add(T a, T b) {
    for (int i = 0; i < W; ++i) a.v[i] += b.v[i];
    return a;
  }
  static Mask mask(int n) { return n; }
  static T load(const float* p, Mask m) {
    T r{};
    for (int i = 0; i < m; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(float* p, Mask m, T a) {
    for (int i = 0; i < m; ++i) p[i] = a.v[i];
  }
  static void transpose(T r[W]) {
    for (int i = 0; i < W; ++i)
      for (int j = i + 1; j < W; ++j) {
        float v = r[i].v[j];
        r[i].v[j] = r[j].v[i];
        r[j].v[i] = v;
      }
  }
};

}  // namespace moe
