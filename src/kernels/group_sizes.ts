/** Checks of group sizes read on the host, with the messages of the native kernels. */
export function checkGroupSizes(sizes: ArrayLike<number>, numRows: number): void {
  let total = 0;
  for (let e = 0; e < sizes.length; ++e) {
    if (sizes[e] < 0) {
      throw new RangeError(`groupSizes must be non-negative, but groupSizes[${e}] = ${sizes[e]}`);
    }
    total += sizes[e];
  }
  if (total !== numRows) {
    throw new RangeError(`groupSizes must sum to the number of rows of x (${numRows}), but they sum to ${total}`);
  }
}
