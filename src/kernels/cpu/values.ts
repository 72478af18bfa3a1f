/** Zero-copy access to the TypedArrays the `cpu` backend stores. */
import type {TensorInfo} from '@tensorflow/tfjs-core';
import type {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

export function floats(backend: MathBackendCPU, t: TensorInfo): Float32Array {
  return backend.data.get(t.dataId)!.values as Float32Array;
}

export function ints(backend: MathBackendCPU, t: TensorInfo): Int32Array {
  return backend.data.get(t.dataId)!.values as Int32Array;
}
