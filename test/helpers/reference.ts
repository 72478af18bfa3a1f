/** Float64 references, random data and error measures for the tests. */

/** Uniform [-1, 1) float32 data. */
export function randomFloats(n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) a[i] = (Math.random() * 2 - 1) * scale;
  return a;
}

/** M rows spread over E experts at random, or by `weights` (relative frequencies). */
export function randomGroupSizes(M: number, E: number, weights?: number[]): Int32Array {
  const g = new Int32Array(E);
  const w = weights ?? Array(E).fill(1);
  const total = w.reduce((a, b) => a + b, 0);
  for (let m = 0; m < M; ++m) {
    let u = Math.random() * total, e = 0;
    while (e < E - 1 && u >= w[e]) u -= w[e++];
    g[e]++;
  }
  return g;
}

/** A grouped-GEMM test shape: M rows of K inputs into N outputs, grouped by `groups()`. */
export interface GroupedCase {
  name: string;
  M: number;
  K: number;
  N: number;
  groups: () => Int32Array;
}

/** Group sizes of M rows spread at random over E experts, fresh on every call. */
export const spread = (M: number, E: number) => () => randomGroupSizes(M, E);

/** y[m, n] = Σ_k w[g(m), n, k] x[m, k] (or w[g(m), k, n] when transposed), in float64. */
export function refMoeFusedLinear(x: ArrayLike<number>, w: ArrayLike<number>, groupSizes: ArrayLike<number>,
                                  M: number, K: number, N: number, transposeWeight = false): Float64Array {
  const y = new Float64Array(M * N);
  let m = 0;
  for (let e = 0; e < groupSizes.length; ++e) {
    for (let r = 0; r < groupSizes[e]; ++r, ++m) {
      for (let n = 0; n < N; ++n) {
        let s = 0;
        for (let k = 0; k < K; ++k) {
          s += x[m * K + k] * (transposeWeight ? w[(e * K + k) * N + n] : w[(e * N + n) * K + k]);
        }
        y[m * N + n] = s;
      }
    }
  }
  return y;
}

/** dw[e, n, k] = Σ_{m in e} dy[m, n] x[m, k], in float64. */
export function refGradWeight(x: ArrayLike<number>, dy: ArrayLike<number>, groupSizes: ArrayLike<number>,
                              K: number, N: number): Float64Array {
  const E = groupSizes.length;
  const dw = new Float64Array(E * N * K);
  let m0 = 0;
  for (let e = 0; e < E; ++e) {
    for (let m = m0; m < m0 + groupSizes[e]; ++m) {
      for (let n = 0; n < N; ++n) {
        for (let k = 0; k < K; ++k) dw[(e * N + n) * K + k] += dy[m * N + n] * x[m * K + k];
      }
    }
    m0 += groupSizes[e];
  }
  return dw;
}

/** ‖a − b‖_F / ‖b‖_F (0 when both are empty or zero). */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; ++i) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/**
 * Central finite differences of f (float64) at `at` along `count` random coordinates, compared
 * with the analytic gradient there: returns the largest relative difference.
 */
export function checkGradient(f: (v: Float64Array) => number, at: ArrayLike<number>, analytic: ArrayLike<number>,
                              count = 12, h = 1e-3): number {
  const v = Float64Array.from(at);
  let worst = 0;
  for (let c = 0; c < count; ++c) {
    const i = Math.floor(Math.random() * v.length);
    const saved = v[i];
    v[i] = saved + h;
    const up = f(v);
    v[i] = saved - h;
    const down = f(v);
    v[i] = saved;
    const numeric = (up - down) / (2 * h);
    worst = Math.max(worst, Math.abs(numeric - analytic[i]) / Math.max(1, Math.abs(numeric)));
  }
  return worst;
}
