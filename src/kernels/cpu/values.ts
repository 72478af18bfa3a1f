/** Zero-copy access to the TypedArrays the `cpu` backend stores, and output arrays for them. */
import type {TensorInfo} from '@tensorflow/tfjs-core';
import type {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

export function floats(backend: MathBackendCPU, t: TensorInfo): Float32Array {
  return backend.data.get(t.dataId)!.values as Float32Array;
}

export function ints(backend: MathBackendCPU, t: TensorInfo): Int32Array {
  return backend.data.get(t.dataId)!.values as Int32Array;
}

/**
 * A Float32Array with its own ArrayBuffer and no zero-fill, for an output that a native kernel
 * overwrites completely: the allocator may hand back pages of an earlier output, where
 * `new Float32Array(n)` would zero them (or fault in fresh zeroed pages) first.
 */
export function outputFloats(n: number): Float32Array {
  const bytes = Buffer.allocUnsafeSlow(n * Float32Array.BYTES_PER_ELEMENT);
  return new Float32Array(bytes.buffer, bytes.byteOffset, n);
}
