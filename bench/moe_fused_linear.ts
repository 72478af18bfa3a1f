/**
 * npm run bench: GFLOP/s of MoeFusedLinear forward, dX and dW on Qwen3-30B-A3B expert shapes
 * (E = 128), for every implementation, in one run:
 *   kernel           the native kernels called directly, outputs allocated once (no tfjs)
 *   ours/cpu         the native kernels on tfjs's cpu backend (a fresh output array per call)
 *   ours/tensorflow  the same kernels as TensorFlow ops on tfjs-node
 *   fallback/cpu     the pure-tfjs kernels (one tf.matMul per expert) on the JS cpu backend
 *   loop/tensorflow  a per-expert tf.matMul loop on tfjs-node: what a tfjs user writes today
 *   dense/tensorflow one tf.matMul of equal FLOPs on tfjs-node (oneDNN): the practical ceiling
 * FLOPs = 2·M·N·K for each of the three. Medians of timed runs after one warm-up run.
 * Environment: BENCH_ROWS (default 2048,8192), BENCH_EXPERTS (128), BENCH_FALLBACK_MAX_ROWS (2048).
 */
import * as os from 'os';

import * as tf from '@tensorflow/tfjs-core';
import {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

import {medianSeconds, randomFloats, uniformGroupSizes} from './inputs';

tf.registerBackend('fallback', () => new MathBackendCPU(), 0);
tf.copyRegisteredKernels('cpu', 'fallback');
process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
require('@tensorflow/tfjs-node');
// Loaded after the "fallback" backend exists, so that it gets the pure-tfjs kernels.
const moe = require('../src') as typeof import('../src');

const E = Number(process.env.BENCH_EXPERTS ?? 128);
const SHAPES = [
  {name: 'gate/up (K=2048→N=768)', K: 2048, N: 768},
  {name: 'down (K=768→N=2048)', K: 768, N: 2048},
  {name: 'LoRA A r=16 (K=2048→N=16)', K: 2048, N: 16},
  {name: 'LoRA B r=16 (K=16→N=768)', K: 16, N: 768},
];
const ROWS = (process.env.BENCH_ROWS ?? '2048,8192').split(',').map(Number);
const FALLBACK_MAX_ROWS = Number(process.env.BENCH_FALLBACK_MAX_ROWS ?? 2048);  // ~1 GFLOP/s: slow

type Op = 'forward' | 'dX' | 'dW';
const OPS: Op[] = ['forward', 'dX', 'dW'];

interface Data {
  x: Float32Array;
  w: Float32Array;
  dy: Float32Array;
  g: Int32Array;
}

/** The three ops of one implementation, built on the active backend. */
type Impl = (d: Data, M: number, K: number, N: number) => Record<Op, () => tf.Tensor | void>;

const kernelOnly: Impl = (d, M, K, N) => {
  const addon = moe.cpuAddon();
  const y = new Float32Array(M * N), dx = new Float32Array(M * K), dw = new Float32Array(E * N * K);
  return {
    forward: () => addon.moeFusedLinear(d.x, d.w, d.g, y, M, K, N, E, false),
    dX: () => addon.moeFusedLinear(d.dy, d.w, d.g, dx, M, N, K, E, true),
    dW: () => addon.moeFusedLinearGradWeight(d.x, d.dy, d.g, dw, M, K, N, E),
  };
};

const fused: Impl = (d, M, K, N) => {
  const x = tf.tensor2d(d.x, [M, K]), w = tf.tensor3d(d.w, [E, N, K]), dy = tf.tensor2d(d.dy, [M, N]);
  const g = tf.tensor1d(d.g, 'int32');
  return {
    forward: () => moe.moeFusedLinear(x, w, g),
    dX: () => moe.moeFusedLinear(dy, w, g, {transposeWeight: true}),
    dW: () => tf.engine().runKernel(moe.MoeFusedLinearGradWeight, {x, dy, groupSizes: g}) as tf.Tensor,
  };
};

const perExpertLoop: Impl = (d, M, K, N) => {
  const x = tf.tensor2d(d.x, [M, K]), w = tf.tensor3d(d.w, [E, N, K]), dy = tf.tensor2d(d.dy, [M, N]);
  const sizes = Array.from(d.g);
  const perExpert = (f: (e: number, row: number, size: number) => tf.Tensor) => {
    let row = 0;
    return sizes.map((size, e) => {
      const part = f(e, row, size);
      row += size;
      return part;
    });
  };
  const we = (e: number) => tf.reshape(tf.slice(w, [e, 0, 0], [1, N, K]), [N, K]);
  return {
    forward: () => tf.tidy(() => tf.concat(perExpert((e, row, size) => tf.matMul(tf.slice(x, [row, 0], [size, K]), we(e), false, true)))),
    dX: () => tf.tidy(() => tf.concat(perExpert((e, row, size) => tf.matMul(tf.slice(dy, [row, 0], [size, N]), we(e))))),
    dW: () => tf.tidy(() => tf.stack(perExpert((_e, row, size) =>
        tf.matMul(tf.slice(dy, [row, 0], [size, N]), tf.slice(x, [row, 0], [size, K]), true, false)))),
  };
};

const denseEqualFlops: Impl = (d, M, K, N) => {
  const x = tf.tensor2d(d.x, [M, K]), w = tf.tensor2d(d.w.subarray(0, N * K), [N, K]), dy = tf.tensor2d(d.dy, [M, N]);
  return {
    forward: () => tf.matMul(x, w, false, true),
    dX: () => tf.matMul(dy, w),
    dW: () => tf.matMul(dy, x, true, false),
  };
};

const IMPLS: Array<{name: string; backend: string; impl: Impl; maxRows?: number; runs: number}> = [
  {name: 'kernel', backend: 'cpu', impl: kernelOnly, runs: 5},
  {name: 'ours/cpu', backend: 'cpu', impl: fused, runs: 5},
  {name: 'ours/tensorflow', backend: 'tensorflow', impl: fused, runs: 5},
  {name: 'fallback/cpu', backend: 'fallback', impl: fused, maxRows: FALLBACK_MAX_ROWS, runs: 1},
  {name: 'loop/tensorflow', backend: 'tensorflow', impl: perExpertLoop, runs: 5},
  {name: 'dense/tensorflow', backend: 'tensorflow', impl: denseEqualFlops, runs: 5},
];

async function main() {
  console.log(`# MoeFusedLinear benchmark, ${new Date().toISOString().slice(0, 10)}`);
  console.log(`${os.cpus()[0].model}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ` +
              `native ISA ${moe.cpuAddon().isa()}, ${moe.cpuAddon().numThreads()} threads; E = ${E}, uniform routing\n`);
  const header = ['shape', 'M', 'op', ...IMPLS.map(i => i.name), 'kernel ÷ dense', 'ours/cpu ÷ dense',
                  'ours/cpu ÷ loop', 'ours/cpu ÷ fallback'];
  console.log(`| ${header.join(' | ')} |`);
  console.log(`|${header.map(() => ' --- ').join('|')}|`);
  for (const {name, K, N} of SHAPES) {
    for (const M of ROWS) {
      const data: Data = {x: randomFloats(M * K), w: randomFloats(E * N * K), dy: randomFloats(M * N), g: uniformGroupSizes(M, E)};
      const gflops: Record<string, Record<Op, number>> = {};
      for (const {name: implName, backend, impl, maxRows, runs} of IMPLS) {
        if (maxRows !== undefined && M > maxRows) continue;
        await tf.setBackend(backend);
        tf.engine().startScope();  // the inputs made by impl are disposed by endScope
        const ops = impl(data, M, K, N);
        gflops[implName] = {} as Record<Op, number>;
        for (const op of OPS) gflops[implName][op] = 2 * M * N * K / medianSeconds(ops[op], runs) / 1e9;
        tf.engine().endScope();
      }
      for (const op of OPS) {
        const cell = (impl: string) => gflops[impl] ? gflops[impl][op].toFixed(1) : '—';
        const ratio = (ours: string, other: string) =>
            gflops[other] ? `${(gflops[ours][op] / gflops[other][op]).toFixed(2)}×` : '—';
        console.log(`| ${name} | ${M} | ${op} | ${IMPLS.map(i => cell(i.name)).join(' | ')} | ` +
                    `${ratio('kernel', 'dense/tensorflow')} | ${ratio('ours/cpu', 'dense/tensorflow')} | ` +
                    `${ratio('ours/cpu', 'loop/tensorflow')} | ${ratio('ours/cpu', 'fallback/cpu')} |`);
      }
    }
  }
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
