import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';

import {MoeFusedLinearNf4, MoeFusedLinearNf4Attrs, MoeFusedLinearNf4Inputs} from '../../kernel_names';
import {NodeBackend, runTfOp} from './backend';

/** The same native NF4 grouped GEMM, as the TensorFlow op MoeFusedLinearNf4. */
export const moeFusedLinearNf4Tensorflow: KernelFunc = ({inputs, backend, attrs}) => {
  const {x, packed, absmax, groupSizes} = inputs as MoeFusedLinearNf4Inputs;
  const {N, K, blocksize, transposeWeight} = attrs as MoeFusedLinearNf4Attrs;
  const {TF_ATTR_INT: int, TF_ATTR_BOOL: bool} = (backend as NodeBackend).binding;
  return runTfOp(backend, 'MoeFusedLinearNf4', [x, packed, absmax, groupSizes], [
    {name: 'n', type: int, value: N}, {name: 'k', type: int, value: K}, {name: 'blocksize', type: int, value: blocksize},
    {name: 'transpose_weight', type: bool, value: transposeWeight}]);
};

export const moeFusedLinearNf4TensorflowConfig: KernelConfig = {
  kernelName: MoeFusedLinearNf4,
  backendName: 'tensorflow',
  kernelFunc: moeFusedLinearNf4Tensorflow,
};
