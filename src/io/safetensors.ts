/**
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}, then the
 * tensors' bytes, back to back. Reading is streamed: only the header is held, and each tensor is
 * read from its own offset when asked for, so a checkpoint is never in memory whole. Writing is
 * atomic: a temporary file, synced, then renamed over the target. Malformed files are rejected
 * with an error that names the file and what is wrong.
 */
import * as fs from 'fs';

/** Data as tfjs holds it: floating types widened to float32, integers as int32. */
export interface HostTensor {
  dtype: 'float32' | 'int32';
  shape: number[];
  data: Float32Array | Int32Array;
}

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8' | 'BOOL';
export const DTYPE_BYTES: Record<SafetensorsDtype, number> = {F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1, BOOL: 1};
/** The largest header we accept (the format's own limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

export interface Entry {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Byte offsets of the data, relative to the start of the data section. */
  begin: number;
  end: number;
}

/** float32 of IEEE half-precision bits. */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

function decode(dtype: SafetensorsDtype, bytes: Buffer, count: number, where: string): Float32Array | Int32Array {
  switch (dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    case 'F64':
      return Float32Array.from({length: count}, (_, i) => bytes.readDoubleLE(8 * i));
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
  }
}

/** Parses and checks a header (the JSON text) against a data section of `dataLength` bytes. */
export function parseHeader(json: string, dataLength: number, path: string): Map<string, Entry> {
  let header: unknown;
  try {
    header = JSON.parse(json);
  } catch (e) {
    throw new SyntaxError(`${path}: header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new TypeError(`${path}: header must be a JSON object`);
  }
  const entries = new Map<string, Entry>();
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const where = `${path}: tensor ${JSON.stringify(name)}`;
    const {dtype, shape, data_offsets: offsets} = (value ?? {}) as {dtype: unknown; shape: unknown; data_offsets: unknown};
    if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) throw new TypeError(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(d => Number.isSafeInteger(d) && d >= 0)) {
      throw new RangeError(`${where}: bad shape ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(o => Number.isSafeInteger(o) && o >= 0) ||
        offsets[0] > offsets[1] || offsets[1] > dataLength) {
      throw new RangeError(`${where}: data_offsets ${JSON.stringify(offsets)} outside the data (${dataLength} bytes)`);
    }
    const expected = shape.reduce((a: number, b: number) => a * b, 1) * DTYPE_BYTES[dtype as SafetensorsDtype];
    if (offsets[1] - offsets[0] !== expected) {
      throw new RangeError(`${where}: ${offsets[1] - offsets[0]} bytes for shape [${shape}] of ${dtype} (expected ${expected})`);
    }
    entries.set(name, {dtype: dtype as SafetensorsDtype, shape, begin: offsets[0], end: offsets[1]});
  }
  // The tensors must tile the data section: no overlaps, no holes (as the reference reader demands).
  const spans = [...entries.entries()].sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let covered = 0;
  for (const [name, {begin, end}] of spans) {
    if (begin < covered) throw new RangeError(`${path}: tensor ${JSON.stringify(name)} overlaps the one before it`);
    if (begin > covered) throw new RangeError(`${path}: bytes ${covered}..${begin} of the data belong to no tensor`);
    covered = end;
  }
  if (covered !== dataLength) throw new RangeError(`${path}: bytes ${covered}..${dataLength} of the data belong to no tensor`);
  return entries;
}

/** One safetensors file, open for reading tensors one at a time. */
export class SafetensorsFile {
  readonly entries: Map<string, Entry>;
  private readonly dataStart: number;

  private constructor(readonly path: string, private fd: number) {
    const size = fs.fstatSync(fd).size;
    const head = Buffer.alloc(8);
    if (size < 8 || fs.readSync(fd, head, 0, 8, 0) !== 8) throw new RangeError(`${path}: file of ${size} bytes has no header`);
    const headerLength = Number(head.readBigUInt64LE(0));
    if (headerLength > Math.min(size - 8, MAX_HEADER_BYTES)) {
      throw new RangeError(`${path}: header length ${headerLength} exceeds the file (${size} bytes) or the 100 MB limit`);
    }
    const json = Buffer.alloc(headerLength);
    fs.readSync(fd, json, 0, headerLength, 8);
    this.dataStart = 8 + headerLength;
    this.entries = parseHeader(json.toString('utf8'), size - this.dataStart, path);
  }

  static open(path: string): SafetensorsFile {
    const fd = fs.openSync(path, 'r');
    try {
      return new SafetensorsFile(path, fd);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Reads one tensor (only its bytes). */
  read(name: string): HostTensor {
    const entry = this.entries.get(name);
    if (!entry) throw new Error(`${this.path}: no tensor ${JSON.stringify(name)}`);
    if (this.fd < 0) throw new Error(`${this.path}: the file is closed`);
    const bytes = Buffer.alloc(entry.end - entry.begin);
    for (let done = 0; done < bytes.length;) {
      const n = fs.readSync(this.fd, bytes, done, bytes.length - done, this.dataStart + entry.begin + done);
      if (n <= 0) throw new RangeError(`${this.path}: tensor ${JSON.stringify(name)} runs past the end of the file`);
      done += n;
    }
    const count = entry.shape.reduce((a, b) => a * b, 1);
    const data = decode(entry.dtype, bytes, count, `${this.path}: tensor ${JSON.stringify(name)}`);
    return {dtype: data instanceof Float32Array ? 'float32' : 'int32', shape: entry.shape, data};
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

/** Reads every tensor of a safetensors file into host memory (for small files). */
export function readSafetensors(path: string): Map<string, HostTensor> {
  const file = SafetensorsFile.open(path);
  try {
    return new Map([...file.entries.keys()].map(name => [name, file.read(name)]));
  } finally {
    file.close();
  }
}

/** A tensor to write: its data is asked for only when its turn comes. */
export interface TensorToWrite {
  name: string;
  /** Integer dtypes take Int32Array data: I64 widens it, U8 needs 0..255, BOOL 0 or 1. */
  dtype: 'F32' | 'BF16' | 'F16' | 'I32' | 'I64' | 'U8' | 'BOOL';
  shape: number[];
  data: () => Float32Array | Int32Array;
}

/** bf16 bits of a float32, rounded to nearest even (NaN stays NaN). */
function floatToBf16(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;  // quiet NaN
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** IEEE half bits of a float32, rounded to nearest even (overflow to ±Inf, NaN stays NaN). */
function floatToHalf(value: number): number {
  const bits = new Uint32Array(new Float32Array([value]).buffer)[0];
  const sign = (bits >>> 16) & 0x8000, abs = bits & 0x7fffffff;
  if (abs >= 0x7f800000) return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0);
  if (abs >= 0x477ff000) return sign | 0x7c00;  // |value| ≥ 65520 rounds to infinity
  if (abs < 0x38800000) {  // below 2^-14: a subnormal half, |value| / 2^-24 rounded to nearest even
    const v = Math.abs(value) * 2 ** 24, r = Math.floor(v), rest = v - r;
    return sign | (rest > 0.5 || (rest === 0.5 && r % 2 === 1) ? r + 1 : r);
  }
  // Normal: exponent rebiased from 127 to 15 (minus 112 << 23), mantissa rounded from 23 to 10 bits.
  return sign | ((abs - 0x38000000 + 0xfff + ((abs >>> 13) & 1)) >>> 13);
}

function encode(t: TensorToWrite): Buffer {
  const data = t.data();
  const count = t.shape.reduce((a, b) => a * b, 1);
  if (data.length !== count) throw new RangeError(`tensor ${t.name}: ${data.length} values for shape [${t.shape}]`);
  const integer = t.dtype === 'I32' || t.dtype === 'I64' || t.dtype === 'U8' || t.dtype === 'BOOL';
  if (integer !== data instanceof Int32Array) {
    throw new TypeError(`tensor ${t.name}: ${t.dtype} takes ${integer ? 'Int32Array' : 'Float32Array'} data`);
  }
  switch (t.dtype) {
    case 'F32':
    case 'I32':
      return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    case 'I64': {
      const out = Buffer.alloc(8 * count);
      for (let i = 0; i < count; ++i) out.writeBigInt64LE(BigInt(data[i]), 8 * i);
      return out;
    }
    case 'U8':
    case 'BOOL': {
      const max = t.dtype === 'U8' ? 255 : 1;
      const bad = data.findIndex(v => v < 0 || v > max);
      if (bad >= 0) throw new RangeError(`tensor ${t.name}: ${t.dtype} value ${data[bad]} at ${bad} is outside [0, ${max}]`);
      return Buffer.from(Uint8Array.from(data));
    }
    case 'BF16': {
      const bits = new Uint32Array(data.buffer, data.byteOffset, count), out = Buffer.alloc(2 * count);
      for (let i = 0; i < count; ++i) out.writeUInt16LE(floatToBf16(bits[i]), 2 * i);
      return out;
    }
    case 'F16': {
      const out = Buffer.alloc(2 * count);
      for (let i = 0; i < count; ++i) out.writeUInt16LE(floatToHalf(data[i]), 2 * i);
      return out;
    }
  }
}

/**
 * Writes tensors to a safetensors file atomically (a temporary file beside it, synced, then
 * renamed), one tensor's data at a time.
 */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = metadata ? {__metadata__: metadata} : {};
  let offset = 0;
  for (const t of tensors) {
    if (t.name in header) throw new Error(`${path}: tensor ${JSON.stringify(t.name)} appears twice`);
    const bytes = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    header[t.name] = {dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes]};
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);  // keep the data 8-byte aligned, as the reference writer does
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeAtomically(path, fd => {
    fs.writeSync(fd, head);
    fs.writeSync(fd, json);
    for (const t of tensors) fs.writeSync(fd, encode(t));
  });
}

/** Runs write(fd) on `${path}.tmp-<pid>`, syncs it and renames it over path; no partial file remains. */
export function writeAtomically(path: string, write: (fd: number) => void): void {
  const temporary = `${path}.tmp-${process.pid}`;
  const fd = fs.openSync(temporary, 'w');
  try {
    write(fd);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(temporary, {force: true});
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(temporary, path);
}
