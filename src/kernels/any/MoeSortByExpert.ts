import {KernelBackend, KernelFunc, TensorInfo} from '@tensorflow/tfjs-core';

import {MoeSortByExpertAttrs, MoeSortByExpertInputs} from '../../kernel_names';

/**
 * Stable counting sort of expert ids, on the host for every backend (the ids are small int32
 * data, and tfjs-node keeps int32 in host memory anyway). Row r = t·k + s of expertIds [T, k]:
 *   groupSizes[e]       = #{r : ids[r] = e}
 *   sortIndex[j]        = the j-th row in (expert, r) order, so x_sorted[j] = x[sortIndex[j]]
 *   inverseSortIndex[r] = j such that sortIndex[j] = r, so y[r] = y_sorted[inverseSortIndex[r]]
 *   tokenIndex[j]       = floor(sortIndex[j] / k), the token that sorted row j reads
 */
export const moeSortByExpert: KernelFunc = ({inputs, backend, attrs}) => {
  const {expertIds} = inputs as MoeSortByExpertInputs;
  const {numExperts: E} = attrs as MoeSortByExpertAttrs;
  const b = backend as KernelBackend;
  const ids = b.readSync(expertIds.dataId) as ArrayLike<number>;
  const R = ids.length;
  const k = expertIds.shape.length === 2 ? expertIds.shape[1] : 1;
  const groupSizes = new Int32Array(E);
  for (let r = 0; r < R; ++r) {
    const e = ids[r];
    if (!(e >= 0 && e < E)) {
      throw new RangeError(`expertIds must lie in [0, numExperts = ${E}), but element ${r} is ${e}`);
    }
    groupSizes[e]++;
  }
  const next = new Int32Array(E);  // exclusive prefix sum: where expert e's next row goes
  for (let e = 1; e < E; ++e) next[e] = next[e - 1] + groupSizes[e - 1];
  const sortIndex = new Int32Array(R), inverseSortIndex = new Int32Array(R), tokenIndex = new Int32Array(R);
  for (let r = 0; r < R; ++r) {
    const j = next[ids[r]]++;
    sortIndex[j] = r;
    inverseSortIndex[r] = j;
    tokenIndex[j] = Math.floor(r / k);
  }
  const out = (values: Int32Array): TensorInfo =>
      ({dataId: b.write(values, [values.length], 'int32'), shape: [values.length], dtype: 'int32'});
  return [out(sortIndex), out(inverseSortIndex), out(tokenIndex), out(groupSizes)];
};
