/**
 * Row gather and scatter-add for backends with efficient stock kernels (tensorflow, webgl, wasm,
 * ...): they call that backend's own GatherV2 and UnsortedSegmentSum kernel functions.
 */
import {getKernel, GatherV2, KernelFunc, UnsortedSegmentSum} from '@tensorflow/tfjs-core';

import {MoeGatherRowsInputs, MoeScatterAddRowsAttrs, MoeScatterAddRowsInputs} from '../../kernel_names';

function stockKernel(kernelName: string, backendName: string): KernelFunc {
  const kernel = getKernel(kernelName, backendName);
  if (kernel == null) {
    throw new Error(`tfjs-moe-fused: backend '${backendName}' has no ${kernelName} kernel to build on`);
  }
  return kernel.kernelFunc;
}

export function gatherRowsVia(backendName: string): KernelFunc {
  return ({inputs, backend}) => {
    const {x, index} = inputs as MoeGatherRowsInputs;
    return stockKernel(GatherV2, backendName)({inputs: {x, indices: index}, backend, attrs: {axis: 0, batchDims: 0}});
  };
}

export function scatterAddRowsVia(backendName: string): KernelFunc {
  return ({inputs, backend, attrs}) => {
    const {dy, index} = inputs as MoeScatterAddRowsInputs;
    const {numRows} = attrs as MoeScatterAddRowsAttrs;
    return stockKernel(UnsortedSegmentSum, backendName)(
        {inputs: {x: dy, segmentIds: index}, backend, attrs: {numSegments: numRows}});
  };
}
