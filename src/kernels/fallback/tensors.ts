/** Tensors and host values inside the pure-tfjs kernels, which compose stock tfjs ops. */
import {engine, KernelBackend, Tensor, TensorInfo} from '@tensorflow/tfjs-core';

/** The tensor behind a kernel input; callers run inside tidy, which disposes any wrapper made here. */
export function asTensor(t: TensorInfo): Tensor {
  return t instanceof Tensor ? t : engine().makeTensorFromTensorInfo(t);
}

/** The values of a small int32 tensor, copied to the host (a GPU backend reads them back). */
export function hostInts(backend: KernelBackend, t: TensorInfo): Int32Array {
  return Int32Array.from(backend.readSync(t.dataId) as ArrayLike<number>);
}
