import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';
import type {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

import {MoeFusedLinearGradWeight, MoeFusedLinearGradWeightInputs} from '../../kernel_names';
import {cpuAddon} from '../../native/cpu_addon';
import {floats, ints, outputFloats} from './values';

export const moeFusedLinearGradWeightCpu: KernelFunc = ({inputs, backend}) => {
  const {x, dy, groupSizes} = inputs as MoeFusedLinearGradWeightInputs;
  const cpu = backend as MathBackendCPU;
  const [M, K] = x.shape;
  const N = dy.shape[1];
  const E = groupSizes.shape[0];
  const dw = outputFloats(E * N * K);
  cpuAddon().moeFusedLinearGradWeight(floats(cpu, x), floats(cpu, dy), ints(cpu, groupSizes), dw, M, K, N, E);
  return cpu.makeTensorInfo([E, N, K], 'float32', dw);
};

export const moeFusedLinearGradWeightCpuConfig: KernelConfig = {
  kernelName: MoeFusedLinearGradWeight,
  backendName: 'cpu',
  kernelFunc: moeFusedLinearGradWeightCpu,
};
