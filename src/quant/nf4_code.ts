/**
 * The NF4 (4-bit NormalFloat) code of bitsandbytes (QLoRA): 16 float32 values, quantiles of N(0, 1)
 * scaled to [-1, 1] with an exact 0 (code 7), as `bitsandbytes.functional.get_4bit_type('nf4')`.
 */
export const NF4_CODE = Float32Array.of(
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
  -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
  0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0);

/**
 * Decision boundaries of the CPU quantiser: bounds[i] = (code[i] + code[i+1]) / 2 in float32
 * (bitsandbytes/backends/default/ops.py). A value v gets the code #{bounds < v}: exactly on a
 * boundary it takes the lower code (torch.bucketize, right=False).
 */
export const NF4_BOUNDS = Float32Array.from({length: 15}, (_, i) => Math.fround(NF4_CODE[i] + NF4_CODE[i + 1]) / 2);

/** The NF4 code of a scaled value v: #{bounds < v}, NaN → 15 (torch.bucketize's binary search). */
export function nf4Index(v: number): number {
  if (v !== v) return 15;
  let lo = 0, hi = 15;  // first bound ≥ v, i.e. the count of bounds < v
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (NF4_BOUNDS[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
