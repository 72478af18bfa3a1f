/**
 * MoeFusedLinearNf4 (NF4 weights decoded inside the grouped GEMM) on cpu, tensorflow and the
 * fallback: forward and dX against float64 references over dequantiseNf4's weights, the x
 * gradient, the frozen weight, QLoRA training through model.fit, serialisation, and bad inputs.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {BACKENDS, useBackend} from './helpers/backends';
import {checkGradient, randomFloats, randomGroupSizes, refMoeFusedLinear, relativeError, spread} from './helpers/reference';
import {applyLora, cpuAddon} from '../src';
import {MoeFusedLinearNf4} from '../src/kernel_names';
import {SparseMoe} from '../src/layers/sparse_moe';
import {MoeFusedLinearNf4Layer} from '../src/layers/moe_fused_linear_nf4';
import {moeFusedLinearNf4, Nf4Weights, nf4Weights} from '../src/ops/moe_fused_linear_nf4';
import {bytesToInt32Words} from '../src/quant/int32_words';
import {decodeNf4Absmax, dequantiseNf4, Nf4Tensor, quantiseNf4, stackNf4} from '../src/quant/nf4';

/** E experts [N, K] quantised one by one (each with its own scale), as the Hub stores them. */
function randomExperts(E: number, N: number, K: number, blocksize: number, doubleQuant: boolean): Nf4Tensor {
  return stackNf4(Array.from({length: E}, () =>
    quantiseNf4(randomFloats(N * K, 0.1 + Math.random()), {blocksize, doubleQuant, shape: [N, K]})));
}

interface Nf4Case {
  name: string;
  M: number;
  N: number;
  K: number;
  blocksize: number;
  doubleQuant: boolean;
  groups: () => Int32Array;
}

const CASES: Nf4Case[] = [
  {name: 'odd K=257, experts straddle words', M: 37, N: 6, K: 257, blocksize: 64, doubleQuant: false, groups: spread(37, 3)},
  {name: 'blocksize 32, double-quantised', M: 50, N: 33, K: 100, blocksize: 32, doubleQuant: true, groups: spread(50, 4)},
  {name: 'K=3 N=1000 (several column blocks)', M: 41, N: 1000, K: 3, blocksize: 128, doubleQuant: false, groups: spread(41, 2)},
  {name: 'blocksize 256, double-quantised, K=129', M: 23, N: 130, K: 129, blocksize: 256, doubleQuant: true, groups: spread(23, 3)},
  {name: 'one expert with an odd N·K', M: 9, N: 5, K: 7, blocksize: 64, doubleQuant: false, groups: () => Int32Array.of(9)},
  {name: 'empty experts', M: 30, N: 9, K: 20, blocksize: 64, doubleQuant: true, groups: () => Int32Array.of(0, 12, 0, 0, 18, 0)},
  {name: 'skewed routing', M: 300, N: 40, K: 96, blocksize: 64, doubleQuant: false,
   groups: () => randomGroupSizes(300, 16, [50, 1, 1, 1, 20, ...Array(11).fill(0.2)])},
  {name: 'M=0', M: 0, N: 6, K: 4, blocksize: 64, doubleQuant: false, groups: () => new Int32Array(3)},
  {name: 'blocksize 4096, partial blocks', M: 20, N: 40, K: 300, blocksize: 4096, doubleQuant: false, groups: spread(20, 2)},
  {name: 'several reduction panels', M: 200, N: 300, K: 1000, blocksize: 64, doubleQuant: true, groups: spread(200, 2)},
];

const TOLERANCE = 1e-5;

/** The case's weights: quantised, as tensors, and dequantised by dequantiseNf4 (the reference). */
function weightsOf(c: Nf4Case, E: number): {t: Nf4Tensor; w: Nf4Weights; dense: Float32Array} {
  const t = randomExperts(E, c.N, c.K, c.blocksize, c.doubleQuant);
  return {t, w: nf4Weights(t), dense: dequantiseNf4(t)};
}

describe.each(BACKENDS)('MoeFusedLinearNf4 on %s', backend => {
  beforeAll(() => useBackend(backend));

  test.each(CASES)('$name', async c => {
    const g = c.groups(), E = g.length, {M, N, K} = c;
    const {w, dense} = weightsOf(c, E);
    const gs = tf.tensor1d(g, 'int32');
    const x = randomFloats(M * K), dy = randomFloats(M * N);
    const y = moeFusedLinearNf4(tf.tensor2d(x, [M, K]), w, gs);
    expect(y.shape).toEqual([M, N]);
    expect(relativeError(await y.data(), refMoeFusedLinear(x, dense, g, M, K, N))).toBeLessThanOrEqual(TOLERANCE);
    const dx = moeFusedLinearNf4(tf.tensor2d(dy, [M, N]), w, gs, {transposeWeight: true});
    expect(dx.shape).toEqual([M, K]);
    expect(relativeError(await dx.data(), refMoeFusedLinear(dy, dense, g, M, N, K, true))).toBeLessThanOrEqual(TOLERANCE);
    tf.dispose([y, dx, gs, w.packed, w.absmax]);
  });

  test('the gradient of x is dy · W[g] and matches finite differences; the weight is frozen', async () => {
    const M = 20, N = 12, K = 70, g = Int32Array.of(7, 0, 13);
    const {w, dense} = weightsOf({name: '', M, N, K, blocksize: 64, doubleQuant: true, groups: () => g}, 3);
    const x = tf.tensor2d(randomFloats(M * K), [M, K]), r = randomFloats(M * N), gs = tf.tensor1d(g, 'int32');
    const loss = (xt: tf.Tensor) => tf.sum(tf.mul(moeFusedLinearNf4(xt, w, gs), tf.tensor2d(r, [M, N])));
    const dx = tf.grad(loss)(x);
    const f = (v: Float64Array) => refMoeFusedLinear(v, dense, g, M, K, N).reduce((s, y, i) => s + y * r[i], 0);
    expect(checkGradient(f, await x.data(), await dx.data(), 24)).toBeLessThan(1e-3);
    expect(() => tf.grads((xt: tf.Tensor, p: tf.Tensor) =>
      tf.sum(moeFusedLinearNf4(xt, {...w, packed: p as tf.Tensor1D}, gs)))([x, w.packed])).toThrow(/NF4 weight \(packed\) is frozen/);
    expect(() => tf.grads((xt: tf.Tensor, a: tf.Tensor) =>
      tf.sum(moeFusedLinearNf4(xt, {...w, absmax: a as tf.Tensor1D}, gs)))([x, w.absmax])).toThrow(/NF4 weight \(absmax\) is frozen/);
  });

  test('bad inputs give clear errors and leak nothing', () => {
    const E = 2, N = 4, K = 64;
    const t = randomExperts(E, N, K, 64, false), w = nf4Weights(t);
    const x = tf.tensor2d(randomFloats(3 * K), [3, K]), gs = tf.tensor1d([1, 2], 'int32');
    const xInt = tf.cast(x, 'int32'), narrow = tf.ones([3, 5]), wrongSum = tf.tensor1d([1, 1], 'int32');
    const before = tf.memory().numTensors;
    const short = tf.tensor1d(bytesToInt32Words(t.packed).subarray(1), 'int32');
    const fewer = tf.tensor1d(decodeNf4Absmax(t).subarray(1), 'float32');
    expect(() => moeFusedLinearNf4(x, {...w, packed: short}, gs)).toThrow(/packed has 63 int32 words, expected 64 \(2 experts of 128 bytes\)/);
    expect(() => moeFusedLinearNf4(x, {...w, absmax: fewer}, gs)).toThrow(/absmax has 7 values, expected 8/);
    expect(() => moeFusedLinearNf4(x, {...w, blocksize: 48}, gs)).toThrow(/blocksize 48 is not one of 32, 64/);
    expect(() => moeFusedLinearNf4(xInt, w, gs)).toThrow(/x must have dtype float32, but has dtype int32/);
    expect(() => moeFusedLinearNf4(x, {...w, packed: w.absmax}, gs)).toThrow(/weight.packed must have dtype int32/);
    expect(() => moeFusedLinearNf4(narrow, w, gs)).toThrow(/x has 5 columns but the weight \[2,4,64\] expects K = 64/);
    expect(() => moeFusedLinearNf4(x, w, wrongSum)).toThrow(/groupSizes must sum to the number of rows of x \(3\)/);
    expect(() => moeFusedLinearNf4(x, w, [1, 1, 1])).toThrow(/one entry per expert \(E = 2\)/);
    // The kernel itself checks too (e.g. when called through runKernel).
    expect(() => tf.engine().runKernel(MoeFusedLinearNf4, {x, packed: short, absmax: w.absmax, groupSizes: gs},
                                       {N, K, blocksize: 64, transposeWeight: false})).toThrow(/packed has 63 int32 words/);
    expect(() => tf.engine().runKernel(MoeFusedLinearNf4, {x, packed: w.packed, absmax: w.absmax, groupSizes: gs},
                                       {N, K, blocksize: 100, transposeWeight: false})).toThrow(/blocksize 100 is not one of/);
    tf.dispose([short, fewer]);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('forward and backward leak no tensors', () => {
    const w = nf4Weights(randomExperts(3, 8, 32, 64, true));
    const x = tf.tensor2d(randomFloats(10 * 32), [10, 32]), gs = tf.tensor1d([4, 0, 6], 'int32');
    const before = tf.memory().numTensors;
    tf.dispose(tf.tidy(() => tf.grad((xt: tf.Tensor) => tf.sum(moeFusedLinearNf4(xt, w, gs)))(x)));
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('the native kernel', () => {
  const addon = cpuAddon();
  const best = addon.isa();
  const isas = ['avx512', 'avx2', 'generic'].filter(isa => addon.setIsa(isa) && addon.setIsa(best));
  afterEach(() => addon.setIsa(best));

  test.each(isas)('%s: every output element is written (outputs poisoned with NaN)', isa => {
    expect(addon.setIsa(isa)).toBe(true);
    for (const c of CASES) {
      const g = c.groups(), E = g.length, {M, N, K} = c;
      const {t, dense} = weightsOf(c, E);
      const packed = bytesToInt32Words(t.packed), absmax = decodeNf4Absmax(t);
      const x = randomFloats(M * K), dy = randomFloats(M * N);
      const y = new Float32Array(M * N).fill(NaN), dx = new Float32Array(M * K).fill(NaN);
      addon.moeNf4Linear(x, packed, absmax, g, y, M, N, K, E, c.blocksize, false);
      addon.moeNf4Linear(dy, packed, absmax, g, dx, M, N, K, E, c.blocksize, true);
      expect(relativeError(y, refMoeFusedLinear(x, dense, g, M, K, N))).toBeLessThanOrEqual(TOLERANCE);
      expect(relativeError(dx, refMoeFusedLinear(dy, dense, g, M, N, K, true))).toBeLessThanOrEqual(TOLERANCE);
    }
  });

  test('a one-hot x reads the weight back bit for bit', () => {
    const N = 7, K = 130, t = randomExperts(1, N, K, 64, true), dense = dequantiseNf4(t);
    const eye = new Float32Array(K * K);
    for (let k = 0; k < K; ++k) eye[k * K + k] = 1;
    const y = new Float32Array(K * N);  // y[k, n] = W[n, k]
    addon.moeNf4Linear(eye, bytesToInt32Words(t.packed), decodeNf4Absmax(t), Int32Array.of(K), y, K, N, K, 1, 64, false);
    for (let n = 0; n < N; ++n) for (let k = 0; k < K; ++k) expect(Object.is(y[k * N + n], dense[n * K + k])).toBe(true);
  });

  test('bad arguments are JS exceptions raised before any memory is touched', () => {
    const packed = new Int32Array(64), absmax = new Float32Array(8), x = new Float32Array(3 * 64), y = new Float32Array(12);
    const g = Int32Array.of(1, 2);
    expect(() => addon.moeNf4Linear(x, packed, absmax, g, y, 3, 4, 64, 2, 64, false)).not.toThrow();
    expect(() => addon.moeNf4Linear(x, new Float32Array(64) as never, absmax, g, y, 3, 4, 64, 2, 64, false)).toThrow(/packed must be a Int32Array/);
    expect(() => addon.moeNf4Linear(x, packed.subarray(1), absmax, g, y, 3, 4, 64, 2, 64, false)).toThrow(/packed has 63 int32 words, expected 64/);
    expect(() => addon.moeNf4Linear(x, packed, absmax, g, y, 3, 4, 64, 2, 64 * 3, false)).toThrow(/blocksize 192 is not one of/);
    expect(() => addon.moeNf4Linear(x, packed, absmax.subarray(1), g, y, 3, 4, 64, 2, 64, false)).toThrow(/absmax has 7 values, expected 8/);
    expect(() => addon.moeNf4Linear(x, packed, absmax, g, y.subarray(1), 3, 4, 64, 2, 64, false)).toThrow(/output has 11 elements, expected 12/);
    expect(() => addon.moeNf4Linear(x, packed, absmax, g, y, 3, 4, 64, 2, 64, true)).toThrow(/x has 192 elements, expected 12/);
    expect(() => addon.moeNf4Linear(x, packed, absmax, Int32Array.of(2, 2), y, 3, 4, 64, 2, 64, false)).toThrow(/must sum to the number of rows/);
    expect(() => addon.moeNf4Linear(x, new Int32Array(5), new Float32Array(3), g, y, 3, 3, 3, 2, 64, false)).toThrow(/even N·K/);
  });
});

describe.each(BACKENDS)('QLoRA on %s', backend => {
  beforeAll(() => useBackend(backend));

  test('LoRA adapters on an NF4 SparseMoe train through model.fit; the 4-bit base stays as loaded', async () => {
    const H = 32, I = 16, E = 4, T = 48;
    const moe = new SparseMoe({name: 'mlp', hiddenSize: H, moeIntermediateSize: I, numExperts: E, topK: 2, normTopKProb: true,
                               nf4: {blocksize: 32}});
    for (const [layer, out, inp] of [[moe.gate_proj, I, H], [moe.up_proj, I, H], [moe.down_proj, H, I]] as const) {
      (layer as MoeFusedLinearNf4Layer).setNf4Weights(randomExperts(E, out, inp, 32, true));
    }
    const input = tfl.input({shape: [H]});
    const model = tfl.model({inputs: input, outputs: moe.apply(input) as tfl.SymbolicTensor});
    const adapted = applyLora(model, {r: 4, alpha: 8, targets: ['gate_proj', 'up_proj', 'down_proj']});
    expect(adapted.every(l => l instanceof MoeFusedLinearNf4Layer)).toBe(true);
    expect(adapted.length).toBe(3);
    const names = model.trainableWeights.map(w => w.name.replace(/_\d+$/, '')).sort();  // tfjs uniquifies names
    expect(names).toEqual(['down_proj', 'gate_proj', 'up_proj'].flatMap(p => [`mlp.${p}/lora_A`, `mlp.${p}/lora_B`]));
    const frozen = model.nonTrainableWeights.map(w => w.read().dataSync().slice());
    model.compile({optimizer: tf.train.adam(0.01), loss: 'meanSquaredError'});
    const x = tf.randomNormal([T, H]), target = tf.randomNormal([T, H], 0, 0.5);
    const history = await model.fit(x, target, {batchSize: 16, epochs: 15, verbose: 0, shuffle: false});
    const loss = history.history.loss as number[];
    expect(loss[loss.length - 1]).toBeLessThan(0.9 * loss[0]);
    model.nonTrainableWeights.forEach((w, i) => expect(w.read().dataSync()).toEqual(frozen[i]));
    expect(() => adapted[0].mergeLora()).toThrow(/cannot be merged into an NF4 base/);
    expect(() => adapted[0].kernel).toThrow(/no float kernel/);
  });

  test('an NF4 layer with its adapter saves and loads (getConfig and weights)', async () => {
    const E = 3, K = 24, N = 10, M = 9;
    const layer = new MoeFusedLinearNf4Layer({name: 'experts', units: N, numExperts: E, blocksize: 64, lora: {r: 2, alpha: 4}});
    const xIn = tfl.input({batchShape: [null, K]}), gIn = tfl.input({batchShape: [E], dtype: 'int32'});
    const model = tfl.model({inputs: [xIn, gIn], outputs: layer.apply([xIn, gIn]) as tfl.SymbolicTensor});
    layer.setNf4Weights(randomExperts(E, N, K, 64, false));
    layer.adapter!.B.write(tf.randomNormal([E, N, 2]));
    expect(layer.getConfig()).toMatchObject({units: N, numExperts: E, blocksize: 64, lora: {r: 2, alpha: 4}});
    let saved: tf.io.ModelArtifacts | undefined;
    await model.save(tf.io.withSaveHandler(async artifacts => {
      saved = artifacts;
      return {modelArtifactsInfo: {dateSaved: new Date(), modelTopologyType: 'JSON'}};
    }));
    const loaded = await tfl.loadLayersModel(tf.io.fromMemory(saved!));
    const x = tf.tensor2d(randomFloats(M * K), [M, K]), g = tf.tensor1d([4, 0, 5], 'int32');
    const expected = await (model.apply([x, g]) as tf.Tensor).data();
    expect(relativeError(await (loaded.apply([x, g]) as tf.Tensor).data(), expected)).toBe(0);
    expect(loaded.layers[2]).toBeInstanceOf(MoeFusedLinearNf4Layer);
  });
});
