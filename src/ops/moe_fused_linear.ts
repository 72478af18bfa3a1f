import {dispose, engine, Tensor, Tensor1D, Tensor2D, Tensor3D} from '@tensorflow/tfjs-core';

import {MoeFusedLinear, MoeFusedLinearAttrs} from '../kernel_names';
import {fail, Input, toTensor} from './convert';

export interface MoeFusedLinearOptions {
  /** Read weight as [E, K, N] instead of [E, N, K] (this is how dX = dY · W is computed). */
  transposeWeight?: boolean;
}

/**
 * Grouped linear layer of a Mixture of Experts: every row of `x` goes through its expert's weight.
 *
 *   y[m, n] = Σ_k weight[g(m), n, k] · x[m, k]          (weight [E, N, K], like nn.Linear per expert)
 *   y[m, n] = Σ_k weight[g(m), k, n] · x[m, k]          (transposeWeight: weight [E, K, N])
 *
 * Rows of `x` [M, K] are grouped by expert in ascending order: expert e owns the next
 * groupSizes[e] rows, and g(m) is the expert that owns row m. groupSizes is int32 [E], >= 0,
 * summing to M. Gradients flow to x and weight.
 */
export function moeFusedLinear(x: Input, weight: Input, groupSizes: Input,
                               options: MoeFusedLinearOptions = {}): Tensor2D {
  const op = 'moeFusedLinear';
  const transposeWeight = options.transposeWeight ?? false;
  const created: Tensor[] = [];
  const $x = toTensor<Tensor2D>(x, 'x', op, 'float32', 2, '[M, K]', created);
  const $w = toTensor<Tensor3D>(weight, 'weight', op, 'float32', 3, transposeWeight ? '[E, K, N]' : '[E, N, K]', created);
  const $g = toTensor<Tensor1D>(groupSizes, 'groupSizes', op, 'int32', 1, '[E]', created);
  const [E, wRows, wCols] = $w.shape;
  const K = transposeWeight ? wRows : wCols;
  if ($x.shape[1] !== K) {
    fail(op, `x has ${$x.shape[1]} columns but weight [${$w.shape}] expects K = ${K}` +
             (transposeWeight ? ' (dimension 1 with transposeWeight)' : ' (dimension 2)'), created);
  }
  if ($g.shape[0] !== E) {
    fail(op, `groupSizes must have one entry per expert (E = ${E}), but has ${$g.shape[0]}`, created);
  }
  const attrs: MoeFusedLinearAttrs = {transposeWeight};
  try {
    return engine().runKernel(MoeFusedLinear, {x: $x, weight: $w, groupSizes: $g}, attrs) as Tensor2D;
  } finally {
    dispose(created);
  }
}

