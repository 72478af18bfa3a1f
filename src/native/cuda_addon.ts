/**
 * The CUDA kernels (cc/cuda_addon.cc, cuda/*.cu) over device memory owned by JS. Built where
 * nvcc was found at install time. Rules: a DeviceBuffer owns its memory until free() (or until
 * it is garbage-collected); all work runs in order on one stream; upload/download return when
 * the copy is done, launches return at once, synchronize() throws the first asynchronous error.
 */
import * as fs from 'fs';
import * as path from 'path';

import {loadAddon, packageRoot} from './load';

export type Precision = 'tf32' | 'bf16' | 'highest';

export interface DeviceBuffer {
  readonly bytes: number;
  readonly freed: boolean;
  free(): void;
}

export interface CudaEvent {
  /** Milliseconds from `start` to this event (waits for this event). */
  elapsedMs(start: CudaEvent): number;
}

type Host = Float32Array | Int32Array | Uint8Array;

export interface CudaAddon {
  version: string;
  /** Number of CUDA devices; 0 without a driver or a device. */
  deviceCount(): number;
  deviceInfo(): {name: string; computeCapability: string; multiProcessors: number; memoryBytes: number};
  alloc(bytes: number): DeviceBuffer;
  upload(dst: DeviceBuffer, src: Host, dstOffsetBytes?: number): void;
  download(src: DeviceBuffer, dst: Host, srcOffsetBytes?: number): void;
  synchronize(): void;
  /**
   * Keeps the stream busy for `microseconds` (≤ 10 s) without touching memory: work queued after
   * it then starts without the host's launch latency, so events around it time the GPU alone.
   */
  busyWait(microseconds: number): void;
  /** An event recorded on the stream now. */
  newEvent(): CudaEvent;
  /** y = x · w[g]ᵀ (w [E, N, K]), or x · w[g] (w [E, K, N]) when transposeWeight. */
  groupedGemm(x: DeviceBuffer, w: DeviceBuffer, groupSizes: DeviceBuffer, y: DeviceBuffer, M: number, K: number,
              N: number, E: number, transposeWeight: boolean, precision: Precision): void;
  /**
   * groupedGemm with w in NF4: packed holds each expert's ⌈N·K/2⌉ code bytes (nf4.ts layout; upload
   * the Uint8Array, or int32 words), absmax ⌈N·K/blocksize⌉ float32 per expert; decoded inside the GEMM.
   */
  groupedGemmNf4(x: DeviceBuffer, packed: DeviceBuffer, absmax: DeviceBuffer, groupSizes: DeviceBuffer, y: DeviceBuffer,
                 M: number, K: number, N: number, E: number, blocksize: number, transposeWeight: boolean,
                 precision: Precision): void;
  /** The NF4 experts as float32: out [E, n], n values each. */
  nf4Dequantize(packed: DeviceBuffer, absmax: DeviceBuffer, E: number, n: number, blocksize: number, out: DeviceBuffer): void;
  /** dw[e] = dy_eᵀ · x_e, dw [E, N, K]. */
  groupedGemmGradWeight(x: DeviceBuffer, dy: DeviceBuffer, groupSizes: DeviceBuffer, dw: DeviceBuffer, M: number,
                        K: number, N: number, E: number, precision: Precision): void;
  routeTopK(logits: DeviceBuffer, T: number, E: number, k: number, normalize: boolean, weights: DeviceBuffer,
            expertIds: DeviceBuffer): void;
  sortByExpert(expertIds: DeviceBuffer, R: number, E: number, k: number, groupSizes: DeviceBuffer,
               sortIndex: DeviceBuffer, inverseSortIndex: DeviceBuffer, tokenIndex: DeviceBuffer): void;
  gatherRows(x: DeviceBuffer, rows: number, H: number, index: DeviceBuffer, R: number, out: DeviceBuffer): void;
  combineRows(y: DeviceBuffer, H: number, inverseSortIndex: DeviceBuffer, weights: DeviceBuffer, T: number, k: number,
              out: DeviceBuffer): void;
  siluMul(gate: DeviceBuffer, up: DeviceBuffer, n: number, h: DeviceBuffer): void;
}

let cached: CudaAddon | undefined;

/** The CUDA addon; throws if it was not built (no nvcc at install time) or is stale. */
export function cudaAddon(): CudaAddon {
  return cached ??= loadAddon<CudaAddon>('moe_fused_cuda', 'CUDA');
}

/** Whether build/Release/moe_fused_cuda.node exists (it is built only where nvcc was found). */
export function cudaAddonBuilt(): boolean {
  return fs.existsSync(path.join(packageRoot, 'build', 'Release', 'moe_fused_cuda.node'));
}
