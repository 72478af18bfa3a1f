/**
 * npm run bench:nf4: MoeFusedLinear with NF4 weights on the CPU, Qwen3-30B-A3B expert shapes, the
 * native kernels called directly (no tfjs), outputs allocated once:
 *   nf4 fused        moeNf4Linear: codes decoded panel by panel inside the GEMM (0.5 B/weight)
 *   dequant + f32    dequantiseNf4 of all experts (JS, as the pure-tfjs fallback does), then the
 *                    float32 kernel: the time of the two added (dequantisation does not depend on M)
 *   f32              the float32 kernel on the dequantised weight (4 B/weight kept in memory)
 * Forward y = x · W[g]ᵀ and dX = dY · W[g]; FLOPs = 2·M·N·K. Medians after one warm-up run.
 * Environment: BENCH_ROWS (default 1024,2048,4096,8192,16384), BENCH_EXPERTS (128), BENCH_RUNS (3).
 */
import * as os from 'os';

import {cpuAddon} from '../src/native/cpu_addon';
import {bytesToInt32Words} from '../src/quant/int32_words';
import {decodeNf4Absmax, dequantiseNf4, Nf4Tensor, quantiseNf4, stackNf4} from '../src/quant/nf4';
import {medianSeconds, randomFloats, uniformGroupSizes} from './inputs';

const E = Number(process.env.BENCH_EXPERTS ?? 128);
const ROWS = (process.env.BENCH_ROWS ?? '1024,2048,4096,8192,16384').split(',').map(Number);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const BLOCKSIZE = 64;
const SHAPES = [
  {name: 'gate/up (K=2048→N=768)', K: 2048, N: 768},
  {name: 'down (K=768→N=2048)', K: 768, N: 2048},
];

const addon = cpuAddon();
console.log(`CPU: ${os.cpus()[0].model}, ${addon.numThreads()} threads, ${addon.isa()}; E = ${E}, blocksize ${BLOCKSIZE}, ` +
            `double-quantised absmax (decoded on the host once)`);
const ms = (s: number) => (s * 1e3).toFixed(1).padStart(8);
const gflops = (flops: number, s: number) => (flops / s / 1e9).toFixed(1).padStart(6);

for (const {name, K, N} of SHAPES) {
  // Experts quantised one at a time keeps the float32 data of one expert alive, not all of them.
  const t: Nf4Tensor = stackNf4(Array.from({length: E}, () =>
    quantiseNf4(randomFloats(N * K, -0.05, 0.05), {blocksize: BLOCKSIZE, doubleQuant: true, shape: [N, K]})));
  const packed = bytesToInt32Words(t.packed), absmax = decodeNf4Absmax(t);
  let dense = dequantiseNf4(t);
  const dequantSeconds = medianSeconds(() => { dense = dequantiseNf4(t); }, 1);
  console.log(`\n${name}: NF4 ${(packed.byteLength / 2 ** 20).toFixed(0)} MiB, float32 ${(dense.byteLength / 2 ** 20).toFixed(0)} MiB, ` +
              `dequantiseNf4 of all experts ${ms(dequantSeconds).trim()} ms`);
  console.log('      M | fwd: nf4 fused ms GFLOP/s | dequant+f32 ms | f32 ms GFLOP/s | dX: nf4 fused ms GFLOP/s | f32 ms GFLOP/s');
  for (const M of ROWS) {
    const g = uniformGroupSizes(M, E), flops = 2 * M * N * K;
    const x = randomFloats(M * K), dy = randomFloats(M * N), y = new Float32Array(M * N), dx = new Float32Array(M * K);
    const fused = medianSeconds(() => addon.moeNf4Linear(x, packed, absmax, g, y, M, N, K, E, BLOCKSIZE, false), RUNS);
    const float = medianSeconds(() => addon.moeFusedLinear(x, dense, g, y, M, K, N, E, false), RUNS);
    const fusedDx = medianSeconds(() => addon.moeNf4Linear(dy, packed, absmax, g, dx, M, N, K, E, BLOCKSIZE, true), RUNS);
    const floatDx = medianSeconds(() => addon.moeFusedLinear(dy, dense, g, dx, M, N, K, E, true), RUNS);
    console.log(`${String(M).padStart(7)} | ${ms(fused)} ${gflops(flops, fused)}         | ${ms(dequantSeconds + float)}       | ` +
                `${ms(float)} ${gflops(flops, float)} | ${ms(fusedDx)} ${gflops(flops, fusedDx)}             | ` +
                `${ms(floatDx)} ${gflops(flops, floatDx)}`);
  }
}
