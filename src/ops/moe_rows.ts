import {dispose, engine, expandDims, mul, reshape, sum, Tensor, Tensor2D, tidy} from '@tensorflow/tfjs-core';

import {MoeGatherRows} from '../kernel_names';
import {fail, Input, toTensor} from './convert';
import type {MoeRouting} from './moe_route';

/**
 * out[j, :] = x[index[j], :] for x [T, H] and int32 index [R]; the gradient scatter-adds back
 * into x. moeGatherRows(tokens, routing.tokenIndex) puts every token's top-k copies in expert order.
 */
export function moeGatherRows(x: Input, index: Input): Tensor2D {
  const op = 'moeGatherRows';
  const created: Tensor[] = [];
  const $x = toTensor<Tensor2D>(x, 'x', op, 'float32', 2, '[T, H]', created);
  const $index = toTensor(index, 'index', op, 'int32', 1, '[R]', created);
  try {
    return engine().runKernel(MoeGatherRows, {x: $x, index: $index}) as Tensor2D;
  } finally {
    dispose(created);
  }
}

/**
 * Back from expert order to tokens, weighted by the routing weights:
 *   out[t, :] = Σ_s weights[t, s] · y[inverseSortIndex[t·k + s], :]
 * for y [T·k, N] in expert order (the output of the experts) and out [T, N].
 */
export function moeCombineRows(y: Input, routing: MoeRouting): Tensor2D {
  const op = 'moeCombineRows';
  const created: Tensor[] = [];
  const $y = toTensor<Tensor2D>(y, 'y', op, 'float32', 2, '[T·k, N]', created);
  const [T, k] = routing.weights.shape;
  if ($y.shape[0] !== T * k) {
    fail(op, `y must have T·k = ${T * k} rows (one per routed token copy), but has ${$y.shape[0]}`, created);
  }
  try {
    return tidy(() => {
      const bySlot = reshape(moeGatherRows($y, routing.inverseSortIndex), [T, k, $y.shape[1]]);
      return sum(mul(bySlot, expandDims(routing.weights, 2)), 1) as Tensor2D;
    });
  } finally {
    dispose(created);
  }
}
