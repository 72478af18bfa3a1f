/**
 * The cpu addon called directly: every instruction set against float64 references with outputs
 * poisoned before each call, thread counts, determinism, and argument checks.
 */
import {cpuAddon} from '../src';
import {randomFloats, randomGroupSizes, refGradWeight, refMoeFusedLinear, relativeError} from './helpers/reference';

const addon = cpuAddon();
const best = addon.isa();
const ISAS = ['avx512', 'avx2', 'generic'].filter(isa => {
  const ok = addon.setIsa(isa);
  addon.setIsa(best);
  return ok;
});

const SHAPES: Array<[M: number, K: number, N: number, E: number]> = [
  [37, 257, 5, 3], [41, 3, 1000, 4], [50, 1, 7, 2], [130, 100, 33, 5], [300, 64, 64, 1], [20, 16, 768, 3],
  [33, 2048, 16, 2], [97, 63, 65, 6], [0, 8, 8, 2],
];

const poisoned = (n: number) => new Float32Array(n).fill(NaN);

afterEach(() => addon.setIsa(best));

describe.each(ISAS)('%s kernels', isa => {
  beforeEach(() => expect(addon.setIsa(isa)).toBe(true));

  test.each(SHAPES)('M=%i K=%i N=%i E=%i', (M, K, N, E) => {
    const g = randomGroupSizes(M, E);
    const x = randomFloats(M * K), w = randomFloats(E * N * K), dy = randomFloats(M * N);
    const y = poisoned(M * N);
    addon.moeFusedLinear(x, w, g, y, M, K, N, E, false);
    expect(relativeError(y, refMoeFusedLinear(x, w, g, M, K, N))).toBeLessThanOrEqual(1e-5);
    const yt = poisoned(M * N);
    addon.moeFusedLinear(x, w, g, yt, M, K, N, E, true);  // w read as [E, K, N]
    expect(relativeError(yt, refMoeFusedLinear(x, w, g, M, K, N, true))).toBeLessThanOrEqual(1e-5);
    const dw = poisoned(E * N * K);
    addon.moeFusedLinearGradWeight(x, dy, g, dw, M, K, N, E);
    expect(relativeError(dw, refGradWeight(x, dy, g, K, N))).toBeLessThanOrEqual(1e-5);
  });
});

test('results do not depend on the thread count, and dW is bitwise deterministic', () => {
  const M = 700, K = 130, N = 90, E = 5;
  const g = randomGroupSizes(M, E), x = randomFloats(M * K), w = randomFloats(E * N * K), dy = randomFloats(M * N);
  const run = () => {
    const y = poisoned(M * N), dx = poisoned(M * K), dw = poisoned(E * N * K);
    addon.moeFusedLinear(x, w, g, y, M, K, N, E, false);
    addon.moeFusedLinear(dy, w, g, dx, M, N, K, E, true);
    addon.moeFusedLinearGradWeight(x, dy, g, dw, M, K, N, E);
    return [y, dx, dw];
  };
  const threads = addon.numThreads();
  try {
    const first = run(), again = run();
    addon.setNumThreads(1);
    const single = run();
    for (let i = 0; i < 3; ++i) {
      expect(Buffer.from(again[i].buffer).equals(Buffer.from(first[i].buffer))).toBe(true);
      expect(Buffer.from(single[i].buffer).equals(Buffer.from(first[i].buffer))).toBe(true);
    }
  } finally {
    addon.setNumThreads(threads);
  }
});

test('bad arguments are JS exceptions raised before any memory is touched', () => {
  const x = new Float32Array(6), w = new Float32Array(2 * 3 * 3), g = Int32Array.of(1, 1), y = new Float32Array(6);
  expect(() => addon.moeFusedLinear(x, w, g, y, 2, 3, 3, 2, false)).not.toThrow();
  expect(() => addon.moeFusedLinear(new Float64Array(6) as never, w, g, y, 2, 3, 3, 2, false)).toThrow(/x must be a Float32Array/);
  expect(() => addon.moeFusedLinear(x, w, new Float32Array(2) as never, y, 2, 3, 3, 2, false)).toThrow(/groupSizes must be a Int32Array/);
  expect(() => addon.moeFusedLinear(x, w, g, new Float32Array(5), 2, 3, 3, 2, false)).toThrow(/output has 5 elements, expected 6/);
  expect(() => addon.moeFusedLinear(x, w, g, y, 2, 3, 3, 3, false)).toThrow(/weight has 18 elements, expected 27/);
  expect(() => addon.moeFusedLinear(x, w, Int32Array.of(3, -1), y, 2, 3, 3, 2, false)).toThrow(/non-negative/);
  expect(() => addon.moeFusedLinear(x, w, g, y, -2, 3, 3, 2, false)).toThrow(/M must be a non-negative integer/);
  expect(() => addon.moeFusedLinear(x, w, g, y, 2 ** 40, 2 ** 40, 3, 2, false)).toThrow(/x has 6 elements/);
  expect(() => addon.moeFusedLinearGradWeight(x, y, g, new Float32Array(17), 2, 3, 3, 2)).toThrow(/output has 17 elements/);
  expect(() => addon.setNumThreads(0)).toThrow(/numThreads/);
  expect(addon.setIsa('sse9')).toBe(false);
});
