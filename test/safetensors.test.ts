/** safetensors: round trips per dtype, atomic writes, malformed files, and fuzzed headers. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import {readSafetensors, SafetensorsFile, writeSafetensors} from '../src/io/safetensors';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'safetensors-'));
afterAll(() => fs.rmSync(dir, {recursive: true, force: true}));
const file = (name: string) => path.join(dir, name);

/** A file from a header object and raw data bytes. */
function rawFile(name: string, header: unknown, data: Buffer, headerLength?: number): string {
  const json = Buffer.from(JSON.stringify(header));
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(headerLength ?? json.length));
  fs.writeFileSync(file(name), Buffer.concat([head, json, data]));
  return file(name);
}


test('F32 and I32 round-trip exactly; BF16 and F16 round to the nearest representable value', () => {
  const values = Float32Array.from({length: 1000}, (_, i) => (i === 0 ? 0 : (Math.random() - 0.5) * 10 ** (i % 9 - 4)));
  const ints = Int32Array.from({length: 7}, (_, i) => i * 1000003 - 3);
  writeSafetensors(file('rt.safetensors'), [
    {name: 'f32', dtype: 'F32', shape: [10, 100], data: () => values},
    {name: 'bf16', dtype: 'BF16', shape: [1000], data: () => values},
    {name: 'f16', dtype: 'F16', shape: [1000], data: () => values},
    {name: 'i32', dtype: 'I32', shape: [7], data: () => ints},
  ], {format: 'pt'});
  const t = readSafetensors(file('rt.safetensors'));
  expect(t.get('f32')!.shape).toEqual([10, 100]);
  expect(Array.from(t.get('f32')!.data)).toEqual(Array.from(values));
  expect(Array.from(t.get('i32')!.data)).toEqual(Array.from(ints));
  const bf16 = t.get('bf16')!.data, f16 = t.get('f16')!.data;
  values.forEach((v, i) => {
    // bf16 keeps 8 significant bits: within half a unit in the last place, ties to even aside
    expect(Math.abs(bf16[i] - v)).toBeLessThanOrEqual(Math.abs(v) * 2 ** -8 + 1e-45);
    // half: 11 significant bits for |v| ≥ 2^-14, absolute steps of 2^-24 below; overflow → Inf
    if (Math.abs(v) < 65504) expect(Math.abs(f16[i] - v)).toBeLessThanOrEqual(Math.max(Math.abs(v) * 2 ** -11, 2 ** -25));
  });
  // Representable values survive exactly.
  const exact = Float32Array.of(1, -2, 0.5, 3.140625, 65504, -(2 ** -14), 0.333984375);
  writeSafetensors(file('exact.safetensors'), [
    {name: 'bf16', dtype: 'BF16', shape: [3], data: () => exact.subarray(0, 3)},
    {name: 'f16', dtype: 'F16', shape: [7], data: () => exact},
  ]);
  const e = readSafetensors(file('exact.safetensors'));
  expect(Array.from(e.get('bf16')!.data)).toEqual([1, -2, 0.5]);
  expect(Array.from(e.get('f16')!.data)).toEqual(Array.from(exact));
});

test('I64, U8 and BOOL round-trip through int32; values they cannot hold are errors', () => {
  const ints = Int32Array.of(-(2 ** 31), -1, 0, 7, 2 ** 31 - 1), bytes = Int32Array.of(0, 1, 128, 255), flags = Int32Array.of(1, 0, 1);
  writeSafetensors(file('ints.safetensors'), [
    {name: 'i64', dtype: 'I64', shape: [5], data: () => ints},
    {name: 'u8', dtype: 'U8', shape: [2, 2], data: () => bytes},
    {name: 'bool', dtype: 'BOOL', shape: [3], data: () => flags},
  ]);
  const t = readSafetensors(file('ints.safetensors'));
  expect(SafetensorsFile.open(file('ints.safetensors')).entries.get('i64')!.dtype).toBe('I64');
  expect(Array.from(t.get('i64')!.data)).toEqual(Array.from(ints));
  expect(Array.from(t.get('u8')!.data)).toEqual(Array.from(bytes));
  expect(Array.from(t.get('bool')!.data)).toEqual(Array.from(flags));
  const write = (dtype: 'U8' | 'BOOL' | 'I64', data: Int32Array | Float32Array) =>
      writeSafetensors(file('bad-ints.safetensors'), [{name: 'x', dtype, shape: [data.length], data: () => data}]);
  expect(() => write('U8', Int32Array.of(3, 256))).toThrow(/U8 value 256 at 1 is outside \[0, 255\]/);
  expect(() => write('BOOL', Int32Array.of(2))).toThrow(/BOOL value 2 at 0 is outside \[0, 1\]/);
  expect(() => write('I64', Float32Array.of(1.5))).toThrow(/I64 takes Int32Array data/);
  expect(fs.existsSync(file('bad-ints.safetensors'))).toBe(false);
});

test('tensors are read one at a time from an open file', () => {
  writeSafetensors(file('lazy.safetensors'), [
    {name: 'a', dtype: 'F32', shape: [2], data: () => Float32Array.of(1, 2)},
    {name: 'b', dtype: 'F32', shape: [1], data: () => Float32Array.of(3)},
  ]);
  const f = SafetensorsFile.open(file('lazy.safetensors'));
  expect([...f.entries.keys()]).toEqual(['a', 'b']);
  expect(Array.from(f.read('b').data)).toEqual([3]);
  expect(() => f.read('c')).toThrow(/no tensor "c"/);
  f.close();
  expect(() => f.read('a')).toThrow(/closed/);
});

test('a failed write leaves the previous file and no temporary behind', () => {
  const target = file('atomic.safetensors');
  writeSafetensors(target, [{name: 'old', dtype: 'F32', shape: [1], data: () => Float32Array.of(7)}]);
  expect(() => writeSafetensors(target, [
    {name: 'ok', dtype: 'F32', shape: [1], data: () => Float32Array.of(1)},
    {name: 'bad', dtype: 'F32', shape: [1], data: () => { throw new Error('disk on fire'); }},
  ])).toThrow(/disk on fire/);
  expect(Array.from(readSafetensors(target).get('old')!.data)).toEqual([7]);
  expect(fs.readdirSync(dir).filter(n => n.startsWith('atomic.safetensors.tmp'))).toEqual([]);
});

test.each([
  ['a file shorter than its header length', () => rawFile('short.st', {}, Buffer.alloc(0), 1000), /header length 1000 exceeds the file/],
  ['a header that is not JSON', () => {
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(5n);
    fs.writeFileSync(file('nojson.st'), Buffer.concat([head, Buffer.from('{oops')]));
    return file('nojson.st');
  }, /header is not valid JSON/],
  ['an unknown dtype', () => rawFile('dtype.st', {t: {dtype: 'Q4', shape: [1], data_offsets: [0, 1]}}, Buffer.alloc(1)), /unknown dtype "Q4"/],
  ['offsets outside the file', () => rawFile('out.st', {t: {dtype: 'F32', shape: [4], data_offsets: [0, 16]}}, Buffer.alloc(8)), /outside the data/],
  ['a size that does not match the shape', () => rawFile('size.st', {t: {dtype: 'F32', shape: [3], data_offsets: [0, 8]}}, Buffer.alloc(8)), /8 bytes for shape \[3\] of F32/],
  ['overlapping tensors', () => rawFile('overlap.st', {
    a: {dtype: 'F32', shape: [2], data_offsets: [0, 8]}, b: {dtype: 'F32', shape: [2], data_offsets: [4, 12]},
  }, Buffer.alloc(12)), /overlaps/],
  ['bytes that belong to no tensor', () => rawFile('hole.st', {a: {dtype: 'F32', shape: [1], data_offsets: [4, 8]}}, Buffer.alloc(8)), /belong to no tensor/],
  ['a bad shape', () => rawFile('shape.st', {a: {dtype: 'F32', shape: [-1], data_offsets: [0, 4]}}, Buffer.alloc(4)), /bad shape/],
])('rejects %s with a clear error', (_what, make, message) => {
  const p = make();
  expect(() => readSafetensors(p)).toThrow(message);
  expect(() => readSafetensors(p)).toThrow(p);
});

test('fuzzed files are either read or rejected with an Error, never a crash or a hang', () => {
  writeSafetensors(file('seed.st'), [
    {name: 'weight', dtype: 'F32', shape: [3, 4], data: () => new Float32Array(12).fill(0.5)},
    {name: 'bias', dtype: 'BF16', shape: [5], data: () => new Float32Array(5).fill(-1)},
    {name: 'ids', dtype: 'I32', shape: [2], data: () => Int32Array.of(3, 4)},
  ]);
  const seed = fs.readFileSync(file('seed.st'));
  let rejected = 0;
  for (let trial = 0; trial < 2000; ++trial) {
    const bytes = Buffer.from(seed);
    const mutations = 1 + Math.floor(Math.random() * 4);
    for (let m = 0; m < mutations; ++m) {
      const at = Math.floor(Math.random() * bytes.length);
      bytes[at] = Math.random() < 0.5 ? Math.floor(Math.random() * 256) : bytes[at] ^ (1 << Math.floor(Math.random() * 8));
    }
    const cut = Math.random() < 0.2 ? Math.floor(Math.random() * bytes.length) : bytes.length;
    fs.writeFileSync(file('fuzz.st'), bytes.subarray(0, cut));
    try {
      readSafetensors(file('fuzz.st'));
    } catch (e) {
      expect(e).toBeInstanceOf(Error);
      expect((e as Error).message).toContain('fuzz.st');
      rejected++;
    }
  }
  expect(rejected).toBeGreaterThan(100);
});
