import {engine, GradConfig, Tensor, zeros} from '@tensorflow/tfjs-core';

import {MoeFusedLinear, MoeFusedLinearAttrs, MoeFusedLinearGradWeight} from '../kernel_names';

/**
 * y = x · W[g]ᵀ (W [E, N, K]):  dx = dy · W[g]   and  dW[e] = dy_eᵀ · x_e   [E, N, K]
 * y = x · W[g]  (W [E, K, N]):  dx = dy · W[g]ᵀ  and  dW[e] = x_eᵀ · dy_e   [E, K, N]
 * groupSizes is integer data: its gradient is zeros (needed when it was computed on the tape).
 */
export const moeFusedLinearGradConfig: GradConfig = {
  kernelName: MoeFusedLinear,
  inputsToSave: ['x', 'weight', 'groupSizes'],
  gradFunc: (dy, saved, attrs) => {
    const [x, weight, groupSizes] = saved;
    const {transposeWeight} = attrs as MoeFusedLinearAttrs;
    const run = (kernel: string, inputs: Record<string, Tensor>, kernelAttrs = {}) =>
        engine().runKernel(kernel, inputs, kernelAttrs) as Tensor;
    return {
      x: () => run(MoeFusedLinear, {x: dy as Tensor, weight, groupSizes}, {transposeWeight: !transposeWeight}),
      weight: () => transposeWeight ? run(MoeFusedLinearGradWeight, {x: dy as Tensor, dy: x, groupSizes})
                                    : run(MoeFusedLinearGradWeight, {x, dy: dy as Tensor, groupSizes}),
      groupSizes: () => zeros(groupSizes.shape, 'float32'),
    };
  },
};
