import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';

import {MoeFusedLinear, MoeFusedLinearAttrs, MoeFusedLinearInputs} from '../../kernel_names';
import {NodeBackend, runTfOp} from './backend';

/** The same native grouped GEMM, as the TensorFlow op MoeFusedLinear. */
export const moeFusedLinearTensorflow: KernelFunc = ({inputs, backend, attrs}) => {
  const {x, weight, groupSizes} = inputs as MoeFusedLinearInputs;
  const {transposeWeight} = attrs as MoeFusedLinearAttrs;
  const boolType = (backend as NodeBackend).binding.TF_ATTR_BOOL;
  return runTfOp(backend, 'MoeFusedLinear', [x, weight, groupSizes],
                 [{name: 'transpose_weight', type: boolType, value: transposeWeight}]);
};

export const moeFusedLinearTensorflowConfig: KernelConfig = {
  kernelName: MoeFusedLinear,
  backendName: 'tensorflow',
  kernelFunc: moeFusedLinearTensorflow,
};
