/** The kernels of the `cpu` backend (cc/addon.cc), loaded on first use. */
import {loadAddon} from './load';

export interface CpuAddon {
  version: string;
  /** y = x · w[g]ᵀ, or x · w[g] when transposeWeight; x [M, K], y [M, N]. Writes y in place. */
  moeFusedLinear(x: Float32Array, weight: Float32Array, groupSizes: Int32Array, y: Float32Array,
                 M: number, K: number, N: number, E: number, transposeWeight: boolean): void;
  /** dw[e] = dy_eᵀ · x_e; dw [E, N, K]. Writes dw in place. */
  moeFusedLinearGradWeight(x: Float32Array, dy: Float32Array, groupSizes: Int32Array, dw: Float32Array,
                           M: number, K: number, N: number, E: number): void;
  /**
   * NF4 weights W [E, N, K] (packed int32 words, float32 absmax per block, cc/nf4_linear.h):
   * y = x · W[g]ᵀ (x [M, K], y [M, N]), or x · W[g] when transposeWeight (x [M, N], y [M, K]).
   * Writes y in place.
   */
  moeNf4Linear(x: Float32Array, packed: Int32Array, absmax: Float32Array, groupSizes: Int32Array, y: Float32Array,
               M: number, N: number, K: number, E: number, blocksize: number, transposeWeight: boolean): void;
  /** Threads used inside each call; returns the new count. */
  setNumThreads(n: number): number;
  numThreads(): number;
  /** "avx512", "avx2" or "generic". */
  isa(): string;
  /** Selects a lower instruction set; false when the CPU or the build lacks it. */
  setIsa(isa: string): boolean;
}

let cached: CpuAddon | undefined;

export function cpuAddon(): CpuAddon {
  return cached ??= loadAddon<CpuAddon>('moe_fused', 'the cpu backend');
}
