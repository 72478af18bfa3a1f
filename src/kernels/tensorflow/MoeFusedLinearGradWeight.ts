import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';

import {MoeFusedLinearGradWeight, MoeFusedLinearGradWeightInputs} from '../../kernel_names';
import {runTfOp} from './backend';

export const moeFusedLinearGradWeightTensorflow: KernelFunc = ({inputs, backend}) => {
  const {x, dy, groupSizes} = inputs as MoeFusedLinearGradWeightInputs;
  return runTfOp(backend, 'MoeFusedLinearGradWeight', [x, dy, groupSizes]);
};

export const moeFusedLinearGradWeightTensorflowConfig: KernelConfig = {
  kernelName: MoeFusedLinearGradWeight,
  backendName: 'tensorflow',
  kernelFunc: moeFusedLinearGradWeightTensorflow,
};
