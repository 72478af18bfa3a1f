/**
 * Reading safetensors files: an 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?}, then the raw data.
 * Malformed files are rejected with an error that names the file and what is wrong.
 */
import * as fs from 'fs';

/** Data as tfjs holds it: floating types widened to float32, integers as int32. */
export interface HostTensor {
  dtype: 'float32' | 'int32';
  shape: number[];
  data: Float32Array | Int32Array;
}

const BYTES: Record<string, number> = {F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1, BOOL: 1};

/** float32 values of IEEE half-precision bits. */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

function decode(dtype: string, bytes: Buffer, count: number, where: string): Float32Array | Int32Array {
  switch (dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    case 'BF16': {  // bf16 is the top half of a float32
      const out = new Uint32Array(count);
      for (let i = 0; i < count; ++i) out[i] = bytes.readUInt16LE(2 * i) << 16;
      return new Float32Array(out.buffer);
    }
    case 'F16':
      return Float32Array.from({length: count}, (_, i) => halfToFloat(bytes.readUInt16LE(2 * i)));
    case 'I32':
      return new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    case 'I64':
      return Int32Array.from({length: count}, (_, i) => {
        const v = bytes.readBigInt64LE(8 * i);
        if (v < -(2n ** 31n) || v >= 2n ** 31n) throw new RangeError(`${where}: I64 value ${v} does not fit int32`);
        return Number(v);
      });
    case 'U8':
    case 'BOOL':
      return Int32Array.from(bytes);
    default:
      throw new TypeError(`${where}: unsupported dtype ${dtype}`);
  }
}

/** Parses and checks the header; returns the entries and where the data starts. */
export function parseSafetensorsHeader(file: Buffer, path = 'safetensors'):
    {entries: Map<string, {dtype: string; shape: number[]; begin: number; end: number}>; dataStart: number} {
  if (file.length < 8) throw new RangeError(`${path}: file of ${file.length} bytes has no header`);
  const headerLength = Number(file.readBigUInt64LE(0));
  if (headerLength > file.length - 8) {
    throw new RangeError(`${path}: header length ${headerLength} exceeds the file (${file.length} bytes)`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(file.subarray(8, 8 + headerLength).toString('utf8'));
  } catch (e) {
    throw new SyntaxError(`${path}: header is not valid JSON (${(e as Error).message})`);
  }
  const dataStart = 8 + headerLength, dataLength = file.length - dataStart;
  const entries = new Map<string, {dtype: string; shape: number[]; begin: number; end: number}>();
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const {dtype, shape, data_offsets: offsets} = value as {dtype: string; shape: number[]; data_offsets: number[]};
    const where = `${path}: tensor ${name}`;
    if (!(dtype in BYTES)) throw new TypeError(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(d => Number.isInteger(d) && d >= 0)) {
      throw new RangeError(`${where}: bad shape ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(o => Number.isInteger(o) && o >= 0) ||
        offsets[0] > offsets[1] || offsets[1] > dataLength) {
      throw new RangeError(`${where}: data_offsets ${JSON.stringify(offsets)} outside the data (${dataLength} bytes)`);
    }
    const expected = shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    if (offsets[1] - offsets[0] !== expected) {
      throw new RangeError(`${where}: ${offsets[1] - offsets[0]} bytes for shape [${shape}] of ${dtype} (${expected})`);
    }
    entries.set(name, {dtype, shape, begin: offsets[0], end: offsets[1]});
  }
  const spans = [...entries.entries()].sort((a, b) => a[1].begin - b[1].begin);
  for (let i = 1; i < spans.length; ++i) {
    if (spans[i][1].begin < spans[i - 1][1].end) {
      throw new RangeError(`${path}: tensors ${spans[i - 1][0]} and ${spans[i][0]} overlap`);
    }
  }
  return {entries, dataStart};
}

/** Reads every tensor of a safetensors file into host memory. */
export function readSafetensors(path: string): Map<string, HostTensor> {
  const file = fs.readFileSync(path);
  const {entries, dataStart} = parseSafetensorsHeader(file, path);
  const out = new Map<string, HostTensor>();
  for (const [name, {dtype, shape, begin, end}] of entries) {
    const count = shape.reduce((a, b) => a * b, 1);
    const data = decode(dtype, file.subarray(dataStart + begin, dataStart + end), count, `${path}: tensor ${name}`);
    out.set(name, {dtype: data instanceof Float32Array ? 'float32' : 'int32', shape, data});
  }
  return out;
}
