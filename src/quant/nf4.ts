/**
 * NF4 blockwise quantisation, byte-exact with bitsandbytes (`quantize_4bit(A, blocksize, quant_type='nf4',
 * compress_statistics, quant_storage=torch.uint8)` on the CPU, and its float32 `dequantize_4bit`).
 *
 * Layout of one quantised tensor of n values (the flat, row-major order of `shape`):
 *   packed   ceil(n/2) bytes; value i in byte i >> 1, high nibble for even i (an odd n pads code 7 = 0.0)
 *   absmax   one float32 per block of `blocksize` values (the last block may be partial), or, double
 *            quantised: one 8-bit code per block, decoded as absmax[b] = nestedCode[codes[b]] ·
 *            nestedAbsmax[b / nestedBlocksize] + offset (each step rounded to float32)
 *   value    x[i] = NF4_CODE[code(i)] · absmax[i / blocksize] (float32)
 * A stack of such tensors (`groups` > 1, e.g. one per expert) keeps each group's blocks and state:
 * group g owns bytes [g·n/2, (g+1)·n/2), blocks [g·B, (g+1)·B) (B = ceil(n/blocksize), n the group's
 * size), nested blocks [g·NB, (g+1)·NB) (NB = ceil(B/nestedBlocksize)) and offsets[g].
 */
import {createDynamicMap} from './dynamic_code';
import {dequantiseBlockwise8bit, quantiseBlockwise8bit} from './blockwise_8bit';
import {NF4_CODE, nf4Index} from './nf4_code';
import {torchMeanFloat32} from './torch_sum';

/** Block sizes bitsandbytes accepts for 4-bit tensors. */
export const NF4_BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/** bitsandbytes' block size for the nested absmax. */
export const NESTED_BLOCKSIZE = 256;
/** torch's absmax.clamp(min=1e-38) in float32. */
const TINY = Math.fround(1e-38);

export interface Nf4DoubleQuant {
  /** One 8-bit code per block. */
  codes: Uint8Array;
  /** One float32 per `nestedBlocksize` codes, per group. */
  nestedAbsmax: Float32Array;
  /** The 256-value 8-bit code (bitsandbytes' create_dynamic_map). */
  nestedCode: Float32Array;
  nestedBlocksize: number;
  /** The mean absmax subtracted before the 8-bit quantisation, one per group. */
  offsets: Float32Array;
}

export interface Nf4Tensor {
  /** Logical shape; with groups > 1 the first dimension counts the groups. */
  shape: number[];
  blocksize: number;
  /** Independently quantised slices along the first dimension (experts); 1 for one tensor. */
  groups: number;
  packed: Uint8Array;
  absmax: Float32Array | Nf4DoubleQuant;
  /** The dtype bitsandbytes records (it dequantises to it); ours always gives float32. */
  dtype: 'float32' | 'float16' | 'bfloat16';
}

export interface QuantiseNf4Options {
  /** Default 64. */
  blocksize?: number;
  /** Quantise the absmax again (8-bit dynamic code, blocks of 256, minus their mean). Default false. */
  doubleQuant?: boolean;
  /** Default [data.length]. */
  shape?: number[];
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

function checkBlocksize(blocksize: number, where: string): void {
  if (!NF4_BLOCKSIZES.includes(blocksize)) throw new RangeError(`${where}: blocksize ${blocksize} is not one of ${NF4_BLOCKSIZES.join(', ')}`);
}

/**
 * Quantises float32 data as bitsandbytes' quantize_4bit does on the CPU (backends/default/ops.py):
 *   full block:  absmax = max |x| (NaN if any is NaN), v = x · fround(1 / max(absmax, 1e-38))
 *   last block, if partial: absmax = max(max |x|, 1e-38) (stored clamped), v = x / absmax
 *   code = #{NF4_BOUNDS < clamp(v, -1, 1)}  (nearest value; on a midpoint the lower code; NaN → 15)
 * so a zero block stores absmax 0 (a zero tail 1e-38) and codes 7; ±Inf makes its block's other
 * values 0 and itself NaN (code 15). Double quantisation needs finite absmax values.
 */
export function quantiseNf4(data: Float32Array, options: QuantiseNf4Options = {}): Nf4Tensor {
  const {blocksize = 64, doubleQuant = false, shape = [data.length]} = options;
  checkBlocksize(blocksize, 'quantiseNf4');
  if (!(data instanceof Float32Array)) throw new TypeError('quantiseNf4: data must be a Float32Array');
  if (!shape.every(d => Number.isInteger(d) && d >= 0) || numel(shape) !== data.length) {
    throw new RangeError(`quantiseNf4: shape [${shape}] does not hold ${data.length} values`);
  }
  if (data.length === 0) throw new RangeError('quantiseNf4: data is empty (bitsandbytes cannot quantise it either)');
  const n = data.length, blocks = Math.ceil(n / blocksize);
  const absmax = new Float32Array(blocks), packed = new Uint8Array(Math.ceil(n / 2));
  if (n % 2 === 1) packed[packed.length - 1] = 7;  // the pad value 0.0 in the last low nibble
  for (let b = 0; b < blocks; ++b) {
    const start = b * blocksize, end = Math.min(start + blocksize, n), full = end - start === blocksize;
    let am = 0;
    for (let i = start; i < end; ++i) {
      const a = Math.abs(data[i]);
      if (a !== a || a > am) am = a;
      if (a !== a) break;
    }
    const clamped = am !== am ? am : Math.max(am, TINY);
    absmax[b] = full ? am : clamped;
    const inv = Math.fround(1 / clamped);
    for (let i = start; i < end; ++i) {
      const v = full ? Math.fround(data[i] * inv) : Math.fround(data[i] / clamped);
      packed[i >> 1] |= nf4Index(v) << (i & 1 ? 0 : 4);
    }
  }
  const dtype = 'float32';
  if (!doubleQuant) return {shape: [...shape], blocksize, groups: 1, packed, absmax, dtype};
  return {shape: [...shape], blocksize, groups: 1, packed, absmax: doubleQuantise(absmax), dtype};
}

/** absmax - mean(absmax) (torch's float32 mean) quantised to 8 bits in blocks of 256. */
function doubleQuantise(absmax: Float32Array): Nf4DoubleQuant {
  absmax.forEach((a, b) => {
    if (!Number.isFinite(a)) throw new RangeError(`quantiseNf4: block ${b} has absmax ${a}; double quantisation needs finite data`);
  });
  const offset = torchMeanFloat32(absmax);
  const nestedCode = createDynamicMap();
  const {codes, absmax: nestedAbsmax} = quantiseBlockwise8bit(absmax.map(a => a - offset), nestedCode, NESTED_BLOCKSIZE);
  return {codes, nestedAbsmax, nestedCode, nestedBlocksize: NESTED_BLOCKSIZE, offsets: Float32Array.of(offset)};
}

/** Packed bytes and absmax blocks of `values` NF4 values (one group, e.g. one expert). */
export function nf4Sizes(values: number, blocksize: number): {bytes: number; blocks: number} {
  return {bytes: Math.ceil(values / 2), blocks: Math.ceil(values / blocksize)};
}

/** Sizes of one group: values, bytes, blocks and nested blocks. */
export function nf4GroupSizes(t: Nf4Tensor): {values: number; bytes: number; blocks: number; nestedBlocks: number} {
  const values = numel(t.shape) / t.groups, {bytes, blocks} = nf4Sizes(values, t.blocksize);
  const nestedBlocks = t.absmax instanceof Float32Array ? 0 : Math.ceil(blocks / t.absmax.nestedBlocksize);
  return {values, bytes, blocks, nestedBlocks};
}

/** Checks that the arrays of t have the sizes its shape, blocksize and groups imply. */
export function validateNf4(t: Nf4Tensor, where = 'Nf4Tensor'): void {
  checkBlocksize(t.blocksize, where);
  if (!Number.isInteger(t.groups) || t.groups < 1) throw new RangeError(`${where}: groups ${t.groups} must be a positive integer`);
  const total = numel(t.shape);
  if (total === 0 || total % t.groups !== 0 || (t.groups > 1 && t.shape[0] !== t.groups)) {
    throw new RangeError(`${where}: shape [${t.shape}] cannot be split into ${t.groups} groups along its first dimension`);
  }
  const g = nf4GroupSizes(t);
  if (t.groups > 1 && g.values % 2 !== 0) throw new RangeError(`${where}: stacked groups need an even number of values (got ${g.values})`);
  const expect = (what: string, actual: number, expected: number) => {
    if (actual !== expected) throw new RangeError(`${where}: ${what} has ${actual} entries (expected ${expected} for shape [${t.shape}], blocksize ${t.blocksize}, ${t.groups} group(s))`);
  };
  expect('packed', t.packed.length, t.groups * g.bytes);
  if (t.absmax instanceof Float32Array) {
    expect('absmax', t.absmax.length, t.groups * g.blocks);
  } else {
    const dq = t.absmax;
    if (!Number.isInteger(dq.nestedBlocksize) || dq.nestedBlocksize <= 0) throw new RangeError(`${where}: nestedBlocksize ${dq.nestedBlocksize} must be a positive integer`);
    expect('absmax codes', dq.codes.length, t.groups * g.blocks);
    expect('nestedAbsmax', dq.nestedAbsmax.length, t.groups * g.nestedBlocks);
    expect('nestedCode', dq.nestedCode.length, 256);
    expect('offsets', dq.offsets.length, t.groups);
  }
}

/**
 * The float32 absmax of every block, as bitsandbytes uses it: stored, or for double quantisation
 * fround(fround(nestedCode[code] · nestedAbsmax) + offset) (dequantize_blockwise, then += offset).
 */
export function decodeNf4Absmax(t: Nf4Tensor): Float32Array {
  validateNf4(t, 'decodeNf4Absmax');
  if (t.absmax instanceof Float32Array) return t.absmax;
  const dq = t.absmax, {blocks, nestedBlocks} = nf4GroupSizes(t);
  const out = new Float32Array(t.groups * blocks);
  for (let g = 0; g < t.groups; ++g) {
    const scaled = dequantiseBlockwise8bit(dq.codes.subarray(g * blocks, (g + 1) * blocks),
                                           dq.nestedAbsmax.subarray(g * nestedBlocks, (g + 1) * nestedBlocks),
                                           dq.nestedCode, dq.nestedBlocksize);
    for (let b = 0; b < blocks; ++b) out[g * blocks + b] = scaled[b] + dq.offsets[g];
  }
  return out;
}

/** x[i] = NF4_CODE[code(i)] · absmax[block(i)] in float32: bitsandbytes' dequantize_4bit(dtype=float32). */
export function dequantiseNf4(t: Nf4Tensor): Float32Array {
  const absmax = decodeNf4Absmax(t);
  const {values, bytes, blocks} = nf4GroupSizes(t);
  const out = new Float32Array(t.groups * values);
  for (let g = 0; g < t.groups; ++g) {
    for (let i = 0; i < values; ++i) {
      const byte = t.packed[g * bytes + (i >> 1)];
      out[g * values + i] = NF4_CODE[i & 1 ? byte & 15 : byte >> 4] * absmax[g * blocks + Math.floor(i / t.blocksize)];
    }
  }
  return out;
}

/**
 * Stacks tensors quantised one by one (the Hub's per-expert layout) into one of shape [E, ...shape]
 * with E groups; bytes, blocks and double-quantisation state are concatenated, nothing is requantised.
 */
export function stackNf4(tensors: Nf4Tensor[]): Nf4Tensor {
  if (tensors.length === 0) throw new RangeError('stackNf4: no tensors (expected at least one)');
  const first = tensors[0];
  tensors.forEach((t, e) => {
    validateNf4(t, `stackNf4: tensor ${e}`);
    if (t.groups !== 1) throw new RangeError(`stackNf4: tensor ${e} is already a stack of ${t.groups}`);
    if (t.blocksize !== first.blocksize || t.shape.length !== first.shape.length || t.shape.some((d, k) => d !== first.shape[k]) ||
        (t.absmax instanceof Float32Array) !== (first.absmax instanceof Float32Array)) {
      throw new RangeError(`stackNf4: tensor ${e} (shape [${t.shape}], blocksize ${t.blocksize}, ${t.absmax instanceof Float32Array ? 'single' : 'double'} quantisation) differs from tensor 0`);
    }
  });
  const concat = <T extends Uint8Array | Float32Array>(parts: T[], make: (n: number) => T): T => {
    const out = make(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  const shape = [tensors.length, ...first.shape];
  const packed = concat(tensors.map(t => t.packed), n => new Uint8Array(n));
  const base = {shape, blocksize: first.blocksize, groups: tensors.length, packed, dtype: first.dtype};
  let stacked: Nf4Tensor;
  if (first.absmax instanceof Float32Array) {
    stacked = {...base, absmax: concat(tensors.map(t => t.absmax as Float32Array), n => new Float32Array(n))};
  } else {
    const dqs = tensors.map(t => t.absmax as Nf4DoubleQuant), dq0 = dqs[0];
    dqs.forEach((dq, e) => {
      if (dq.nestedBlocksize !== dq0.nestedBlocksize || dq.nestedCode.some((c, k) => !Object.is(c, dq0.nestedCode[k]))) {
        throw new RangeError(`stackNf4: tensor ${e} has another nested code or nested blocksize than tensor 0`);
      }
    });
    stacked = {...base, absmax: {
      codes: concat(dqs.map(d => d.codes), n => new Uint8Array(n)),
      nestedAbsmax: concat(dqs.map(d => d.nestedAbsmax), n => new Float32Array(n)),
      nestedCode: dq0.nestedCode,
      nestedBlocksize: dq0.nestedBlocksize,
      offsets: concat(dqs.map(d => d.offsets), n => new Float32Array(n)),
    }};
  }
  validateNf4(stacked, 'stackNf4');
  return stacked;
}
