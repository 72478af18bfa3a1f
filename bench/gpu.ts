/**
 * The CUDA kernels on the GPU machine: TFLOP/s of forward, dX and dW for each precision on
 * Qwen3-30B-A3B expert shapes (E = 128, uniform routing) and LoRA r = 16 thin shapes (also as
 * GB/s of compulsory traffic), with ratios to the PyTorch baselines that bench/gpu_torch.py
 * measured in the same run (GPU_BASELINES=path of its JSON), among them torch.bmm on the same
 * problem (uniform routing lets batched cuBLAS do it, in our operand layouts).
 *   python3 bench/gpu_torch.py /tmp/torch.json && GPU_BASELINES=/tmp/torch.json node dist/bench/gpu.js
 * Medians of 25 event-timed runs after a warm-up, inputs rotated over three sets (gpu_timing.ts);
 * then the host time a launch costs, which those timings leave out.
 */
import * as fs from 'fs';

import {Precision} from '../src/native/cuda_addon';
import {device, gpu, medianMs, SETS} from './gpu_timing';
import {randomFloats, uniformGroupSizes} from './inputs';

const E = 128;
const SHAPES = [
  {name: 'gate/up', K: 2048, N: 768}, {name: 'down', K: 768, N: 2048},
  {name: 'LoRA A r=16', K: 2048, N: 16}, {name: 'LoRA B r=16', K: 16, N: 768},
];
const ROWS = (process.env.BENCH_ROWS ?? '16384,65536').split(',').map(Number);
const PRECISIONS: Precision[] = ['tf32', 'bf16', 'highest'];
const baselines: Record<string, Record<string, number | null>> =
    process.env.GPU_BASELINES ? JSON.parse(fs.readFileSync(process.env.GPU_BASELINES, 'utf8')) : {};

function main() {
  const info = gpu.deviceInfo();
  console.log(`# CUDA grouped GEMM on ${info.name} (sm_${info.computeCapability.replace('.', '')}, ` +
              `${info.multiProcessors} SMs), ${new Date().toISOString().slice(0, 10)}`);
  const copy = baselines.copy_TBps as unknown as number | undefined;
  const header = ['shape', 'M', 'op', ...PRECISIONS, 'tf32 ÷ dense tf32', 'tf32 ÷ bmm tf32', 'bf16 ÷ dense bf16',
                  'bf16 ÷ bmm bf16', 'bf16 ÷ _grouped_mm', 'bf16 ÷ cast + _grouped_mm', 'highest ÷ dense fp32',
                  'GB/s (bf16)'];
  console.log(`| ${header.join(' | ')} |`);
  console.log(`|${header.map(() => ' --- ').join('|')}|`);
  for (const {name, K, N} of SHAPES) {
    for (const M of ROWS) {
      const g = uniformGroupSizes(M, E);
      const sets = Array.from({length: SETS}, () => ({
        x: device(randomFloats(M * K)), w: device(randomFloats(E * N * K)), dy: device(randomFloats(M * N)), g: device(g),
      }));
      const y = gpu.alloc(M * N * 4), dx = gpu.alloc(M * K * 4), dw = gpu.alloc(E * N * K * 4);
      const flops = 2 * M * N * K;
      // Compulsory traffic: every input read once, every output written once (float32).
      const bytes = {forward: 4 * (M * K + E * N * K + M * N), dX: 4 * (M * N + E * N * K + M * K),
                     dW: 4 * (M * K + M * N + E * N * K)};
      const ops = {
        forward: (p: Precision) => (s: number) => gpu.groupedGemm(sets[s].x, sets[s].w, sets[s].g, y, M, K, N, E, false, p),
        dX: (p: Precision) => (s: number) => gpu.groupedGemm(sets[s].dy, sets[s].w, sets[s].g, dx, M, N, K, E, true, p),
        dW: (p: Precision) => (s: number) => gpu.groupedGemmGradWeight(sets[s].x, sets[s].dy, sets[s].g, dw, M, K, N, E, p),
      };
      const base = baselines[`${M}x${K}x${N}`] ?? {};
      for (const [op, make] of Object.entries(ops)) {
        const ms = Object.fromEntries(PRECISIONS.map(p => [p, medianMs(make(p))]));
        const tf = (p: Precision) => flops / (ms[p] * 1e-3) / 1e12;
        const ratio = (p: Precision, key: string) => base[key] ? `${(tf(p) / (base[key] as number)).toFixed(2)}×` : '—';
        const gbps = bytes[op as keyof typeof bytes] / (ms.bf16 * 1e-3) / 1e9;
        console.log(`| ${name} (K=${K}→N=${N}) | ${M} | ${op} | ${PRECISIONS.map(p => tf(p).toFixed(1)).join(' | ')} | ` +
                    `${ratio('tf32', 'tf32')} | ${ratio('tf32', `bmm_tf32_${op}`)} | ${ratio('bf16', 'bf16')} | ` +
                    `${ratio('bf16', `bmm_bf16_${op}`)} | ${ratio('bf16', 'grouped_bf16')} | ` +
                    `${ratio('bf16', 'grouped_bf16_cast')} | ${ratio('highest', 'fp32')} | ${gbps.toFixed(0)}${copy ? ` (${(gbps / 1e3 / copy * 100).toFixed(0)}% of copy)` : ''} |`);
      }
      gpu.synchronize();
      for (const b of [y, dx, dw, ...sets.flatMap(s => [s.x, s.w, s.dy, s.g])]) b.free();
    }
  }
  hostTime();
}

/** Host microseconds a groupedGemm call costs from Node: 200 calls queued behind a busyWait, M = 1024. */
function hostTime() {
  const calls = 200, M = 1024, g = device(uniformGroupSizes(M, E));
  console.log(`\nhost time a forward call (µs; ${calls} calls, M=${M}): ` + SHAPES.map(({name, K, N}) => {
    const x = device(randomFloats(M * K)), w = device(randomFloats(E * N * K)), y = gpu.alloc(M * N * 4);
    const us = PRECISIONS.map(p => {
      const run = () => gpu.groupedGemm(x, w, g, y, M, K, N, E, false, p);
      run();
      gpu.busyWait(100_000);
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < calls; ++i) run();
      const t = Number(process.hrtime.bigint() - t0) / 1e3 / calls;
      gpu.synchronize();
      return `${p} ${t.toFixed(1)}`;
    });
    for (const b of [x, w, y]) b.free();
    return `${name}: ${us.join(', ')}`;
  }).join('; '));
  g.free();
}

main();
