/** The part of tfjs-node's NodeJSKernelBackend these kernels use (tfjs-node is an optional peer). */
import type {Tensor, TensorInfo} from '@tensorflow/tfjs-core';

import {ensureTfOps} from '../../native/tf_addon';

export interface TfOpAttr {
  name: string;
  type: number;
  value: boolean | number | string | number[];
}

export interface NodeBackend {
  binding: {TF_ATTR_BOOL: number; TF_ATTR_INT: number};
  executeSingleOutput(opName: string, attrs: TfOpAttr[], inputs: TensorInfo[]): Tensor;
}

/**
 * Runs one of our TensorFlow ops (cc/tf/moe_fused_tf.cc) on tfjs-node. A kernel failure comes
 * back as "Invalid TF_Status: 3\nMessage: <text>"; the error keeps only <text>.
 */
export function runTfOp(backend: unknown, opName: string, inputs: TensorInfo[], attrs: TfOpAttr[] = []): Tensor {
  ensureTfOps();
  try {
    return (backend as NodeBackend).executeSingleOutput(opName, attrs, inputs);
  } catch (e) {
    const match = /^Invalid TF_Status: \d+\s*Message: ([^]*)$/.exec((e as Error).message);
    if (match) throw new RangeError(match[1].trim());
    throw e;
  }
}
