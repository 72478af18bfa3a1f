/**
 * NF4 against bitsandbytes 0.50.2 (fixtures of scripts/nf4_fixtures.py, test/fixtures/nf4): our
 * quantiser reproduces its packed bytes, absmax, nested absmax and offset exactly, our dequantiser
 * its float32 output bit for bit; bitsandbytes 4-bit checkpoints (transformers' own and the Hub's
 * per-expert layout) are parsed, stacked and dequantised; bad input fails with clear errors.
 */
import * as path from 'path';

import {bytesToInt32Words, int32WordsToBytes} from '../src/quant/int32_words';
import {createDynamicMap} from '../src/quant/dynamic_code';
import {NF4_CODE, nf4Index} from '../src/quant/nf4_code';
import {decodeNf4Absmax, dequantiseNf4, Nf4Tensor, quantiseNf4, stackNf4} from '../src/quant/nf4';
import {torchMeanFloat32} from '../src/quant/torch_sum';
import {bnb4bitTensors, mapSource, parseBnbQuantState, readBnb4bit, readBnbExperts, TensorSource} from '../src/io/bnb_4bit';
import {HostTensor, readSafetensors} from '../src/io/safetensors';

const FIXTURES = path.join(__dirname, 'fixtures', 'nf4');
const cases = readSafetensors(path.join(FIXTURES, 'cases.safetensors'));
const source = mapSource(cases);
const get = (name: string): HostTensor => source.read(name);
const bytes = (name: string) => Uint8Array.from(get(name).data);
const floats = (name: string) => get(name).data as Float32Array;

/** Indices where two float32 arrays differ in bits (any NaN matches any NaN: payloads are not reproduced). */
function bitDiff(actual: Float32Array, expected: Float32Array): number[] {
  expect(actual.length).toBe(expected.length);
  const a = new Int32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Int32Array(expected.buffer, expected.byteOffset, expected.length);
  const out: number[] = [];
  for (let i = 0; i < a.length; ++i) {
    if (a[i] !== e[i] && !(Number.isNaN(actual[i]) && Number.isNaN(expected[i]))) out.push(i);
  }
  return out;
}

const byteDiff = (actual: Uint8Array, expected: Uint8Array) => {
  expect(actual.length).toBe(expected.length);
  return [...actual.keys()].filter(i => actual[i] !== expected[i]);
};

const variants = [...cases.keys()].filter(k => k.endsWith('.dequant')).map(k => k.slice(0, -'.dequant'.length));

test('fixtures cover the cases the brief asks for', () => {
  expect(variants).toEqual(expect.arrayContaining([
    'odd37.nf4', 'odd37.nf4_dq', 'n1000.nf4', 'n1000.nf4_dq', 'zeros.nf4', 'zeros.nf4_dq', 'range.nf4', 'range.nf4_dq',
    'ties.nf4', 'nonfinite.nf4', 'big.nf4_dq', 'mat24x48.nf4', 'mat24x48.nf4_dq', 'mat8x128.nf4']));
});

test('the NF4 code and the 8-bit dynamic code equal bitsandbytes\' bit for bit', () => {
  expect(bitDiff(NF4_CODE, floats('nf4_code'))).toEqual([]);
  expect(bitDiff(createDynamicMap(), floats('dynamic_map'))).toEqual([]);
});

describe.each(variants)('%s', variant => {
  const name = variant.split('.')[0], doubleQuant = variant.endsWith('_dq');
  const input = get(`${name}.input`);
  const ours = quantiseNf4(input.data as Float32Array, {blocksize: 64, doubleQuant, shape: input.shape});
  const theirs = readBnb4bit(source, `${variant}.weight`);

  test('packed bytes and absmax equal bitsandbytes\'', () => {
    expect(theirs.shape).toEqual(input.shape);
    expect(byteDiff(ours.packed, theirs.packed)).toEqual([]);
    if (ours.absmax instanceof Float32Array) {
      expect(bitDiff(ours.absmax, theirs.absmax as Float32Array)).toEqual([]);
    } else {
      const [a, b] = [ours.absmax, theirs.absmax as Exclude<Nf4Tensor['absmax'], Float32Array>];
      expect(bitDiff(a.offsets, b.offsets)).toEqual([]);
      expect(byteDiff(a.codes, b.codes)).toEqual([]);
      expect(bitDiff(a.nestedAbsmax, b.nestedAbsmax)).toEqual([]);
      expect(bitDiff(a.nestedCode, b.nestedCode)).toEqual([]);
    }
  });

  test('dequantised values equal bitsandbytes\' float32 output bit for bit', () => {
    const expected = floats(`${variant}.dequant`);
    expect(bitDiff(dequantiseNf4(theirs), expected)).toEqual([]);
    expect(bitDiff(dequantiseNf4(ours), expected)).toEqual([]);
  });

  test(doubleQuant ? 'writing refuses double-quantised absmax' : 'written as bitsandbytes writes it, byte for byte', () => {
    const written = bnb4bitTensors(`${variant}.weight`, () => ours, input.shape, 64, 'float32');
    if (doubleQuant) {
      expect(() => written[1].data()).toThrow(`${variant}.weight: double-quantised absmax cannot be written`);
      return;
    }
    const expected = [...cases.keys()].filter(k => k.startsWith(`${variant}.weight`)).sort();
    expect(written.map(t => t.name).sort()).toEqual(expected);
    for (const t of written) {
      const stored = get(t.name);
      expect([t.name, t.shape]).toEqual([t.name, stored.shape]);
      expect([t.name, t.dtype]).toEqual([t.name, stored.dtype === 'int32' ? 'U8' : 'F32']);
      const data = t.data();
      if (data instanceof Float32Array) expect(bitDiff(data, stored.data as Float32Array)).toEqual([]);
      else expect(byteDiff(Uint8Array.from(data), Uint8Array.from(stored.data))).toEqual([]);
    }
  });
});

test('edge cases behave as bitsandbytes: zero blocks, the clamped zero tail, ties, NaN and Inf', () => {
  const zeros = readBnb4bit(source, 'zeros.nf4.weight');
  expect((zeros.absmax as Float32Array)[1]).toBe(0);                       // a zero block: absmax 0, codes 7
  expect((zeros.absmax as Float32Array)[4]).toBe(Math.fround(1e-38));      // a zero tail: clamped
  expect([...zeros.packed.subarray(32, 64)].every(b => b === 0x77)).toBe(true);
  const ties = readBnb4bit(source, 'ties.nf4.weight');                     // value on a midpoint: the lower code
  const tieCodes = [...dequantiseNf4(ties).subarray(0, 15)].map(v => NF4_CODE.indexOf(v));
  expect(tieCodes).toEqual([...Array(15).keys()]);
  expect(nf4Index(NaN)).toBe(15);
  const nonfinite = dequantiseNf4(readBnb4bit(source, 'nonfinite.nf4.weight'));
  expect(nonfinite.subarray(0, 64).every(Number.isNaN)).toBe(true);       // a NaN poisons its block
  const infBlock = readBnb4bit(source, 'nonfinite.nf4.weight').packed.subarray(32, 64);
  expect((readBnb4bit(source, 'nonfinite.nf4.weight').absmax as Float32Array)[1]).toBe(Infinity);
  expect([...infBlock].flatMap(b => [b >> 4, b & 15]).filter(c => c !== 7)).toEqual([15]);  // x/Inf = 0, Inf/Inf = NaN → 15
  expect(nonfinite[64 + 9]).toBe(Infinity);                                // 1.0 · Inf
  expect(Number.isNaN(nonfinite[64 + 8])).toBe(true);                      // 0.0 · Inf
  expect(() => quantiseNf4(get('nonfinite.input').data as Float32Array, {doubleQuant: true}))
    .toThrow('block 0 has absmax NaN; double quantisation needs finite data');
});

test('torch\'s float32 mean order is reproduced (the double-quantisation offset)', () => {
  // Not an exact sum: 1 + 2^-24·k summed in torch's order; a naive left-to-right float32 sum differs.
  const x = Float32Array.from({length: 1000}, (_, i) => (i % 10 === 0 ? 1 : 2 ** -24 * (i % 7)));
  let naive = 0;
  x.forEach(v => naive = Math.fround(naive + v));
  const json = parseBnbQuantState(bytes('big.nf4_dq.weight.quant_state.bitsandbytes__nf4'));
  const big = quantiseNf4(floats('big.input'), {doubleQuant: true});
  expect((big.absmax as {offsets: Float32Array}).offsets[0]).toBe(Math.fround(json.nested_offset!));
  expect(torchMeanFloat32(x)).not.toBe(Math.fround(naive / 1000));
});

describe('checkpoints', () => {
  const hf5 = readSafetensors(path.join(__dirname, 'fixtures', 'hf_checkpoints', 'hf5_saved', 'model.safetensors'));

  test('transformers\' save_pretrained of a bitsandbytes NF4 model (double quant) parses and dequantises exactly', () => {
    const ckpt = mapSource(readSafetensors(path.join(FIXTURES, 'hf5_bnb', 'model.safetensors')));
    const expected = readSafetensors(path.join(FIXTURES, 'hf5_bnb', 'expected.safetensors'));
    expect(expected.size).toBe(8);  // q/k/v/o_proj of 2 layers; transformers 5 leaves its 3-D experts unquantised
    for (const [name, want] of expected) {
      const t = readBnb4bit(ckpt, name);
      expect(t.dtype).toBe('float32');
      expect(t.shape).toEqual(want.shape);
      expect(bitDiff(dequantiseNf4(t), want.data as Float32Array)).toEqual([]);
      const requantised = quantiseNf4(hf5.get(name)!.data as Float32Array, {doubleQuant: true, shape: want.shape});
      expect(byteDiff(requantised.packed, t.packed)).toEqual([]);
      expect(bitDiff(decodeNf4Absmax(requantised), decodeNf4Absmax(t))).toEqual([]);
    }
  });

  test('per-expert weights stack into [E, out, in]; a fused weight quantised whole reads as one tensor', () => {
    const ckpt = mapSource(readSafetensors(path.join(FIXTURES, 'unfused_bnb', 'model.safetensors')));
    const expected = readSafetensors(path.join(FIXTURES, 'unfused_bnb', 'expected.safetensors'));
    const E = 11, mlp = 'model.layers.0.mlp';
    for (const proj of ['gate', 'up', 'down'] as const) {
      const stacked = readBnbExperts(ckpt, mlp, proj, E);
      expect(stacked.groups).toBe(1);  // the fused [E, out, in] tensor exists, so it wins
      expect(bitDiff(dequantiseNf4(stacked), expected.get(`${mlp}.${proj}_proj.weight`)!.data as Float32Array)).toEqual([]);
      const perExpert: TensorSource = {has: n => !n.startsWith(`${mlp}.${proj}_proj`) && ckpt.has(n), read: n => ckpt.read(n)};
      const fromExperts = readBnbExperts(perExpert, mlp, proj, E);
      const [out, inFeatures] = proj === 'down' ? [16, 3] : [3, 16];
      expect(fromExperts.shape).toEqual([E, out, inFeatures]);
      expect(fromExperts.groups).toBe(E);
      const values = dequantiseNf4(fromExperts);
      for (let e = 0; e < E; ++e) {
        const name = `${mlp}.experts.${e}.${proj}_proj.weight`;
        expect(bitDiff(values.subarray(e * out * inFeatures, (e + 1) * out * inFeatures), expected.get(name)!.data as Float32Array)).toEqual([]);
        const ours = quantiseNf4(hf5.get(name)!.data as Float32Array, {doubleQuant: true, shape: [out, inFeatures]});
        expect(byteDiff(ours.packed, readBnb4bit(ckpt, name).packed)).toEqual([]);
      }
      // our own stacking of our own quantisation gives the same stacked tensor
      const ourStack = stackNf4(Array.from({length: E}, (_, e) => quantiseNf4(
        hf5.get(`${mlp}.experts.${e}.${proj}_proj.weight`)!.data as Float32Array, {doubleQuant: true, shape: [out, inFeatures]})));
      expect(byteDiff(ourStack.packed, fromExperts.packed)).toEqual([]);
      expect(bitDiff(decodeNf4Absmax(ourStack), decodeNf4Absmax(fromExperts))).toEqual([]);
    }
  });
});

test('int32 words: 4 bytes per word, little-endian, zero-padded; nibbles decode in bitsandbytes\' order', () => {
  const words = bytesToInt32Words(Uint8Array.of(0x01, 0x02, 0x03, 0xf4, 0x05));
  expect([...words]).toEqual([0xf4030201 | 0, 0x05]);
  expect([...int32WordsToBytes(words, 5)]).toEqual([0x01, 0x02, 0x03, 0xf4, 0x05]);
  // What a kernel does: code(i) from the words, times the block's absmax.
  const t = readBnb4bit(source, 'n1000.nf4_dq.weight');
  const w = bytesToInt32Words(t.packed), absmax = decodeNf4Absmax(t);
  const decoded = Float32Array.from({length: 1000}, (_, i) => {
    const byte = (w[i >> 3] >>> (8 * ((i >> 1) & 3))) & 0xff;
    return NF4_CODE[(byte >> (4 * (1 - (i & 1)))) & 0xf] * absmax[Math.floor(i / 64)];
  });
  expect(bitDiff(decoded, floats('n1000.nf4_dq.dequant'))).toEqual([]);
  expect(() => int32WordsToBytes(words, 9)).toThrow('byteLength 9 must be an integer in [0, 8]');
});

describe('bad input gives clear errors', () => {
  const state = (json: unknown) => Uint8Array.from(Buffer.from(JSON.stringify(json)));
  const good = {quant_type: 'nf4', blocksize: 64, dtype: 'float32', shape: [37]};

  test('quant state JSON', () => {
    expect(parseBnbQuantState(state(good))).toEqual(good);
    expect(() => parseBnbQuantState(state({...good, quant_type: 'fp4'}))).toThrow('quant_type fp4 is not supported (only nf4)');
    expect(() => parseBnbQuantState(Uint8Array.of(0x7b))).toThrow('not UTF-8 JSON');
    expect(() => parseBnbQuantState(state({...good, blocksize: 0}))).toThrow('blocksize 0 must be a positive integer');
    expect(() => parseBnbQuantState(state({...good, dtype: 'int8'}))).toThrow('dtype "int8" is not one of float32, float16, bfloat16');
    expect(() => parseBnbQuantState(state({...good, shape: [2, -1]}))).toThrow('shape [2,-1] must be a list of positive integers');
    expect(() => parseBnbQuantState(state({...good, nested_blocksize: 256}))).toThrow('but not all of nested_blocksize');
  });

  test('checkpoint tensors', () => {
    const edited = (changes: Record<string, HostTensor | undefined>): TensorSource => {
      const m = new Map(cases);
      for (const [k, v] of Object.entries(changes)) {
        if (v) m.set(k, v);
        else m.delete(k);
      }
      return mapSource(m);
    };
    const w = 'n1000.nf4_dq.weight', w1 = 'n1000.nf4.weight';
    const fp4 = {dtype: 'int32' as const, shape: [2], data: Int32Array.of(123, 125)};
    expect(() => readBnb4bit(edited({[`${w1}.quant_state.bitsandbytes__fp4`]: fp4}), w1)).toThrow('quant_type fp4 is not supported (only nf4)');
    expect(() => readBnb4bit(source, 'nope')).toThrow('nope: no nope.quant_state.bitsandbytes__nf4 (not a bitsandbytes 4-bit weight)');
    expect(() => readBnb4bit(edited({[`${w}.nested_absmax`]: undefined}), w)).toThrow('disagree on double quantisation');
    expect(() => readBnb4bit(edited({[`${w1}.absmax`]: {dtype: 'float32', shape: [3], data: new Float32Array(3)}}), w1))
      .toThrow('n1000.nf4.weight.absmax: shape [3] has 3 values (expected 16)');
    expect(() => readBnb4bit(edited({[w1]: {dtype: 'float32', shape: [500, 1], data: new Float32Array(500)}}), w1))
      .toThrow('quant_storage other than uint8 is not supported');
    expect(() => readBnb4bit(edited({[w1]: {dtype: 'int32', shape: [3, 1], data: new Int32Array(3)}}), w1))
      .toThrow('3 packed bytes for shape [1000] (expected 500)');
    const map = Float32Array.from(NF4_CODE);
    map[3] = 0;
    expect(() => readBnb4bit(edited({[`${w1}.quant_map`]: {dtype: 'float32', shape: [16], data: map}}), w1)).toThrow('quant_map is not the NF4 code');
    expect(() => readBnbExperts(source, 'model.layers.0.mlp', 'gate', 2)).toThrow('neither model.layers.0.mlp.gate_proj.weight nor model.layers.0.mlp.experts.0.gate_proj.weight');
  });

  test('quantiser and stacking arguments', () => {
    const x = new Float32Array(128);
    expect(() => quantiseNf4(x, {blocksize: 48})).toThrow('quantiseNf4: blocksize 48 is not one of 32, 64, 128');
    expect(() => quantiseNf4(x, {shape: [3, 40]})).toThrow('shape [3,40] does not hold 128 values');
    expect(() => quantiseNf4(new Float32Array(0))).toThrow('data is empty');
    expect(() => stackNf4([])).toThrow('no tensors');
    expect(() => stackNf4([quantiseNf4(x), quantiseNf4(x, {shape: [2, 64]})])).toThrow('stackNf4: tensor 1 (shape [2,64]');
    expect(() => stackNf4([quantiseNf4(x), quantiseNf4(x, {doubleQuant: true})])).toThrow('double quantisation) differs from tensor 0');
    expect(() => stackNf4([quantiseNf4(new Float32Array(3)), quantiseNf4(new Float32Array(3))])).toThrow('need an even number of values (got 3)');
    const broken = quantiseNf4(x);
    expect(() => dequantiseNf4({...broken, packed: broken.packed.subarray(1)})).toThrow('packed has 63 entries (expected 64');
  });
});
