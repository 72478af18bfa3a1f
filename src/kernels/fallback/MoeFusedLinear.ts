import {KernelBackend, concat, KernelFunc, matMul, reshape, slice, Tensor, tidy, zeros} from '@tensorflow/tfjs-core';

import {MoeFusedLinearAttrs, MoeFusedLinearInputs} from '../../kernel_names';
import {checkGroupSizes} from '../group_sizes';
import {asTensor, hostInts} from './tensors';

/**
 * The grouped GEMM as one tf.matMul per non-empty expert, for backends without a native kernel.
 * Reads groupSizes on the host to slice x.
 */
export const moeFusedLinearFallback: KernelFunc = ({inputs, backend, attrs}) => {
  const {x, weight, groupSizes} = inputs as MoeFusedLinearInputs;
  const {transposeWeight} = attrs as MoeFusedLinearAttrs;
  const [M, K] = x.shape;
  const [, rows, cols] = weight.shape;
  const sizes = hostInts(backend as KernelBackend, groupSizes);
  checkGroupSizes(sizes, M);
  return tidy(() => {
    const xs = asTensor(x), w = asTensor(weight);
    const parts: Tensor[] = [];
    let row = 0;
    sizes.forEach((size, e) => {
      if (size === 0) return;
      const we = reshape(slice(w, [e, 0, 0], [1, rows, cols]), [rows, cols]);
      parts.push(matMul(slice(xs, [row, 0], [size, K]), we, false, !transposeWeight));
      row += size;
    });
    return parts.length > 0 ? concat(parts, 0) : zeros([M, transposeWeight ? cols : rows]);
  });
};
