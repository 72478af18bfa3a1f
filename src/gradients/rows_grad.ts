import {engine, GradConfig, Tensor, zeros} from '@tensorflow/tfjs-core';

import {MoeGatherRows, MoeScatterAddRows} from '../kernel_names';

/** out = x[index]  ⇒  dx = scatter-add of dy into the rows of x; index gets zeros. */
export const moeGatherRowsGradConfig: GradConfig = {
  kernelName: MoeGatherRows,
  inputsToSave: ['x', 'index'],
  gradFunc: (dy, [x, index]) => ({
    x: () => engine().runKernel(MoeScatterAddRows, {dy: dy as Tensor, index}, {numRows: x.shape[0]}) as Tensor,
    index: () => zeros(index.shape, 'float32'),
  }),
};

/** out[index[j]] += dy[j]  ⇒  d(dy) = dout[index]; index gets zeros. */
export const moeScatterAddRowsGradConfig: GradConfig = {
  kernelName: MoeScatterAddRows,
  inputsToSave: ['index'],
  gradFunc: (dout, [index]) => ({
    dy: () => engine().runKernel(MoeGatherRows, {x: dout as Tensor, index}) as Tensor,
    index: () => zeros(index.shape, 'float32'),
  }),
};
