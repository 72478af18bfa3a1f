/**
 * The signed 8-bit dynamic code of bitsandbytes (`create_dynamic_map()`, Dettmers 2015), used to
 * quantise the NF4 absmax a second time ("double quantisation"). For exponent i = 0..6 it holds
 * ±10^(i-6) · m for the 2^i midpoints m of torch.linspace(0.1, 1, 2^i + 1), plus 0 and 1: 256
 * sorted float32 values in [-0.99297, 1].
 *
 * Bit-exact with torch: linspace's CPU kernel is compiled with FMA contraction, so its value at
 * index k is start + step·k rounded once (and end − step·(steps−1−k) from halfway on); in double
 * step·k is exact and the sum needs no rounding at these magnitudes, so one Math.fround is that FMA.
 * The midpoints and scales are float32 operations (torch tensors times Python scalars).
 */
export function createDynamicMap(): Float32Array {
  const values: number[] = [0, 1];
  for (let i = 0; i < 7; ++i) {
    const steps = 2 ** i + 1;
    const start = Math.fround(0.1), end = 1;
    const step = Math.fround(Math.fround(end - start) / (steps - 1));
    const half = Math.floor(steps / 2);
    const bounds = Array.from({length: steps}, (_, k) =>
      k < half ? Math.fround(start + step * k) : Math.fround(end - step * (steps - k - 1)));
    const scale = Math.fround(10 ** (i - 6));
    for (let k = 0; k + 1 < steps; ++k) {
      const mean = Math.fround(bounds[k] + bounds[k + 1]) / 2;
      values.push(Math.fround(scale * mean), Math.fround(-scale * mean));
    }
  }
  return Float32Array.from(values).sort();
}
