/**
 * torch.sum / torch.mean of a contiguous float32 vector on the CPU with one thread, bit for bit
 * (aten/src/ATen/native/cpu/SumKernel.cpp). bitsandbytes' double quantisation subtracts
 * absmax.mean(), so reproducing its bytes needs torch's summation order, not an exact sum:
 *  - n ≥ 8: 8-lane vectors (Vectorized<float>, also on AVX-512 builds) go through row_sum, the
 *    scalar tail is summed from 0, then the 8 lanes are added to it in order;
 *  - n < 8: the same row_sum on scalars;
 *  - row_sum: 4 interleaved accumulators over rows of 4 items (multi_row_sum, a 4-level cascade
 *    that flushes level j into j+1 every 2^(j·p) rows, p = max(4, ⌈log2 rows⌉ / 4)), the leftover
 *    items into accumulator 0, then accumulators 1..3 into 0.
 * torch splits sums above 32768 values across threads (GRAIN_SIZE); this is the one-thread order.
 */

/** Float32 lanes (length `lanes`) of row_sum over `count` items of x, item j = x[j·lanes ..]. */
function rowSum(x: Float32Array, lanes: number, count: number): Float32Array {
  const rows = Math.floor(count / 4), width = 4 * lanes;
  const acc = [0, 1, 2, 3].map(() => new Float32Array(width));  // acc[level][column·lanes + lane]
  const levelPower = Math.max(4, Math.floor((rows <= 1 ? 0 : Math.ceil(Math.log2(rows))) / 4));
  const levelStep = 2 ** levelPower, levelMask = levelStep - 1;
  const addRow = (r: number) => {
    for (let k = 0; k < width; ++k) acc[0][k] += x[r * width + k];  // stored as float32: one rounding
  };
  let i = 0;
  while (i + levelStep <= rows) {
    for (let j = 0; j < levelStep; ++j) addRow(i++);
    for (let j = 1; j < 4; ++j) {
      for (let k = 0; k < width; ++k) {
        acc[j][k] += acc[j - 1][k];
        acc[j - 1][k] = 0;
      }
      if ((i & (levelMask << (j * levelPower))) !== 0) break;
    }
  }
  for (; i < rows; ++i) addRow(i);
  for (let j = 1; j < 4; ++j) for (let k = 0; k < width; ++k) acc[0][k] += acc[j][k];
  const out = acc[0].slice(0, lanes);
  for (let item = 4 * rows; item < count; ++item) for (let l = 0; l < lanes; ++l) out[l] += x[item * lanes + l];
  for (let c = 1; c < 4; ++c) for (let l = 0; l < lanes; ++l) out[l] += acc[0][c * lanes + l];
  return out;
}

export function torchSumFloat32(x: Float32Array): number {
  if (x.length < 8) return rowSum(x, 1, x.length)[0];
  const vectors = Math.floor(x.length / 8);
  const lanes = rowSum(x, 8, vectors);
  let total = 0;
  for (let k = 8 * vectors; k < x.length; ++k) total = Math.fround(total + x[k]);
  for (let l = 0; l < 8; ++l) total = Math.fround(total + lanes[l]);
  return total;
}

/** torch's mean: the float32 sum divided by n, rounded to float32. */
export function torchMeanFloat32(x: Float32Array): number {
  if (x.length === 0) throw new RangeError('torchMeanFloat32: x is empty (expected at least one value)');
  return Math.fround(torchSumFloat32(x) / x.length);
}
