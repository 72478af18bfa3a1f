/** Forward, transposed-weight and weight-gradient kernels against float64 references, on all backends. */
import * as tf from '@tensorflow/tfjs-core';

import {BACKENDS, useBackend} from './helpers/backends';
import {GroupedCase, randomFloats, randomGroupSizes, refGradWeight, refMoeFusedLinear, relativeError, spread} from './helpers/reference';
import {MoeFusedLinearGradWeight, moeFusedLinear} from '../src';

const CASES: GroupedCase[] = [
  {name: 'odd sizes K=257 N=5', M: 37, K: 257, N: 5, groups: spread(37, 3)},
  {name: 'K=3 N=1000', M: 41, K: 3, N: 1000, groups: spread(41, 4)},
  {name: 'K=1', M: 50, K: 1, N: 7, groups: spread(50, 2)},
  {name: 'K=257 N=1000', M: 23, K: 257, N: 1000, groups: spread(23, 3)},
  {name: 'E=1', M: 70, K: 64, N: 33, groups: () => Int32Array.of(70)},
  {name: 'M=0', M: 0, K: 4, N: 6, groups: () => new Int32Array(3)},
  {name: 'empty experts', M: 30, K: 20, N: 9, groups: () => Int32Array.of(0, 12, 0, 0, 18, 0)},
  {name: 'all rows in one expert', M: 45, K: 70, N: 12, groups: () => Int32Array.of(0, 0, 45, 0)},
  {name: 'skewed routing', M: 300, K: 96, N: 40, groups: () => randomGroupSizes(300, 16, [50, 1, 1, 1, 20, ...Array(11).fill(0.2)])},
  {name: 'LoRA A (N = r = 16)', M: 120, K: 512, N: 16, groups: spread(120, 8)},
  {name: 'LoRA B (K = r = 16)', M: 120, K: 16, N: 384, groups: spread(120, 8)},
  {name: 'LoRA r = 4', M: 90, K: 4, N: 64, groups: spread(90, 5)},
  {name: 'LoRA r = 64', M: 90, K: 200, N: 64, groups: spread(90, 5)},
];

const TOLERANCE = 1e-5;

describe.each(BACKENDS)('MoeFusedLinear on %s', backend => {
  beforeAll(() => useBackend(backend));

  test.each(CASES)('$name', async ({M, K, N, groups}) => {
    const g = groups();
    const E = g.length;
    const x = randomFloats(M * K), w = randomFloats(E * N * K), wt = randomFloats(E * K * N), dy = randomFloats(M * N);
    const gs = tf.tensor1d(g, 'int32');

    const y = moeFusedLinear(tf.tensor2d(x, [M, K]), tf.tensor3d(w, [E, N, K]), gs);
    expect(y.shape).toEqual([M, N]);
    expect(relativeError(await y.data(), refMoeFusedLinear(x, w, g, M, K, N))).toBeLessThanOrEqual(TOLERANCE);

    const yt = moeFusedLinear(tf.tensor2d(x, [M, K]), tf.tensor3d(wt, [E, K, N]), gs, {transposeWeight: true});
    expect(yt.shape).toEqual([M, N]);
    expect(relativeError(await yt.data(), refMoeFusedLinear(x, wt, g, M, K, N, true))).toBeLessThanOrEqual(TOLERANCE);

    const dw = tf.engine().runKernel(MoeFusedLinearGradWeight,
                                     {x: tf.tensor2d(x, [M, K]), dy: tf.tensor2d(dy, [M, N]), groupSizes: gs}) as tf.Tensor;
    expect(dw.shape).toEqual([E, N, K]);
    expect(relativeError(await dw.data(), refGradWeight(x, dy, g, K, N))).toBeLessThanOrEqual(TOLERANCE);
  });

  test('NaN in x propagates to the rows it feeds, and only those', async () => {
    const M = 6, K = 70, N = 5;
    const g = Int32Array.of(3, 3);
    const x = randomFloats(M * K);
    x[4 * K + 10] = NaN;  // row 4 (expert 1)
    const y = await moeFusedLinear(tf.tensor2d(x, [M, K]), tf.tensor3d(randomFloats(2 * N * K), [2, N, K]),
                                   tf.tensor1d(g, 'int32')).data();
    for (let m = 0; m < M; ++m) {
      for (let n = 0; n < N; ++n) expect(Number.isNaN(y[m * N + n])).toBe(m === 4);
    }
  });
});

test('the three backends agree on a mid-size problem', async () => {
  const M = 257, K = 300, N = 130, E = 7;
  const g = randomGroupSizes(M, E);
  const x = randomFloats(M * K), w = randomFloats(E * N * K);
  const results: Float32Array[] = [];
  for (const backend of BACKENDS) {
    await useBackend(backend);
    results.push(await moeFusedLinear(tf.tensor2d(x, [M, K]), tf.tensor3d(w, [E, N, K]), tf.tensor1d(g, 'int32'))
                     .data() as Float32Array);
  }
  expect(relativeError(results[1], results[0])).toBeLessThanOrEqual(TOLERANCE);
  expect(relativeError(results[2], results[0])).toBeLessThanOrEqual(TOLERANCE);
});
