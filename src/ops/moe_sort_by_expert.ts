import {dispose, engine, Tensor, Tensor1D, TensorLike} from '@tensorflow/tfjs-core';

import {MoeSortByExpert, MoeSortByExpertAttrs} from '../kernel_names';
import {fail, Input, toTensor} from './convert';

/** The stable permutation that groups routed rows by expert. */
export interface ExpertOrder {
  /** [R] int32: sorted row j is row sortIndex[j] (rows r = t·k + s of expertIds [T, k]). */
  sortIndex: Tensor1D;
  /** [R] int32: row r sits at sorted row inverseSortIndex[r]. */
  inverseSortIndex: Tensor1D;
  /** [R] int32: the token floor(sortIndex[j] / k) that sorted row j reads. */
  tokenIndex: Tensor1D;
  /** [E] int32: rows per expert, in expert order. */
  groupSizes: Tensor1D;
}

/** The rank of nested arrays or a TypedArray (1). */
function tensorRank(value: TensorLike): number {
  let rank = 0;
  for (let v: unknown = value; Array.isArray(v) || ArrayBuffer.isView(v); v = Array.isArray(v) ? v[0] : undefined) ++rank;
  return rank;
}

/**
 * Stable sort of routed rows by expert id (ties keep their row order, as torch.sort(stable=True)).
 * expertIds is int32 [T] or [T, k] with values in [0, numExperts).
 */
export function moeSortByExpert(expertIds: Input, numExperts: number): ExpertOrder {
  const op = 'moeSortByExpert';
  const created: Tensor[] = [];
  const rank = expertIds instanceof Tensor ? expertIds.rank : tensorRank(expertIds);
  const ids = toTensor(expertIds, 'expertIds', op, 'int32', rank === 1 ? 1 : 2, '[T, k] or [T]', created);
  if (!Number.isInteger(numExperts) || numExperts < 1) {
    fail(op, `numExperts must be a positive integer, but is ${numExperts}`, created);
  }
  const attrs: MoeSortByExpertAttrs = {numExperts};
  try {
    const [sortIndex, inverseSortIndex, tokenIndex, groupSizes] =
        engine().runKernel(MoeSortByExpert, {expertIds: ids}, attrs) as Tensor1D[];
    return {sortIndex, inverseSortIndex, tokenIndex, groupSizes};
  } finally {
    dispose(created);
  }
}
