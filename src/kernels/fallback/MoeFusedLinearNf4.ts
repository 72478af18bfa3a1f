import {concat, KernelBackend, KernelFunc, matMul, slice, tensor2d, Tensor, tidy, zeros} from '@tensorflow/tfjs-core';

import {MoeFusedLinearNf4Attrs, MoeFusedLinearNf4Inputs} from '../../kernel_names';
import {int32WordsToBytes} from '../../quant/int32_words';
import {dequantiseNf4, nf4Sizes} from '../../quant/nf4';
import {checkGroupSizes} from '../group_sizes';
import {nf4WeightError} from '../nf4_layout';
import {asTensor, hostInts} from './tensors';

/**
 * The NF4 grouped GEMM for backends without a native kernel: reads the packed weight on the host
 * and dequantises one expert at a time (a float copy of one expert lives at once) for a tf.matMul.
 */
export const moeFusedLinearNf4Fallback: KernelFunc = ({inputs, backend, attrs}) => {
  const {x, packed, absmax, groupSizes} = inputs as MoeFusedLinearNf4Inputs;
  const {N, K, blocksize, transposeWeight} = attrs as MoeFusedLinearNf4Attrs;
  const host = backend as KernelBackend;
  const M = x.shape[0], E = groupSizes.shape[0];
  const sizes = hostInts(host, groupSizes), words = hostInts(host, packed);
  const scales = Float32Array.from(host.readSync(absmax.dataId) as ArrayLike<number>);
  const error = nf4WeightError(words.length, scales.length, E, N, K, blocksize);
  if (error) throw new RangeError(error);
  checkGroupSizes(sizes, M);
  const {bytes, blocks} = nf4Sizes(N * K, blocksize);
  const codes = int32WordsToBytes(words, E * bytes);
  const inFeatures = transposeWeight ? N : K;
  return tidy(() => {
    const xs = asTensor(x);
    const parts: Tensor[] = [];
    let row = 0;
    sizes.forEach((size, e) => {
      if (size === 0) return;
      const w = tensor2d(dequantiseNf4({shape: [N, K], blocksize, groups: 1, dtype: 'float32',
                                        packed: codes.subarray(e * bytes, (e + 1) * bytes),
                                        absmax: scales.subarray(e * blocks, (e + 1) * blocks)}), [N, K]);
      parts.push(matMul(slice(xs, [row, 0], [size, inFeatures]), w, false, !transposeWeight));
      w.dispose();
      row += size;
    });
    return parts.length > 0 ? concat(parts, 0) : zeros([M, transposeWeight ? K : N]);
  });
};
