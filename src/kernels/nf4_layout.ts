/** Checks of NF4 expert weights read on the host, with the messages of the native kernels (cc/nf4_linear.cc). */
import {NF4_BLOCKSIZES, nf4Sizes} from '../quant/nf4';

/** "" when `words` int32 words and `absmax` floats hold E NF4 experts [N, K]; else what is wrong. */
export function nf4WeightError(words: number, absmax: number, E: number, N: number, K: number, blocksize: number): string {
  if (!NF4_BLOCKSIZES.includes(blocksize)) return `blocksize ${blocksize} is not one of ${NF4_BLOCKSIZES.join(', ')}`;
  if (!(Number.isInteger(N) && Number.isInteger(K) && N >= 1 && K >= 1 && N * K <= 2 ** 40)) {
    return `the weight's N = ${N} and K = ${K} must be positive (and not huge)`;
  }
  if (E > 1 && (N * K) % 2 !== 0) return `stacked NF4 experts need an even N·K (got ${N}·${K})`;
  const {bytes, blocks} = nf4Sizes(N * K, blocksize);
  const expectedWords = Math.ceil(E * bytes / 4);
  if (words !== expectedWords) return `packed has ${words} int32 words, expected ${expectedWords} (${E} experts of ${bytes} bytes)`;
  if (absmax !== E * blocks) {
    return `absmax has ${absmax} values, expected ${E * blocks} (${E} experts of ${blocks} blocks of ${blocksize})`;
  }
  return '';
}
