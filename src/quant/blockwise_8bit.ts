/**
 * bitsandbytes' 8-bit blockwise quantisation on the CPU (native csrc/cpu_ops.cpp, quantize_cpu_impl,
 * its AVX2 path, which is bit-exact with its scalar path), used for the nested absmax of NF4 double
 * quantisation (blocks of 256, the dynamic code). Per block:
 *   absmax = max |x| over the block, NaN ignored;      a zero block gives codes 0
 *   v = clamp(x · (1 / absmax), -1, 1)                  (NaN → -1)
 *   i = trunc(((v + 1) · 0.5) · 65535 + 0.5)           each step rounded to float32
 *   code = lut[i]: the code nearest to -1 + 2i / 65535 (a 65536-entry table, not an exact search)
 * and back: x ≈ code[q] · absmax (float32).
 */

const LUT_SIZE = 65536;
const lutCache = new WeakMap<Float32Array, Uint8Array>();

/**
 * lut[i] = #{midpoints < -1 + (2i) / 65535} (build_quantize_lut), midpoints 0.5 · (c[k] + c[k+1])
 * in float32; the code must be sorted.
 */
function quantiseLut(code: Float32Array): Uint8Array {
  let lut = lutCache.get(code);
  if (lut) return lut;
  const mid = Float32Array.from({length: code.length - 1}, (_, k) => 0.5 * Math.fround(code[k] + code[k + 1]));
  lut = new Uint8Array(LUT_SIZE);
  for (let i = 0, k = 0; i < LUT_SIZE; ++i) {
    const value = Math.fround(-1 + Math.fround((2 * i) / (LUT_SIZE - 1)));
    while (k < mid.length && mid[k] < value) ++k;
    lut[i] = k;
  }
  lutCache.set(code, lut);
  return lut;
}

function checkCode(code: Float32Array, where: string): void {
  if (code.length !== 256) throw new RangeError(`${where}: code has ${code.length} values (expected 256)`);
  for (let k = 1; k < 256; ++k) {
    if (!(code[k - 1] < code[k])) throw new RangeError(`${where}: code must be strictly increasing (index ${k})`);
  }
}

export function quantiseBlockwise8bit(x: Float32Array, code: Float32Array, blocksize: number): {codes: Uint8Array; absmax: Float32Array} {
  if (!Number.isInteger(blocksize) || blocksize <= 0 || blocksize % 8 !== 0) {
    throw new RangeError(`quantiseBlockwise8bit: blocksize ${blocksize} must be a positive multiple of 8`);
  }
  checkCode(code, 'quantiseBlockwise8bit');
  const lut = quantiseLut(code);
  const blocks = Math.ceil(x.length / blocksize);
  const codes = new Uint8Array(x.length), absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; ++b) {
    const start = b * blocksize, end = Math.min(start + blocksize, x.length);
    let am = 0;
    for (let i = start; i < end; ++i) {
      const a = Math.abs(x[i]);
      if (a > am) am = a;  // false for NaN: ignored
    }
    absmax[b] = am;
    if (am === 0) continue;
    const inv = Math.fround(1 / am);
    for (let i = start; i < end; ++i) {
      const s = Math.fround(x[i] * inv);
      const v = s >= -1 ? Math.min(s, 1) : -1;  // _mm256_max_ps(v, -1) gives -1 for NaN
      const t = Math.fround(Math.fround(Math.fround(v + 1) * 0.5) * (LUT_SIZE - 1));
      codes[i] = lut[Math.trunc(Math.fround(t + 0.5))];
    }
  }
  return {codes, absmax};
}

/** x[i] = code[q[i]] · absmax[i / blocksize], float32 (dequantizeBlockwise8bitCpu). */
export function dequantiseBlockwise8bit(q: Uint8Array, absmax: Float32Array, code: Float32Array, blocksize: number): Float32Array {
  if (!Number.isInteger(blocksize) || blocksize <= 0) throw new RangeError(`dequantiseBlockwise8bit: blocksize ${blocksize} must be a positive integer`);
  if (absmax.length !== Math.ceil(q.length / blocksize)) {
    throw new RangeError(`dequantiseBlockwise8bit: ${absmax.length} absmax values for ${q.length} codes in blocks of ${blocksize} (expected ${Math.ceil(q.length / blocksize)})`);
  }
  if (code.length !== 256) throw new RangeError(`dequantiseBlockwise8bit: code has ${code.length} values (expected 256)`);
  const out = new Float32Array(q.length);
  for (let i = 0; i < q.length; ++i) out[i] = code[q[i]] * absmax[Math.floor(i / blocksize)];
  return out;
}
