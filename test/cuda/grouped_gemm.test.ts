/** CUDA grouped GEMM (forward, transposed weight, weight gradient) against float64 references. */
import {Precision} from '../../src/native/cuda_addon';
import {GroupedCase, randomFloats, randomGroupSizes, refGradWeight, refMoeFusedLinear, relativeError, spread} from '../helpers/reference';
import {describeGpu, floatsOf, gpu, poisoned, toDevice} from './device';

const TOLERANCE: Record<Precision, number> = {tf32: 1e-3, bf16: 1e-2, highest: 1e-5};

const CASES: GroupedCase[] = [
  {name: 'K=100 N=257, M not a multiple of any tile', M: 333, K: 100, N: 257, groups: spread(333, 5)},
  {name: 'K=257 N=1000', M: 200, K: 257, N: 1000, groups: spread(200, 3)},
  {name: 'K=1000 N=100', M: 150, K: 1000, N: 100, groups: spread(150, 4)},
  {name: 'K=3 N=5', M: 77, K: 3, N: 5, groups: spread(77, 2)},
  {name: 'empty experts', M: 130, K: 64, N: 72, groups: () => Int32Array.of(0, 50, 0, 0, 80, 0)},
  {name: 'one expert holds every row', M: 300, K: 128, N: 96, groups: () => Int32Array.of(0, 0, 300, 0)},
  {name: 'E=1', M: 257, K: 160, N: 144, groups: () => Int32Array.of(257)},
  {name: 'E=256', M: 1000, K: 64, N: 48, groups: spread(1000, 256)},
  // Plans too big for the blocks' shared memory (H100 / H200) are written by the plan kernel instead:
  // sm_80 tiles at E = 2000, the sm_90a bf16 forward at E = 1000 (the tf32 forward's ping-pong tiles still
  // fit that plan, up to the last 2 KB), every sm_90a path at E = 2000.
  {name: 'E=2000, the plan in global memory', M: 3000, K: 36, N: 40, groups: spread(3000, 2000)},
  {name: 'E=1000 K=64 N=256, the sm_90a plan in global memory', M: 3000, K: 64, N: 256, groups: spread(3000, 1000)},
  {name: 'E=2000 K=64 N=256, every sm_90a plan in global memory', M: 3000, K: 64, N: 256, groups: spread(3000, 2000)},
  {name: 'M=0', M: 0, K: 32, N: 16, groups: () => new Int32Array(4)},
  {name: 'LoRA A (N = r = 16)', M: 600, K: 512, N: 16, groups: spread(600, 8)},
  {name: 'LoRA B (K = r = 16)', M: 600, K: 16, N: 512, groups: spread(600, 8)},
  {name: 'LoRA r = 4', M: 300, K: 4, N: 200, groups: spread(300, 8)},
  {name: 'K=7 N=1001 (no 16-byte rows), empty experts', M: 500, K: 7, N: 1001, groups: () => Int32Array.of(0, 200, 0, 300)},
  // Shapes the sm_90a forward path takes on compute capability 9.0 (N ≥ 256, K ≥ 512, multiples of 4):
  // ragged row and column tiles, empty experts, one expert with most rows.
  {name: 'sm_90a forward: K=516 N=260, empty experts', M: 1001, K: 516, N: 260, groups: () => Int32Array.of(0, 400, 0, 1, 600, 0)},
  {name: 'sm_90a forward: K=1024 N=772', M: 1300, K: 1024, N: 772, groups: spread(1300, 6)},
  {name: 'sm_90a forward: K=2048 N=1024, skewed', M: 900, K: 2048, N: 1024, groups: () => Int32Array.of(3, 850, 0, 47)},
  // Shallow and wide (128 ≤ K < 512, N > 1024): sm_90a in tf32 only; a 4-column last tile, a partial depth stage.
  {name: 'sm_90a forward and dX in tf32: K=132 N=1284', M: 700, K: 132, N: 1284, groups: () => Int32Array.of(0, 300, 1, 399)},
  // tf32 dX takes sm_90a from K = 64 (w in registers); the forward stays on sm_80 there.
  {name: 'sm_90a dX in tf32: K=68 N=1100', M: 600, K: 68, N: 1100, groups: () => Int32Array.of(0, 250, 1, 349)},
  // Shapes the sm_90a dX and dW paths take in both precisions (also M ≥ 256 · E): ragged tiles and
  // depths, empty experts, one expert holding every row.
  {name: 'sm_90a dX, dW: K=516 N=260, empty experts', M: 2000, K: 516, N: 260, groups: () => Int32Array.of(0, 900, 0, 1, 1099)},
  {name: 'sm_90a dX, dW: K=1000 N=772, one expert holds every row', M: 1200, K: 1000, N: 772, groups: () => Int32Array.of(0, 1200, 0)},
];

describeGpu('CUDA grouped GEMM', () => {
  describe.each(['tf32', 'bf16', 'highest'] as Precision[])('%s', precision => {
    test.each(CASES)('$name', ({M, K, N, groups}) => {
      const g = groups();
      const E = g.length;
      const x = randomFloats(M * K), w = randomFloats(E * N * K), dy = randomFloats(M * N);
      const [dx, dw, dg, ddy] = [toDevice(x), toDevice(w), toDevice(g), toDevice(dy)];

      const y = poisoned(M * N);
      gpu.groupedGemm(dx, dw, dg, y, M, K, N, E, false, precision);
      expect(relativeError(floatsOf(y, M * N), refMoeFusedLinear(x, w, g, M, K, N))).toBeLessThanOrEqual(TOLERANCE[precision]);

      const yt = poisoned(M * N);  // w read as [E, K, N]
      gpu.groupedGemm(dx, dw, dg, yt, M, K, N, E, true, precision);
      expect(relativeError(floatsOf(yt, M * N), refMoeFusedLinear(x, w, g, M, K, N, true))).toBeLessThanOrEqual(TOLERANCE[precision]);

      const grad = poisoned(E * N * K);
      gpu.groupedGemmGradWeight(dx, ddy, dg, grad, M, K, N, E, precision);
      expect(relativeError(floatsOf(grad, E * N * K), refGradWeight(x, dy, g, K, N))).toBeLessThanOrEqual(TOLERANCE[precision]);
      for (const b of [dx, dw, dg, ddy, y, yt, grad]) b.free();
    });
  });

  test('dW is deterministic: two runs give identical bits', () => {
    const M = 4096, K = 256, N = 192, E = 8;
    const g = randomGroupSizes(M, E, [40, 1, 1, 1, 1, 1, 1, 1]);  // skewed: one expert holds most rows
    const [dx, ddy, dg] = [toDevice(randomFloats(M * K)), toDevice(randomFloats(M * N)), toDevice(g)];
    const run = () => {
      const out = poisoned(E * N * K);
      gpu.groupedGemmGradWeight(dx, ddy, dg, out, M, K, N, E, 'tf32');
      return Buffer.from(floatsOf(out, E * N * K).buffer);
    };
    expect(run().equals(run())).toBe(true);
  });

  test('bad arguments are errors raised before any launch', () => {
    const a = gpu.alloc(64 * 4), g = toDevice(Int32Array.of(4, 4));
    expect(() => gpu.groupedGemm(a, a, g, a, 8, 4, 2, 2, false, 'fp8' as Precision)).toThrow(/precision must be/);
    expect(() => gpu.groupedGemm(a, a, g, a, 8, 16, 2, 2, false, 'tf32')).toThrow(/x holds 256 bytes, but the sizes given need 512/);
    expect(() => gpu.groupedGemm(new Float32Array(8) as never, a, g, a, 2, 2, 2, 2, false, 'tf32')).toThrow(/x must be a DeviceBuffer/);
    const freed = gpu.alloc(16);
    freed.free();
    expect(() => gpu.groupedGemm(freed, a, g, a, 0, 0, 0, 2, false, 'tf32')).toThrow(/x was freed/);
    expect(() => gpu.groupedGemm(a, a, g, a, -1, 2, 2, 2, false, 'tf32')).toThrow(/M must be a non-negative integer/);
    gpu.synchronize();
  });
});
