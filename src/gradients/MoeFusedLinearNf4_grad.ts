import {engine, GradConfig, Tensor, zeros} from '@tensorflow/tfjs-core';

import {MoeFusedLinearNf4, MoeFusedLinearNf4Attrs} from '../kernel_names';

const frozen = (input: string) => (): Tensor => {
  throw new Error(`moeFusedLinearNf4: the NF4 weight (${input}) is frozen and has no gradient; ` +
                  'train a LoRA adapter on top of it (or dequantise it into a float weight) instead');
};

/**
 * y = x · W[g]ᵀ:  dx = dy · W[g]   (and y = x · W[g]: dx = dy · W[g]ᵀ), the same kernel with the
 * other direction. The 4-bit weight is a frozen base: asking for its gradient is an error.
 */
export const moeFusedLinearNf4GradConfig: GradConfig = {
  kernelName: MoeFusedLinearNf4,
  inputsToSave: ['packed', 'absmax', 'groupSizes'],
  gradFunc: (dy, saved, attrs) => {
    const [packed, absmax, groupSizes] = saved;
    const {transposeWeight} = attrs as MoeFusedLinearNf4Attrs;
    return {
      x: () => engine().runKernel(MoeFusedLinearNf4, {x: dy as Tensor, packed, absmax, groupSizes},
                                  {...attrs, transposeWeight: !transposeWeight}) as Tensor,
      packed: frozen('packed'),
      absmax: frozen('absmax'),
      groupSizes: () => zeros(groupSizes.shape, 'float32'),
    };
  },
};
