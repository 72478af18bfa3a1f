import {dispose, engine, Tensor, Tensor1D, Tensor2D, tensor1d} from '@tensorflow/tfjs-core';

import {MoeFusedLinearNf4, MoeFusedLinearNf4Attrs} from '../kernel_names';
import {nf4WeightError} from '../kernels/nf4_layout';
import {bytesToInt32Words} from '../quant/int32_words';
import {decodeNf4Absmax, Nf4Tensor, validateNf4} from '../quant/nf4';
import {fail, Input, toTensor} from './convert';
import {MoeFusedLinearOptions} from './moe_fused_linear';

/**
 * Experts' weights [E, N, K] in NF4 as tensors the kernels decode (tfjs has no uint8 dtype):
 * expert e is bytes [e·S, (e+1)·S) of `packed` (S = ceil(N·K/2)) and blocks [e·B, (e+1)·B) of
 * `absmax` (B = ceil(N·K/blocksize)), the layout of a stacked Nf4Tensor (src/quant/nf4.ts).
 */
export interface Nf4Weights {
  /** The bytes as little-endian int32 words, int32 [ceil(E·S/4)] (bytesToInt32Words). */
  packed: Tensor1D;
  /** The float32 scale of every block, [E·B] (double quantisation decoded: decodeNf4Absmax). */
  absmax: Tensor1D;
  /** [E, N, K]: E experts of N outputs and K inputs. */
  shape: [number, number, number];
  blocksize: number;
}

/**
 * Nf4Weights of an Nf4Tensor of experts [E, N, K]: a stack of E groups (stackNf4, readBnbExperts),
 * or one tensor quantised whole when its blocks do not straddle experts (N·K a multiple of the
 * blocksize). Double-quantised absmax is decoded to float32 here, once.
 */
export function nf4Weights(t: Nf4Tensor): Nf4Weights {
  validateNf4(t, 'nf4Weights');
  if (t.shape.length !== 3) throw new RangeError(`nf4Weights: expected experts [E, N, K], got shape [${t.shape}]`);
  const [E, N, K] = t.shape;
  if (t.groups !== E && !(t.groups === 1 && (N * K) % t.blocksize === 0)) {
    throw new RangeError(`nf4Weights: a tensor [${t.shape}] quantised whole has blocks of ${t.blocksize} that straddle ` +
                         'experts; quantise the experts one by one (stackNf4)');
  }
  return {packed: tensor1d(bytesToInt32Words(t.packed), 'int32'),
          absmax: tensor1d(decodeNf4Absmax(t), 'float32'), shape: [E, N, K], blocksize: t.blocksize};
}

/**
 * moeFusedLinear with a frozen NF4 weight, decoded inside the kernel (no float copy of it):
 *
 *   y[m, n] = Σ_k W[g(m)][n, k] · x[m, k]          x [M, K] → y [M, N]
 *   y[m, k] = Σ_n W[g(m)][n, k] · x[m, n]          transposeWeight: x [M, N] → y [M, K]
 *
 * Rows of x are grouped by expert as for moeFusedLinear (groupSizes int32 [E], summing to M).
 * Gradients flow to x only: the weight is a frozen base (QLoRA trains adapters on top of it).
 */
export function moeFusedLinearNf4(x: Input, weight: Nf4Weights, groupSizes: Input,
                                  options: MoeFusedLinearOptions = {}): Tensor2D {
  const op = 'moeFusedLinearNf4';
  const transposeWeight = options.transposeWeight ?? false;
  const [E, N, K] = weight.shape;
  const {blocksize} = weight;
  const created: Tensor[] = [];
  const $x = toTensor<Tensor2D>(x, 'x', op, 'float32', 2, transposeWeight ? '[M, N]' : '[M, K]', created);
  const $packed = toTensor<Tensor1D>(weight.packed, 'weight.packed', op, 'int32', 1, '[words]', created);
  const $absmax = toTensor<Tensor1D>(weight.absmax, 'weight.absmax', op, 'float32', 1, '[E·blocks]', created);
  const $g = toTensor<Tensor1D>(groupSizes, 'groupSizes', op, 'int32', 1, '[E]', created);
  const inFeatures = transposeWeight ? N : K;
  if ($x.shape[1] !== inFeatures) {
    const expected = transposeWeight ? `N = ${N} (transposeWeight)` : `K = ${K}`;
    fail(op, `x has ${$x.shape[1]} columns but the weight [${weight.shape}] expects ${expected}`, created);
  }
  if ($g.shape[0] !== E) fail(op, `groupSizes must have one entry per expert (E = ${E}), but has ${$g.shape[0]}`, created);
  const error = nf4WeightError($packed.shape[0], $absmax.shape[0], E, N, K, blocksize);
  if (error) fail(op, `weight: ${error}`, created);
  const attrs: MoeFusedLinearNf4Attrs = {N, K, blocksize, transposeWeight};
  try {
    return engine().runKernel(MoeFusedLinearNf4, {x: $x, packed: $packed, absmax: $absmax, groupSizes: $g},
                              attrs) as Tensor2D;
  } finally {
    dispose(created);
  }
}
