/**
 * NF4 experts on the GPU (`npm run bench:gpu:nf4`): the forward grouped GEMM with the weight
 * decoded inside the GEMM (groupedGemmNf4, bf16 operands) against dequantise-then-GEMM
 * (nf4Dequantize into a float32 copy, then the bf16 GEMM) and against the bf16 GEMM on float32
 * weights that are already there (4 B/weight in memory). Qwen3-30B-A3B expert shapes, E = 128,
 * uniform routing, blocksize 64; medians of 25 event-timed runs after warm-up, three input sets.
 */
import {device, gpu, medianMs, SETS} from './gpu_timing';
import {randomFloats, uniformGroupSizes} from './inputs';

const E = 128, BLOCK = 64;
const SHAPES = [{name: 'gate/up', K: 2048, N: 768}, {name: 'down', K: 768, N: 2048}];
const ROWS = (process.env.BENCH_ROWS ?? '1024,4096,16384,65536').split(',').map(Number);

function main() {
  const info = gpu.deviceInfo();
  console.log(`# NF4 grouped GEMM (forward, bf16 operands) on ${info.name}, E = ${E}, blocksize ${BLOCK}, ${new Date().toISOString().slice(0, 10)}`);
  console.log('| shape | M | fused NF4 ms (TFLOP/s) | dequantise + GEMM ms | bf16 GEMM, float weight ms (TFLOP/s) | fused ÷ dequantise+GEMM | fused ÷ float-weight |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const {name, K, N} of SHAPES) {
    const n = N * K;
    // Any bytes are valid NF4 codes; absmax as a trained weight's (positive, ~0.05).
    const weights = Array.from({length: SETS}, () => ({
      packed: device(Uint8Array.from({length: E * n / 2}, () => Math.floor(Math.random() * 256))),
      absmax: device(randomFloats(E * n / BLOCK, 0.02, 0.08)),
      float: gpu.alloc(E * n * 4),
    }));
    for (const w of weights) gpu.nf4Dequantize(w.packed, w.absmax, E, n, BLOCK, w.float);
    const scratch = gpu.alloc(E * n * 4);
    for (const M of ROWS) {
      const g = uniformGroupSizes(M, E);
      const xs = Array.from({length: SETS}, () => device(randomFloats(M * K))), dg = device(g), y = gpu.alloc(M * N * 4);
      const fused = medianMs(s => gpu.groupedGemmNf4(xs[s], weights[s].packed, weights[s].absmax, dg, y, M, K, N, E, BLOCK, false, 'bf16'));
      const dequant = medianMs(s => {
        gpu.nf4Dequantize(weights[s].packed, weights[s].absmax, E, n, BLOCK, scratch);
        gpu.groupedGemm(xs[s], scratch, dg, y, M, K, N, E, false, 'bf16');
      });
      const float = medianMs(s => gpu.groupedGemm(xs[s], weights[s].float, dg, y, M, K, N, E, false, 'bf16'));
      const tf = (ms: number) => (2 * M * N * K / (ms * 1e-3) / 1e12).toFixed(1);
      console.log(`| ${name} (K=${K}→N=${N}) | ${M} | ${fused.toFixed(3)} (${tf(fused)}) | ${dequant.toFixed(3)} | ` +
                  `${float.toFixed(3)} (${tf(float)}) | ${(dequant / fused).toFixed(2)}× | ${(float / fused).toFixed(2)}× |`);
      gpu.synchronize();
      for (const b of [...xs, dg, y]) b.free();
    }
    gpu.synchronize();
    for (const b of [scratch, ...weights.flatMap(w => [w.packed, w.absmax, w.float])]) b.free();
  }
}

main();
