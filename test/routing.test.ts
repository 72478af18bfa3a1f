/** The router (softmax, top-k, renormalisation, stable sort by expert) and the row helpers. */
import * as tf from '@tensorflow/tfjs-core';

import {BACKENDS, useBackend} from './helpers/backends';
import {checkGradient, randomFloats} from './helpers/reference';
import {moeCombineRows, moeGatherRows, moeRoute, moeSortByExpert} from '../src';

/** Float64 router: for each token the top-k experts (ties: lower id first) and their weights. */
function refRoute(logits: ArrayLike<number>, T: number, E: number, k: number, norm: boolean) {
  const ids: number[][] = [], weights: number[][] = [];
  for (let t = 0; t < T; ++t) {
    const row = Array.from({length: E}, (_, e) => logits[t * E + e]);
    const max = Math.max(...row);
    const exp = row.map(v => Math.exp(v - max));
    const z = exp.reduce((a, b) => a + b, 0);
    const p = exp.map(v => v / z);
    const order = p.map((v, e) => [v, e]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, k);
    const s = order.reduce((a, [v]) => a + v, 0);
    ids.push(order.map(([, e]) => e));
    weights.push(order.map(([v]) => (norm ? v / s : v)));
  }
  return {ids, weights};
}

/**
 * Router logits whose values in a row are at least `gap` apart (a shuffled ladder plus noise),
 * so that float32 and float64 rank them alike and small finite-difference steps keep the top-k.
 */
function separatedLogits(T: number, E: number, gap: number): Float32Array {
  const out = new Float32Array(T * E);
  for (let t = 0; t < T; ++t) {
    const rungs = Array.from({length: E}, (_, e) => e).sort(() => Math.random() - 0.5);
    rungs.forEach((r, e) => out[t * E + e] = (r - E / 2) * gap + Math.random() * gap / 4);
  }
  return out;
}

describe.each(BACKENDS)('routing on %s', backend => {
  beforeAll(() => useBackend(backend));

  test.each([true, false])('moeRoute matches the reference, normTopKProb = %s', async norm => {
    const T = 37, E = 11, k = 8;
    const logits = separatedLogits(T, E, 0.5);
    const r = moeRoute(tf.tensor2d(logits, [T, E]), {topK: k, normTopKProb: norm});
    const ref = refRoute(logits, T, E, k, norm);
    expect(await r.expertIds.array()).toEqual(ref.ids);
    const w = await r.weights.array();
    w.forEach((row, t) => row.forEach((v, s) => expect(v).toBeCloseTo(ref.weights[t][s], 6)));

    // Stable grouping by expert: rows r = t·k + s in ascending (expert, r) order.
    const flatIds = ref.ids.flat();
    const expected = flatIds.map((e, row) => [e, row]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map(([, row]) => row);
    const sortIndex = Array.from(await r.sortIndex.data());
    expect(sortIndex).toEqual(expected);
    const inverse = await r.inverseSortIndex.data();
    sortIndex.forEach((row, j) => expect(inverse[row]).toBe(j));
    expect(Array.from(await r.tokenIndex.data())).toEqual(expected.map(row => Math.floor(row / k)));
    const sizes = Array.from(await r.groupSizes.data());
    expect(sizes).toEqual(Array.from({length: E}, (_, e) => flatIds.filter(v => v === e).length));
  });

  test.each([true, false])('the routing weights train: gradient vs finite differences, normTopKProb = %s', async norm => {
    const T = 9, E = 6, k = 3;
    const logits = separatedLogits(T, E, 0.4), r = randomFloats(T * k);
    const loss = (l: tf.Tensor) => tf.sum(tf.mul(moeRoute(l, {topK: k, normTopKProb: norm}).weights, tf.tensor2d(r, [T, k])));
    const grad = await tf.grad(loss)(tf.tensor2d(logits, [T, E])).data();
    const refLoss = (l: Float64Array) =>
        refRoute(l, T, E, k, norm).weights.flat().reduce((a, v, i) => a + v * r[i], 0);
    expect(checkGradient(refLoss, logits, grad, 20, 1e-4)).toBeLessThan(1e-3);
  });

  test('gather into expert order and combine back is a weighted sum over each token\'s experts', async () => {
    const T = 13, E = 5, k = 2, H = 7;
    const x = randomFloats(T * H);
    const routing = moeRoute(tf.tensor2d(randomFloats(T * E), [T, E]), {topK: k});
    const sorted = moeGatherRows(tf.tensor2d(x, [T, H]), routing.tokenIndex);
    expect(sorted.shape).toEqual([T * k, H]);
    // An identity "expert": combining gives Σ_s w[t, s] · x[t] = x[t] when weights sum to 1.
    const back = await moeCombineRows(sorted, routing).data();
    back.forEach((v, i) => expect(v).toBeCloseTo(x[i], 5));
  });

  test('gradient of gather + combine flows to the tokens (scatter-add) and to the weights', async () => {
    const T = 8, E = 4, k = 2, H = 5;
    const x = randomFloats(T * H), logits = randomFloats(T * E), r = randomFloats(T * H);
    const f = (xt: tf.Tensor, lt: tf.Tensor) => {
      const routing = moeRoute(lt, {topK: k});
      const expertOut = tf.mul(moeGatherRows(xt, routing.tokenIndex), 2);  // a stand-in expert
      return tf.sum(tf.mul(moeCombineRows(expertOut, routing), tf.tensor2d(r, [T, H])));
    };
    const [dx, dl] = tf.grads(f)([tf.tensor2d(x, [T, H]), tf.tensor2d(logits, [T, E])]);
    // With normalised weights the output is 2·x, whatever the routing: dL/dx = 2r, dL/dlogits = 0.
    (await dx.data()).forEach((v, i) => expect(v).toBeCloseTo(2 * r[i], 5));
    (await dl.data()).forEach(v => expect(Math.abs(v)).toBeLessThan(1e-5));
  });

  test('moeSortByExpert is stable and handles ids given as [T]', async () => {
    const order = moeSortByExpert(tf.tensor1d([2, 0, 2, 1, 0, 2], 'int32'), 4);
    expect(Array.from(await order.sortIndex.data())).toEqual([1, 4, 3, 0, 2, 5]);
    expect(Array.from(await order.groupSizes.data())).toEqual([2, 1, 3, 0]);
    expect(Array.from(await order.tokenIndex.data())).toEqual([1, 4, 3, 0, 2, 5]);
    const fromArray = moeSortByExpert(Int32Array.of(1, 0, 1), 2);  // TensorLike input of rank 1
    expect(Array.from(await fromArray.sortIndex.data())).toEqual([1, 0, 2]);
    const nested = moeSortByExpert([[1, 0], [0, 1]], 2);  // nested arrays: [T, k]
    expect(Array.from(await nested.tokenIndex.data())).toEqual([0, 1, 0, 1]);
  });
});
