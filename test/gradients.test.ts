/** Analytic gradients against central finite differences, through tf.grads and a model.fit step. */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {BACKENDS, useBackend} from './helpers/backends';
import {checkGradient, randomFloats, randomGroupSizes, refMoeFusedLinear} from './helpers/reference';
import {moeCombineRows, moeFusedLinear, moeGatherRows, moeRoute} from '../src';

/** L = Σ_{m,n} y[m, n] · r[m, n] for y = moeFusedLinear(x, w, g), in float64. */
function refLoss(x: ArrayLike<number>, w: ArrayLike<number>, g: Int32Array, r: Float32Array,
                 M: number, K: number, N: number, transposeWeight: boolean): number {
  const y = refMoeFusedLinear(x, w, g, M, K, N, transposeWeight);
  let s = 0;
  for (let i = 0; i < y.length; ++i) s += y[i] * r[i];
  return s;
}

describe.each(BACKENDS)('gradients on %s', backend => {
  beforeAll(() => useBackend(backend));

  test.each([false, true])('tf.grads of x and weight, transposeWeight = %s', async transposeWeight => {
    const M = 29, K = 67, N = 11;
    const g = Int32Array.of(7, 0, 13, 9);
    const E = g.length;
    const x = randomFloats(M * K), w = randomFloats(E * N * K), r = randomFloats(M * N);
    const wShape: [number, number, number] = transposeWeight ? [E, K, N] : [E, N, K];
    const loss = (xt: tf.Tensor, wt: tf.Tensor) =>
        tf.sum(tf.mul(moeFusedLinear(xt, wt, tf.tensor1d(g, 'int32'), {transposeWeight}), tf.tensor2d(r, [M, N])));
    const [dx, dw] = tf.grads(loss)([tf.tensor2d(x, [M, K]), tf.tensor3d(w, wShape)]);
    expect(dx.shape).toEqual([M, K]);
    expect(dw.shape).toEqual(wShape);
    const dxv = await dx.data(), dwv = await dw.data();
    expect(checkGradient(v => refLoss(v, w, g, r, M, K, N, transposeWeight), x, dxv)).toBeLessThan(1e-4);
    expect(checkGradient(v => refLoss(x, v, g, r, M, K, N, transposeWeight), w, dwv)).toBeLessThan(1e-4);
    // Experts without rows get exactly zero weight gradient.
    const slice = N * K;
    expect(Array.from(dwv.subarray(slice, 2 * slice)).every(v => v === 0)).toBe(true);
  });

  test('group sizes computed on the tape get a zeros gradient, so backprop passes them', () => {
    const x = tf.tensor2d(randomFloats(6 * 4), [6, 4]);
    const w = tf.tensor3d(randomFloats(2 * 3 * 4), [2, 3, 4]);
    const f = (xt: tf.Tensor) => {
      // int32 group sizes derived from x: on the tape, like ids computed by a router.
      const sizes = tf.add(tf.cast(tf.mul(tf.sum(xt), 0), 'int32'), tf.tensor1d([2, 4], 'int32'));
      return tf.sum(moeFusedLinear(xt, w, sizes));
    };
    expect(tf.grad(f)(x).shape).toEqual([6, 4]);
  });

  test('a model.fit step moves the expert weights by -lr · dL/dW', async () => {
    const M = 24, K = 10, N = 6;
    const g = randomGroupSizes(M, 3);
    const E = g.length;
    const x = randomFloats(M * K), w = randomFloats(E * N * K), target = randomFloats(M * N);
    const lr = 0.1;

    class Experts extends tfl.layers.Layer {
      static className = 'TestExperts';
      kernel!: tfl.LayerVariable;
      override build() {
        this.kernel = this.addWeight('kernel', [E, N, K], 'float32', tfl.initializers.zeros());
        this.built = true;
      }
      override computeOutputShape(s: tfl.Shape | tfl.Shape[]): tfl.Shape {
        return [(s as tfl.Shape)[0], N];
      }
      override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
        return moeFusedLinear(Array.isArray(inputs) ? inputs[0] : inputs, this.kernel.read(), tf.tensor1d(g, 'int32'));
      }
    }
    const input = tfl.input({shape: [K]});
    const layer = new Experts({});
    const model = tfl.model({inputs: input, outputs: layer.apply(input) as tfl.SymbolicTensor});
    model.compile({optimizer: tf.train.sgd(lr), loss: 'meanSquaredError'});
    layer.kernel.write(tf.tensor3d(w, [E, N, K]));

    await model.fit(tf.tensor2d(x, [M, K]), tf.tensor2d(target, [M, N]), {batchSize: M, epochs: 1, shuffle: false, verbose: 0});
    const after = await layer.kernel.read().data();

    // Loss = mean over rows of mean over columns of (y - target)², in float64.
    const mse = (wv: ArrayLike<number>) => {
      const y = refMoeFusedLinear(x, wv, g, M, K, N);
      let s = 0;
      for (let i = 0; i < y.length; ++i) s += (y[i] - target[i]) ** 2;
      return s / (M * N);
    };
    const step = Float64Array.from(after, (v, i) => (w[i] - v) / lr);  // = dL/dW seen by SGD
    expect(checkGradient(mse, w, step, 20)).toBeLessThan(1e-3);
  });

  test('model.fit trains a routed MoE layer: the loss falls and the router learns', async () => {
    const T = 64, H = 8, O = 4, E = 6, k = 2;
    class RoutedExperts extends tfl.layers.Layer {
      static className = 'TestRoutedExperts';
      router!: tfl.LayerVariable;
      experts!: tfl.LayerVariable;
      override build() {
        this.router = this.addWeight('router', [H, E], 'float32', tfl.initializers.glorotUniform({seed: 1}));
        this.experts = this.addWeight('experts', [E, O, H], 'float32', tfl.initializers.glorotUniform({seed: 2}));
        this.built = true;
      }
      override computeOutputShape(s: tfl.Shape | tfl.Shape[]): tfl.Shape {
        return [(s as tfl.Shape)[0], O];
      }
      override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
        const x = Array.isArray(inputs) ? inputs[0] : inputs;
        const routing = moeRoute(tf.matMul(x, this.router.read()), {topK: k, normTopKProb: false});
        const y = moeFusedLinear(moeGatherRows(x, routing.tokenIndex), this.experts.read(), routing.groupSizes);
        return moeCombineRows(y, routing);
      }
    }
    const input = tfl.input({shape: [H]});
    const layer = new RoutedExperts({});
    const model = tfl.model({inputs: input, outputs: layer.apply(input) as tfl.SymbolicTensor});
    model.compile({optimizer: tf.train.adam(0.02), loss: 'meanSquaredError'});
    const xs = tf.randomNormal([T, H], 0, 1, 'float32', 3);  // seeded: the same data on every backend
    const ys = tf.tanh(tf.matMul(xs, tf.randomNormal([H, O], 0, 1, 'float32', 4)));
    const routerBefore = await layer.router.read().data();
    const history = await model.fit(xs, ys, {batchSize: 16, epochs: 15, verbose: 0, shuffle: false});
    const loss = history.history.loss as number[];
    expect(loss[loss.length - 1]).toBeLessThan(0.7 * loss[0]);
    const routerAfter = await layer.router.read().data();
    expect(routerAfter.some((v, i) => Math.abs(v - routerBefore[i]) > 1e-3)).toBe(true);
  });
});
