import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';
import type {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

import {MoeGatherRows, MoeGatherRowsInputs} from '../../kernel_names';
import {floats, ints} from './values';

/** out[j, :] = x[index[j], :], one TypedArray copy per row. */
export const moeGatherRowsCpu: KernelFunc = ({inputs, backend}) => {
  const {x, index} = inputs as MoeGatherRowsInputs;
  const cpu = backend as MathBackendCPU;
  const [T, H] = x.shape;
  const src = floats(cpu, x), idx = ints(cpu, index);
  const out = new Float32Array(idx.length * H);
  for (let j = 0; j < idx.length; ++j) {
    const t = idx[j];
    if (!(t >= 0 && t < T)) throw new RangeError(`index[${j}] = ${t} is outside [0, ${T})`);
    out.set(src.subarray(t * H, t * H + H), j * H);
  }
  return cpu.makeTensorInfo([idx.length, H], 'float32', out);
};

export const moeGatherRowsCpuConfig: KernelConfig = {
  kernelName: MoeGatherRows,
  backendName: 'cpu',
  kernelFunc: moeGatherRowsCpu,
};
