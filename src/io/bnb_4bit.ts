/**
 * bitsandbytes 4-bit (NF4) weights in Hugging Face checkpoints. For a quantised weight W,
 * Linear4bit / Params4bit write QuantState.as_dict(packed=True):
 *   W                                       U8 [ceil(n/2), 1]  packed codes (two per byte, high nibble first)
 *   W.absmax                                F32 [blocks], or U8 [blocks] when double-quantised
 *   W.quant_map                             F32 [16]           the NF4 code
 *   W.nested_absmax                         F32 [ceil(blocks/256)]   (double quantisation only)
 *   W.nested_quant_map                      F32 [256]          the 8-bit dynamic code (idem)
 *   W.quant_state.bitsandbytes__nf4         U8 JSON {quant_type, blocksize, dtype, shape,
 *                                                   nested_blocksize, nested_dtype, nested_offset}
 * Experts are per expert (model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight, transformers 4
 * and the Hub; transformers 5 leaves its fused 3-D experts unquantised) and are stacked here into
 * one NF4 tensor of E groups; a fused [E, out, in] weight quantised whole is read as it is.
 * bnb4bitTensors writes the same pieces (absmax in float32: no double quantisation).
 */
import {NF4_CODE} from '../quant/nf4_code';
import {NESTED_BLOCKSIZE, Nf4Tensor, stackNf4, validateNf4} from '../quant/nf4';
import {HostTensor, TensorToWrite} from './safetensors';

const STATE = '.quant_state.bitsandbytes__';
const DTYPES = ['float32', 'float16', 'bfloat16'] as const;

/** The JSON of W.quant_state.bitsandbytes__nf4. */
export interface BnbQuantState {
  quant_type: 'nf4';
  blocksize: number;
  dtype: (typeof DTYPES)[number];
  shape: number[];
  nested_blocksize?: number;
  nested_dtype?: string;
  nested_offset?: number;
}

/** Where tensors come from: an HfCheckpoint, or a Map from readSafetensors. */
export interface TensorSource {
  has(name: string): boolean;
  read(name: string): HostTensor;
}

/** A Map<string, HostTensor> (readSafetensors) as a TensorSource. */
export function mapSource(tensors: Map<string, HostTensor>): TensorSource {
  return {has: name => tensors.has(name), read: name => {
    const t = tensors.get(name);
    if (!t) throw new Error(`no tensor ${JSON.stringify(name)}`);
    return t;
  }};
}

/** Bytes of a U8 tensor as HostTensor holds them (int32 values 0..255). */
function bytesOf(t: HostTensor, where: string): Uint8Array {
  if (t.dtype !== 'int32') throw new TypeError(`${where}: expected a U8 tensor, got floating point data (quant_storage other than uint8 is not supported)`);
  const out = new Uint8Array(t.data.length);
  t.data.forEach((v, i) => {
    if (!Number.isInteger(v) || v < 0 || v > 255) throw new RangeError(`${where}: value ${v} at ${i} is not a byte (expected U8)`);
    out[i] = v;
  });
  return out;
}

function floatsOf(t: HostTensor, where: string, length: number): Float32Array {
  if (t.dtype !== 'float32') throw new TypeError(`${where}: expected F32, got ${t.dtype}`);
  if (t.data.length !== length) throw new RangeError(`${where}: shape [${t.shape}] has ${t.data.length} values (expected ${length})`);
  return t.data as Float32Array;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;

/** Parses and checks the U8 JSON tensor W.quant_state.bitsandbytes__<type>. */
export function parseBnbQuantState(bytes: Uint8Array, where = 'quant_state'): BnbQuantState {
  let state: Record<string, unknown>;
  try {
    state = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(bytes));
  } catch (e) {
    throw new SyntaxError(`${where}: not UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof state !== 'object' || state === null || Array.isArray(state)) throw new TypeError(`${where}: expected a JSON object`);
  const {quant_type: type, blocksize, dtype, shape} = state;
  if (type === 'fp4') throw new Error(`${where}: quant_type fp4 is not supported (only nf4)`);
  if (type !== 'nf4') throw new Error(`${where}: quant_type ${JSON.stringify(type)} is not supported (only nf4)`);
  if (!isCount(blocksize)) throw new RangeError(`${where}: blocksize ${JSON.stringify(blocksize)} must be a positive integer`);
  if (!DTYPES.includes(dtype as (typeof DTYPES)[number])) throw new TypeError(`${where}: dtype ${JSON.stringify(dtype)} is not one of ${DTYPES.join(', ')}`);
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every(isCount)) throw new RangeError(`${where}: shape ${JSON.stringify(shape)} must be a list of positive integers`);
  const nested = ['nested_blocksize', 'nested_dtype', 'nested_offset'].filter(k => k in state);
  if (nested.length !== 0 && nested.length !== 3) throw new Error(`${where}: has ${nested.join(', ')} but not all of nested_blocksize, nested_dtype, nested_offset`);
  if (nested.length) {
    if (!isCount(state.nested_blocksize)) throw new RangeError(`${where}: nested_blocksize ${JSON.stringify(state.nested_blocksize)} must be a positive integer`);
    if (state.nested_dtype !== 'float32') throw new TypeError(`${where}: nested_dtype ${JSON.stringify(state.nested_dtype)} is not float32`);
    if (typeof state.nested_offset !== 'number' || !Number.isFinite(state.nested_offset)) throw new TypeError(`${where}: nested_offset ${JSON.stringify(state.nested_offset)} must be a finite number`);
  }
  return state as unknown as BnbQuantState;
}

/** The tensors that make up 4-bit weight `name` in `source`: the packed bytes and its quant state. */
export function bnbTensorNames(source: TensorSource, name: string): string[] {
  const parts = ['absmax', 'quant_map', 'nested_absmax', 'nested_quant_map', 'quant_state.bitsandbytes__nf4'];
  return [name, ...parts.map(p => `${name}.${p}`).filter(n => source.has(n))];
}

/** Whether `name` is a bitsandbytes 4-bit weight in `source` (any quant type). */
export function isBnb4bit(source: TensorSource, name: string): boolean {
  return source.has(`${name}${STATE}nf4`) || source.has(`${name}${STATE}fp4`);
}

/** Reads the 4-bit weight `name` and its quant state into an Nf4Tensor (one group), checking every piece. */
export function readBnb4bit(source: TensorSource, name: string): Nf4Tensor {
  if (source.has(`${name}${STATE}fp4`)) throw new Error(`${name}: quant_type fp4 is not supported (only nf4)`);
  const stateName = `${name}${STATE}nf4`;
  if (!source.has(stateName)) throw new Error(`${name}: no ${stateName} (not a bitsandbytes 4-bit weight)`);
  const state = parseBnbQuantState(bytesOf(source.read(stateName), stateName), stateName);
  const n = state.shape.reduce((a, b) => a * b, 1), blocks = Math.ceil(n / state.blocksize);
  const part = (suffix: string) => {
    const key = `${name}.${suffix}`;
    if (!source.has(key)) throw new Error(`${name}: ${key} is missing`);
    return source.read(key);
  };
  const packed = bytesOf(source.read(name), name);
  if (packed.length !== Math.ceil(n / 2)) throw new RangeError(`${name}: ${packed.length} packed bytes for shape [${state.shape}] (expected ${Math.ceil(n / 2)})`);
  const quantMap = floatsOf(part('quant_map'), `${name}.quant_map`, 16);
  if (quantMap.some((c, k) => !Object.is(c, NF4_CODE[k]))) throw new Error(`${name}.quant_map is not the NF4 code`);
  const nested = state.nested_blocksize !== undefined;
  if (nested !== source.has(`${name}.nested_absmax`)) throw new Error(`${name}: quant_state and the presence of ${name}.nested_absmax disagree on double quantisation`);
  let absmax: Nf4Tensor['absmax'];
  if (!nested) {
    absmax = floatsOf(part('absmax'), `${name}.absmax`, blocks);
  } else {
    if (state.nested_blocksize !== NESTED_BLOCKSIZE) throw new RangeError(`${name}: nested_blocksize ${state.nested_blocksize} is not ${NESTED_BLOCKSIZE}`);
    const codes = bytesOf(part('absmax'), `${name}.absmax`);
    if (codes.length !== blocks) throw new RangeError(`${name}.absmax: ${codes.length} codes (expected ${blocks})`);
    absmax = {
      codes,
      nestedAbsmax: floatsOf(part('nested_absmax'), `${name}.nested_absmax`, Math.ceil(blocks / NESTED_BLOCKSIZE)),
      nestedCode: floatsOf(part('nested_quant_map'), `${name}.nested_quant_map`, 256),
      nestedBlocksize: NESTED_BLOCKSIZE,
      offsets: Float32Array.of(state.nested_offset!),
    };
  }
  const t: Nf4Tensor = {shape: state.shape, blocksize: state.blocksize, groups: 1, packed, absmax, dtype: state.dtype};
  validateNf4(t, name);
  return t;
}

/**
 * The experts of `${mlp}.{proj}_proj` as one NF4 tensor [E, out, in] of E groups: stacked from
 * `${mlp}.experts.e.${proj}_proj.weight` (e = 0..E-1), or read whole from a fused
 * `${mlp}.${proj}_proj.weight` quantised as one tensor (then groups = 1).
 */
export function readBnbExperts(source: TensorSource, mlp: string, proj: 'gate' | 'up' | 'down', numExperts: number): Nf4Tensor {
  if (!isCount(numExperts)) throw new RangeError(`readBnbExperts: numExperts ${numExperts} must be a positive integer`);
  const fused = `${mlp}.${proj}_proj.weight`;
  if (isBnb4bit(source, fused)) {
    const t = readBnb4bit(source, fused);
    if (t.shape.length !== 3 || t.shape[0] !== numExperts) throw new RangeError(`${fused}: shape [${t.shape}] is not [${numExperts}, out, in]`);
    return t;
  }
  const experts = Array.from({length: numExperts}, (_, e) => `${mlp}.experts.${e}.${proj}_proj.weight`);
  const missing = experts.find(name => !isBnb4bit(source, name));
  if (missing) throw new Error(`${mlp}: neither ${fused} nor ${missing} is a bitsandbytes 4-bit weight`);
  return stackNf4(experts.map(name => readBnb4bit(source, name)));
}

/**
 * The tensors QuantState.as_dict(packed=True) and Params4bit write for 4-bit weight `name`, from
 * one NF4 tensor with float32 absmax, byte for byte as bitsandbytes (its JSON is Python's
 * json.dumps of {quant_type, blocksize, dtype, shape}). `dtype` is what bitsandbytes will
 * dequantise to. The data is produced when written.
 */
export function bnb4bitTensors(name: string, t: () => Nf4Tensor, shape: number[], blocksize: number,
                               dtype: BnbQuantState['dtype']): TensorToWrite[] {
  const n = shape.reduce((a, b) => a * b, 1);
  const state = `{"quant_type": "nf4", "blocksize": ${blocksize}, "dtype": "${dtype}", "shape": [${shape.join(', ')}]}`;
  const floats = (q: Nf4Tensor) => {
    if (!(q.absmax instanceof Float32Array)) throw new Error(`${name}: double-quantised absmax cannot be written (decode it first)`);
    return q.absmax;
  };
  return [
    {name, dtype: 'U8', shape: [Math.ceil(n / 2), 1], data: () => Int32Array.from(t().packed)},
    {name: `${name}.absmax`, dtype: 'F32', shape: [Math.ceil(n / blocksize)], data: () => floats(t())},
    {name: `${name}.quant_map`, dtype: 'F32', shape: [16], data: () => Float32Array.from(NF4_CODE)},
    {name: `${name}${STATE}nf4`, dtype: 'U8', shape: [state.length], data: () => Int32Array.from(new TextEncoder().encode(state))},
  ];
}
