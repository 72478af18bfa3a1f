/** Every op and its gradient leave tf.memory().numTensors unchanged, and no kernel leaks data. */
import * as tf from '@tensorflow/tfjs-core';

import {BACKENDS, useBackend} from './helpers/backends';
import {randomFloats} from './helpers/reference';
import {moeCombineRows, moeFusedLinear, moeGatherRows, moeRoute} from '../src';

describe.each(BACKENDS)('memory on %s', backend => {
  beforeAll(async () => {
    await useBackend(backend);
    tf.env().set('IS_TEST', true);  // the engine then checks every kernel for leaked data ids
  });
  afterAll(() => tf.env().set('IS_TEST', false));

  test('an MoE block forward and backward', () => {
    const T = 10, E = 4, k = 2, H = 6, I = 5;
    const x = tf.tensor2d(randomFloats(T * H), [T, H]);
    const router = tf.tensor2d(randomFloats(H * E), [H, E]);
    const up = tf.tensor3d(randomFloats(E * I * H), [E, I, H]);
    const down = tf.tensor3d(randomFloats(E * H * I), [E, H, I]);
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const block = (xt: tf.Tensor, rt: tf.Tensor, ut: tf.Tensor, dt: tf.Tensor) => {
        const routing = moeRoute(tf.matMul(xt, rt), {topK: k});
        const h = tf.relu(moeFusedLinear(moeGatherRows(xt, routing.tokenIndex), ut, routing.groupSizes));
        return tf.sum(moeCombineRows(moeFusedLinear(h, dt, routing.groupSizes), routing));
      };
      const {value, grads} = tf.valueAndGrads(block)([x, router, up, down]);
      expect(grads.map(g => g.shape)).toEqual([[T, H], [H, E], [E, I, H], [E, H, I]]);
      expect(value.shape).toEqual([]);
    });
    expect(tf.memory().numTensors).toBe(before);
  });
});
