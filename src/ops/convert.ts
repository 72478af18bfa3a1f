/** Argument checks shared by the ops: clear errors that name the argument and what was expected. */
import {DataType, dispose, Tensor, tensor, TensorLike, util} from '@tensorflow/tfjs-core';

/** An op argument: a tensor, or nested arrays / a TypedArray to make one from. */
export type Input = Tensor | TensorLike;

/**
 * Converts an op argument to a tensor of the given rank and dtype. TensorLike integer data must
 * hold integers. `created` lists the tensors made here, for the op to dispose.
 */
export function toTensor<T extends Tensor>(value: Input, name: string, op: string, dtype: 'float32' | 'int32',
                                          rank: number, shapeHint: string, created: Tensor[]): T {
  let t: Tensor;
  if (value instanceof Tensor) {
    t = value;
  } else {
    if (dtype === 'int32') {
      const flat = util.flatten(value as never) as unknown[];
      const bad = flat.findIndex(v => typeof v !== 'number' || !Number.isInteger(v));
      if (bad >= 0) {
        dispose(created);
        throw new TypeError(`${op}: ${name} must hold int32 integers, but element ${bad} is ${String(flat[bad])}`);
      }
    }
    t = tensor(value, undefined, dtype);
    created.push(t);
  }
  if (t.dtype !== dtype) {
    dispose(created);
    throw new TypeError(`${op}: ${name} must have dtype ${dtype}, but has dtype ${t.dtype as DataType}`);
  }
  if (t.rank !== rank) {
    dispose(created);
    throw new RangeError(`${op}: ${name} must be a rank-${rank} tensor ${shapeHint}, but has shape [${t.shape}]`);
  }
  return t as T;
}

/** Throws `message` (prefixed with the op) after disposing the tensors the op created. */
export function fail(op: string, message: string, created: Tensor[]): never {
  dispose(created);
  throw new RangeError(`${op}: ${message}`);
}
