/** CUDA grouped GEMM with NF4 experts (decoded inside the GEMM) and NF4 dequantisation, against float64 references. */
import {Precision} from '../../src/native/cuda_addon';
import {dequantiseNf4, quantiseNf4, stackNf4} from '../../src/quant/nf4';
import {GroupedCase, randomFloats, refMoeFusedLinear, relativeError, spread} from '../helpers/reference';
import {describeGpu, floatsOf, gpu, poisoned, toDevice} from './device';

const TOLERANCE: Record<Precision, number> = {tf32: 1e-3, bf16: 1e-2, highest: 1e-5};

// (rows, cols) of each expert's weight as stored: [N, K] forward, [K, N] transposed (dX).
const CASES: Array<GroupedCase & {blocksize: number}> = [
  {name: 'K=256 N=192, aligned words, blocksize 64', M: 300, K: 256, N: 192, groups: spread(300, 4), blocksize: 64},
  {name: 'K=100 N=130: rows off 8-code boundaries', M: 257, K: 100, N: 130, groups: spread(257, 3), blocksize: 32},
  {name: 'empty experts, blocksize 128', M: 200, K: 512, N: 136, groups: () => Int32Array.of(0, 150, 0, 50, 0), blocksize: 128},
  {name: 'one expert holds every row, blocksize 4096', M: 333, K: 768, N: 64, groups: () => Int32Array.of(0, 333), blocksize: 4096},
  {name: 'thin N = 16', M: 180, K: 256, N: 16, groups: spread(180, 5), blocksize: 64},
  {name: 'E = 1, odd N·K', M: 37, K: 33, N: 7, groups: () => Int32Array.of(37), blocksize: 32},
  {name: 'M = 0', M: 0, K: 64, N: 64, groups: () => new Int32Array(3), blocksize: 64},
  // Shapes the sm_90a forward takes on compute capability 9.0 (N ≥ 256, K a multiple of 4 blocks); dX stays on sm_80.
  {name: 'sm_90a: K=512 N=264, partial column tile', M: 700, K: 512, N: 264, groups: spread(700, 3), blocksize: 64},
  {name: 'sm_90a: empty experts, blocksize 32', M: 400, K: 128, N: 256, groups: () => Int32Array.of(0, 250, 0, 150), blocksize: 32},
  {name: 'sm_90a: blocksize 256', M: 520, K: 1024, N: 512, groups: () => Int32Array.of(0, 520, 0), blocksize: 256},
  {name: 'sm_90a: more tiles than SMs, the ring runs on across tiles', M: 18000, K: 128, N: 256, groups: spread(18000, 6), blocksize: 32},
  {name: 'blocks across rows (4096 > K): the sm_80 path', M: 520, K: 1024, N: 512, groups: () => Int32Array.of(0, 520, 0), blocksize: 4096},
];

/** E experts of rows × cols, each quantised on its own (as bitsandbytes' Params4bit), and their float values. */
function nf4Experts(E: number, rows: number, cols: number, blocksize: number) {
  const parts = Array.from({length: E}, () => quantiseNf4(randomFloats(rows * cols), {blocksize, shape: [rows, cols]}));
  const t = E === 1 ? parts[0] : stackNf4(parts);
  const values = new Float32Array(E * rows * cols);
  parts.forEach((p, e) => values.set(dequantiseNf4(p), e * rows * cols));
  return {packed: t.packed, absmax: t.absmax as Float32Array, values};
}

function toDeviceBytes(bytes: Uint8Array) {
  const b = gpu.alloc(Math.max(bytes.length, 1));
  gpu.upload(b, bytes);
  return b;
}

describeGpu('CUDA grouped GEMM with NF4 experts', () => {
  describe.each(['tf32', 'bf16', 'highest'] as Precision[])('%s', precision => {
    test.each(CASES)('$name', ({M, K, N, groups, blocksize}) => {
      const g = groups();
      const E = g.length;
      const x = randomFloats(M * K);
      for (const transpose of [false, true]) {
        const [rows, cols] = transpose ? [K, N] : [N, K];
        const w = nf4Experts(E, rows, cols, blocksize);
        const [dx, dp, da, dg] = [toDevice(x), toDeviceBytes(w.packed), toDevice(w.absmax), toDevice(g)];
        const y = poisoned(M * N);
        gpu.groupedGemmNf4(dx, dp, da, dg, y, M, K, N, E, blocksize, transpose, precision);
        const ref = refMoeFusedLinear(x, w.values, g, M, K, N, transpose);
        const out = floatsOf(y, M * N);
        expect(out.every(Number.isFinite)).toBe(true);
        if (M > 0) expect(relativeError(out, ref)).toBeLessThanOrEqual(TOLERANCE[precision]);
        for (const b of [dx, dp, da, dg, y]) b.free();
      }
    });
  });

  test('nf4Dequantize reproduces dequantiseNf4 bit for bit', () => {
    for (const [E, n, blocksize] of [[5, 64 * 37, 64], [1, 1001, 32], [3, 4096 + 64, 4096]]) {
      const w = nf4Experts(E, 1, n, blocksize);
      const [dp, da, out] = [toDeviceBytes(w.packed), toDevice(w.absmax), poisoned(E * n)];
      gpu.nf4Dequantize(dp, da, E, n, blocksize, out);
      const got = floatsOf(out, E * n);
      expect(Buffer.from(got.buffer).equals(Buffer.from(w.values.buffer))).toBe(true);
      for (const b of [dp, da, out]) b.free();
    }
  });

  test('bad arguments are errors raised before any launch', () => {
    const a = gpu.alloc(4096), g = toDevice(Int32Array.of(4, 4));
    expect(() => gpu.groupedGemmNf4(a, a, a, g, a, 8, 4, 4, 2, 48, false, 'tf32')).toThrow(/blocksize must be a power of two in \[32, 4096\], got 48/);
    expect(() => gpu.groupedGemmNf4(a, a, a, g, a, 8, 3, 3, 2, 64, false, 'tf32')).toThrow(/need an even number of values each, got 9/);
    expect(() => gpu.groupedGemmNf4(a, gpu.alloc(7), a, g, a, 8, 4, 4, 2, 64, false, 'tf32')).toThrow(/packed holds 7 bytes, but the sizes given need 16/);
    expect(() => gpu.nf4Dequantize(a, a, 2, 1 << 20, 64, a)).toThrow(/packed holds 4096 bytes, but the sizes given need 1048576/);
    gpu.synchronize();
  });
});
