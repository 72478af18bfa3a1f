import type {KernelConfig, KernelFunc} from '@tensorflow/tfjs-core';
import type {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

import {MoeScatterAddRows, MoeScatterAddRowsAttrs, MoeScatterAddRowsInputs} from '../../kernel_names';
import {floats, ints} from './values';

/** out[index[j], :] += dy[j, :] over a zeroed [numRows, H] output. */
export const moeScatterAddRowsCpu: KernelFunc = ({inputs, backend, attrs}) => {
  const {dy, index} = inputs as MoeScatterAddRowsInputs;
  const {numRows} = attrs as MoeScatterAddRowsAttrs;
  const cpu = backend as MathBackendCPU;
  const H = dy.shape[1];
  const src = floats(cpu, dy), idx = ints(cpu, index);
  const out = new Float32Array(numRows * H);
  for (let j = 0; j < idx.length; ++j) {
    const t = idx[j];
    if (!(t >= 0 && t < numRows)) throw new RangeError(`index[${j}] = ${t} is outside [0, ${numRows})`);
    for (let h = 0, o = t * H, i = j * H; h < H; ++h) out[o + h] += src[i + h];
  }
  return cpu.makeTensorInfo([numRows, H], 'float32', out);
};

export const moeScatterAddRowsCpuConfig: KernelConfig = {
  kernelName: MoeScatterAddRows,
  backendName: 'cpu',
  kernelFunc: moeScatterAddRowsCpu,
};
