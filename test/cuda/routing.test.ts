/** CUDA routing kernels against the CPU implementation of the same ops. */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';

import {moeRoute, moeSortByExpert} from '../../src';
import {randomFloats, relativeError} from '../helpers/reference';
import {describeGpu, floatsOf, gpu, intsOf, poisoned, toDevice} from './device';

/** Logits with no near-ties (a shuffled ladder per row), so that float rounding cannot reorder them. */
function separatedLogits(T: number, E: number): Float32Array {
  const out = new Float32Array(T * E);
  for (let t = 0; t < T; ++t) {
    const rungs = Array.from({length: E}, (_, e) => e).sort(() => Math.random() - 0.5);
    rungs.forEach((r, e) => out[t * E + e] = (r - E / 2) * 0.05 + Math.random() * 0.01);
  }
  return out;
}

describeGpu('CUDA routing', () => {
  beforeAll(() => tf.setBackend('cpu'));

  test.each([[1000, 128, 8, true], [333, 11, 8, false], [64, 256, 1, true], [50, 16, 16, true]])(
      'top-k router and sort by expert match the cpu backend: T=%i E=%i k=%i norm=%s', async (T, E, k, norm) => {
        const logits = separatedLogits(T, E);
        const weights = poisoned(T * k), ids = toDevice(new Int32Array(T * k).fill(-7));
        gpu.routeTopK(toDevice(logits), T, E, k, norm, weights, ids);
        const ref = moeRoute(tf.tensor2d(logits, [T, E]), {topK: k, normTopKProb: norm});
        expect(Array.from(intsOf(ids, T * k))).toEqual(Array.from(await ref.expertIds.data()));
        expect(relativeError(floatsOf(weights, T * k), await ref.weights.data())).toBeLessThan(1e-6);

        const R = T * k;
        const out = [toDevice(new Int32Array(E).fill(-1)), ...[0, 1, 2].map(() => toDevice(new Int32Array(R).fill(-1)))];
        gpu.sortByExpert(ids, R, E, k, out[0], out[1], out[2], out[3]);
        expect(Array.from(intsOf(out[0], E))).toEqual(Array.from(await ref.groupSizes.data()));
        expect(Array.from(intsOf(out[1], R))).toEqual(Array.from(await ref.sortIndex.data()));
        expect(Array.from(intsOf(out[2], R))).toEqual(Array.from(await ref.inverseSortIndex.data()));
        expect(Array.from(intsOf(out[3], R))).toEqual(Array.from(await ref.tokenIndex.data()));
      });

  test('sort by expert: ids outside [0, E) are never counted or read past', async () => {
    const ids = Int32Array.of(2, -1, 0, 9, 2, 1);
    const sizes = toDevice(new Int32Array(3)), sort = toDevice(new Int32Array(6)), inv = toDevice(new Int32Array(6));
    const token = toDevice(new Int32Array(6));
    gpu.sortByExpert(toDevice(ids), 6, 3, 1, sizes, sort, inv, token);
    expect(Array.from(intsOf(sizes, 3))).toEqual([1, 1, 2]);
    expect(Array.from(intsOf(sort, 4))).toEqual(Array.from(await moeSortByExpert(Int32Array.of(2, 0, 2, 1), 3).sortIndex.data()).map(
        j => [0, 2, 4, 5][j]));
  });

  test('gather, combine and SiLU·up', () => {
    const T = 300, k = 4, H = 70, rows = T * k;  // H not a multiple of 4
    const x = randomFloats(T * H);
    const index = Int32Array.from({length: rows}, () => Math.floor(Math.random() * T));
    index[5] = T + 3;  // out of range: a zero row
    const gathered = poisoned(rows * H);
    gpu.gatherRows(toDevice(x), T, H, toDevice(index), rows, gathered);
    const g = floatsOf(gathered, rows * H);
    for (let j = 0; j < rows; ++j) {
      for (let h = 0; h < H; ++h) expect(g[j * H + h]).toBe(index[j] < T ? x[index[j] * H + h] : 0);
    }

    const y = randomFloats(rows * H), w = randomFloats(T * k);
    const inverse = Int32Array.from({length: rows}, (_, r) => r).sort(() => Math.random() - 0.5);
    const combined = poisoned(T * H);
    gpu.combineRows(toDevice(y), H, toDevice(inverse), toDevice(w), T, k, combined);
    const ref = new Float64Array(T * H);
    for (let t = 0; t < T; ++t) {
      for (let s = 0; s < k; ++s) {
        for (let h = 0; h < H; ++h) ref[t * H + h] += w[t * k + s] * y[inverse[t * k + s] * H + h];
      }
    }
    expect(relativeError(floatsOf(combined, T * H), ref)).toBeLessThan(1e-6);

    const n = 12345, gate = randomFloats(n, 6), up = randomFloats(n);
    const h = poisoned(n);
    gpu.siluMul(toDevice(gate), toDevice(up), n, h);
    expect(relativeError(floatsOf(h, n), Float64Array.from(gate, (v, i) => v / (1 + Math.exp(-v)) * up[i]))).toBeLessThan(1e-6);
  });

  test('a CUDA error becomes a JS exception with the CUDA message', () => {
    const b = gpu.alloc(1024);
    expect(() => gpu.routeTopK(b, 4, 8, 9, true, b, b)).toThrow(/CUDA error in routeTopK: invalid argument/);
  });
});
