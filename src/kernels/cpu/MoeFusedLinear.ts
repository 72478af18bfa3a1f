import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';
import type {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

import {MoeFusedLinear, MoeFusedLinearAttrs, MoeFusedLinearInputs} from '../../kernel_names';
import {cpuAddon} from '../../native/cpu_addon';
import {floats, ints, outputFloats} from './values';

/** The native grouped GEMM, reading and writing the backend's arrays in place. */
export const moeFusedLinearCpu: KernelFunc = ({inputs, backend, attrs}) => {
  const {x, weight, groupSizes} = inputs as MoeFusedLinearInputs;
  const {transposeWeight} = attrs as MoeFusedLinearAttrs;
  const cpu = backend as MathBackendCPU;
  const [M, K] = x.shape;
  const [E, rows, cols] = weight.shape;
  const N = transposeWeight ? cols : rows;
  const y = outputFloats(M * N);
  cpuAddon().moeFusedLinear(floats(cpu, x), floats(cpu, weight), ints(cpu, groupSizes), y, M, K, N, E,
                            transposeWeight);
  return cpu.makeTensorInfo([M, N], 'float32', y);
};

export const moeFusedLinearCpuConfig: KernelConfig = {
  kernelName: MoeFusedLinear,
  backendName: 'cpu',
  kernelFunc: moeFusedLinearCpu,
};
