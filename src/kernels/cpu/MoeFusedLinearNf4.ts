import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';
import type {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

import {MoeFusedLinearNf4, MoeFusedLinearNf4Attrs, MoeFusedLinearNf4Inputs} from '../../kernel_names';
import {cpuAddon} from '../../native/cpu_addon';
import {floats, ints, outputFloats} from './values';

/** The native NF4 grouped GEMM, decoding the weight panel by panel from the backend's arrays. */
export const moeFusedLinearNf4Cpu: KernelFunc = ({inputs, backend, attrs}) => {
  const {x, packed, absmax, groupSizes} = inputs as MoeFusedLinearNf4Inputs;
  const {N, K, blocksize, transposeWeight} = attrs as MoeFusedLinearNf4Attrs;
  const cpu = backend as MathBackendCPU;
  const M = x.shape[0], out = transposeWeight ? K : N;
  const y = outputFloats(M * out);
  cpuAddon().moeNf4Linear(floats(cpu, x), ints(cpu, packed), floats(cpu, absmax), ints(cpu, groupSizes), y, M, N, K,
                          groupSizes.shape[0], blocksize, transposeWeight);
  return cpu.makeTensorInfo([M, out], 'float32', y);
};

export const moeFusedLinearNf4CpuConfig: KernelConfig = {
  kernelName: MoeFusedLinearNf4,
  backendName: 'cpu',
  kernelFunc: moeFusedLinearNf4Cpu,
};
