/** What the benchmarks share: random inputs, uniform routing and median host timings. */

/** n values uniform in [lo, hi). */
export function randomFloats(n: number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) a[i] = lo + Math.random() * (hi - lo);
  return a;
}

/** Rows per expert when each of M rows picks one of E experts uniformly. */
export function uniformGroupSizes(M: number, E: number): Int32Array {
  const g = new Int32Array(E);
  for (let m = 0; m < M; ++m) g[Math.floor(Math.random() * E)]++;
  return g;
}

/** Median seconds of `runs` calls after a warm-up; a call's result with dispose() (a tensor) is disposed. */
export function medianSeconds(f: () => {dispose(): void} | void, runs: number): number {
  f()?.dispose();
  const times: number[] = [];
  for (let r = 0; r < runs; ++r) {
    const t0 = process.hrtime.bigint();
    const y = f();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
    y?.dispose();
  }
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)];
}
