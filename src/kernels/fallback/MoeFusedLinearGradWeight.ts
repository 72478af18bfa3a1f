import {KernelBackend, KernelFunc, matMul, slice, stack, tidy, zeros} from '@tensorflow/tfjs-core';

import {MoeFusedLinearGradWeightInputs} from '../../kernel_names';
import {checkGroupSizes} from '../group_sizes';
import {asTensor, hostInts} from './tensors';

/** dw[e] = dy_eᵀ · x_e as one tf.matMul per expert (zeros for empty experts). */
export const moeFusedLinearGradWeightFallback: KernelFunc = ({inputs, backend}) => {
  const {x, dy, groupSizes} = inputs as MoeFusedLinearGradWeightInputs;
  const [M, K] = x.shape;
  const N = dy.shape[1];
  const sizes = hostInts(backend as KernelBackend, groupSizes);
  checkGroupSizes(sizes, M);
  if (sizes.length === 0) return zeros([0, N, K]);
  return tidy(() => {
    const xs = asTensor(x), dys = asTensor(dy);
    let row = 0;
    const parts = Array.from(sizes, size => {
      const part = size === 0 ? zeros([N, K])
                              : matMul(slice(dys, [row, 0], [size, N]), slice(xs, [row, 0], [size, K]), true, false);
      row += size;
      return part;
    });
    return stack(parts);
  });
};
