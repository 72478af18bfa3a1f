/**
 * Qwen3-MoE with NF4 experts (QLoRA): quantised on load from float checkpoints, or read from
 * bitsandbytes 4-bit ones; the same logits as a float model holding the dequantised experts;
 * adapters train on the frozen 4-bit base.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import '../src';
import {relativeError} from './helpers/reference';
import {fromHfConfig} from '../models/qwen3_moe/config';
import {buildQwen3MoeForCausalLM, BuildOptions} from '../models/qwen3_moe/model';
import {main} from '../src/cli/main';
import {HfCheckpoint, loadHfCheckpoint, saveHfCheckpoint} from '../src/io/hf_checkpoint';
import {hfName} from '../src/io/hf_weights';
import {readSafetensors, TensorToWrite, writeSafetensors} from '../src/io/safetensors';
import {MoeFusedLinearNf4Layer} from '../src/layers/moe_fused_linear_nf4';
import {leafLayers} from '../src/layers/composite';
import {applyLora} from '../src/lora/apply_lora';
import {dequantiseNf4, quantiseNf4, stackNf4} from '../src/quant/nf4';
import {AdamW} from '../src/train/adamw';
import {compileCausalLm} from '../src/train/causal_lm';

const HF5 = path.join(__dirname, 'fixtures', 'hf_checkpoints', 'hf5_saved');
const BNB = path.join(__dirname, 'fixtures', 'nf4', 'unfused_bnb');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qlora-'));
afterAll(() => fs.rmSync(tmp, {recursive: true, force: true}));
beforeAll(() => tf.setBackend('cpu'));

const hf = JSON.parse(fs.readFileSync(path.join(HF5, 'config.json'), 'utf8'));
const build = (options: BuildOptions = {}) => buildQwen3MoeForCausalLM(fromHfConfig(hf), options);
const ids = () => tf.tensor2d([[3, 14, 15, 92, 65, 35, 89], [79, 32, 38, 46, 26, 43, 38]], undefined, 'int32');
const logitsOf = (model: tfl.LayersModel) => tf.tidy(() => (model.predict(ids()) as tf.Tensor).dataSync() as Float32Array);
const EXPERT = /^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$/;

/** A float model whose expert weights are replaced by `experts(layer, proj, weights)`. */
function floatModelWith(experts: (layer: number, proj: string, w: Float32Array, shape: number[]) => Float32Array): tfl.LayersModel {
  const model = build();
  loadHfCheckpoint(model, HF5);
  for (const weight of model.weights) {
    const m = EXPERT.exec(hfName(weight));
    if (m) weight.write(tf.tensor(experts(Number(m[1]), m[2], weight.read().dataSync() as Float32Array, weight.shape as number[]), weight.shape as number[]));
  }
  return model;
}

/** Per expert, as bitsandbytes' Params4bit quantises (blocks of 64), then dequantised. */
function roundTripPerExpert(w: Float32Array, [E, out, inFeatures]: number[]): Float32Array {
  const result = new Float32Array(w.length), per = out * inFeatures;
  for (let e = 0; e < E; ++e) {
    result.set(dequantiseNf4(quantiseNf4(w.subarray(e * per, (e + 1) * per), {shape: [out, inFeatures]})), e * per);
  }
  return result;
}

test('a float checkpoint quantised on load gives the logits of the dequantised experts', () => {
  const model = build({expertsIn4bit: true});
  expect(loadHfCheckpoint(model, HF5).unused).toEqual([]);
  expect(leafLayers(model).filter(l => l instanceof MoeFusedLinearNf4Layer)).toHaveLength(6);
  // No float copy of the experts: their weights are the packed words and absmax only.
  expect(model.weights.some(w => EXPERT.test(hfName(w)))).toBe(false);
  const reference = floatModelWith((_l, _p, w, shape) => roundTripPerExpert(w, shape));
  const [q, f] = [logitsOf(model), logitsOf(reference)];
  expect(relativeError(q, f)).toBeLessThanOrEqual(1e-5);
  const full = build();
  loadHfCheckpoint(full, HF5);
  expect(relativeError(q, logitsOf(full))).toBeGreaterThan(1e-3);  // NF4 is a real approximation
  for (const m of [model, reference, full]) m.dispose();
});

test('bitsandbytes 4-bit experts load as stored: into the 4-bit model, or dequantised into a float one', () => {
  // hf5_saved with layer 0's experts replaced by bitsandbytes' per-expert 4-bit tensors (Transformers 4 layout).
  const dir = path.join(tmp, 'mixed');
  fs.mkdirSync(dir, {recursive: true});
  const tensors: TensorToWrite[] = [];
  const source = HfCheckpoint.open(HF5), bnb = HfCheckpoint.open(BNB);
  for (const name of source.names().filter(n => !/^model\.layers\.0\.mlp\.experts\./.test(n))) {
    tensors.push({name, dtype: 'F32', shape: source.shape(name)!, data: () => source.read(name).data});
  }
  for (const name of bnb.names().filter(n => /^model\.layers\.0\.mlp\.experts\./.test(n))) {
    tensors.push({name, dtype: bnb.dtype(name) as 'F32' | 'U8', shape: bnb.shape(name)!, data: () => bnb.read(name).data});
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  source.close();
  bnb.close();
  fs.copyFileSync(path.join(HF5, 'config.json'), path.join(dir, 'config.json'));

  const dequantised = readSafetensors(path.join(BNB, 'expected.safetensors'));  // bitsandbytes' own dequantisation
  const reference = floatModelWith((layer, proj, w, shape) => {
    if (layer !== 0) return roundTripPerExpert(w, shape);
    const per = shape[1] * shape[2], out = new Float32Array(w.length);
    for (let e = 0; e < shape[0]; ++e) out.set(dequantised.get(`model.layers.0.mlp.experts.${e}.${proj}_proj.weight`)!.data, e * per);
    return out;
  });
  const model = build({expertsIn4bit: true});
  expect(loadHfCheckpoint(model, dir).unused).toEqual([]);
  expect(relativeError(logitsOf(model), logitsOf(reference))).toBeLessThanOrEqual(1e-5);
  // A float model dequantises layer 0's experts exactly as bitsandbytes does.
  const float = build();
  expect(loadHfCheckpoint(float, dir).unused).toEqual([]);
  const layer0 = float.weights.find(w => hfName(w) === 'model.layers.0.mlp.down_proj.weight')!.read().dataSync();
  expect(Array.from(layer0.subarray(0, 48))).toEqual(Array.from(dequantised.get('model.layers.0.mlp.experts.0.down_proj.weight')!.data));
  for (const m of [model, reference, float]) m.dispose();
});

test('4-bit experts save as bitsandbytes tensors and load back as they are (unfused; fused when blocks tile experts)', () => {
  const same = (a: tfl.LayersModel, b: tfl.LayersModel) => {
    expect(b.weights.map(hfName)).toEqual(a.weights.map(hfName));
    a.weights.forEach((w, i) => expect([hfName(w), Array.from(b.weights[i].read().dataSync())]).toEqual([hfName(w), Array.from(w.read().dataSync())]));
    expect(Array.from(logitsOf(b))).toEqual(Array.from(logitsOf(a)));
  };
  // hf5_saved: 11 experts of 3·16 = 48 values, less than a block of 64: only one tensor per expert can hold them.
  const model = build({expertsIn4bit: true});
  loadHfCheckpoint(model, HF5);
  const unfused = path.join(tmp, 'saved-4bit');
  saveHfCheckpoint(model, hf, unfused, {layout: 'unfused', dtype: 'BF16'});
  const saved = readSafetensors(path.join(unfused, 'model.safetensors'));
  const expert = 'model.layers.1.mlp.experts.10.down_proj.weight';
  expect([expert, `${expert}.absmax`, `${expert}.quant_map`].map(n => saved.get(n)!.shape)).toEqual([[24, 1], [1], [16]]);
  expect(new TextDecoder().decode(Uint8Array.from(saved.get(`${expert}.quant_state.bitsandbytes__nf4`)!.data)))
    .toBe('{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [16, 3]}');
  expect(saved.has('model.layers.1.mlp.down_proj.weight')).toBe(false);
  const config = JSON.parse(fs.readFileSync(path.join(unfused, 'config.json'), 'utf8'));
  expect(config.quantization_config).toMatchObject({quant_method: 'bitsandbytes', load_in_4bit: true, bnb_4bit_quant_type: 'nf4',
                                                    bnb_4bit_compute_dtype: 'bfloat16', llm_int8_skip_modules: ['self_attn', 'gate', 'lm_head']});
  const reloaded = build({expertsIn4bit: true});
  expect(loadHfCheckpoint(reloaded, unfused).unused).toEqual([]);
  const nf4Of = (m: tfl.LayersModel) => leafLayers(m).filter((l): l is MoeFusedLinearNf4Layer => l instanceof MoeFusedLinearNf4Layer)
    .flatMap(l => [l.nf4.packed, l.nf4.absmax].map(t => Array.from(t.dataSync())));
  expect(nf4Of(reloaded)).toEqual(nf4Of(model));
  // BF16 rounds the float weights: compare the rest with the model loaded from what was saved.
  const again = path.join(tmp, 'saved-4bit-again');
  saveHfCheckpoint(reloaded, hf, again, {layout: 'unfused'});
  const twice = build({expertsIn4bit: true});
  loadHfCheckpoint(twice, again);
  same(reloaded, twice);
  const fused = path.join(tmp, 'saved-4bit-fused');
  expect(() => saveHfCheckpoint(model, hf, fused, {layout: 'fused'})).toThrow(
      /model\.layers\.0\.mlp\.gate_proj: its NF4 blocks of 64 do not tile one expert \(3·16 values\).*save with layout 'unfused'/);
  expect(fs.existsSync(path.join(fused, 'model.safetensors'))).toBe(false);

  // Experts of 4·16 = 64 values: one fused [E, out, in] tensor per projection, quantised as a whole.
  const hf64 = {...hf, moe_intermediate_size: 4};
  const build64 = () => buildQwen3MoeForCausalLM(fromHfConfig(hf64), {expertsIn4bit: true});
  const a = build64();
  for (const layer of leafLayers(a).filter((l): l is MoeFusedLinearNf4Layer => l instanceof MoeFusedLinearNf4Layer)) {
    const [E, out, inFeatures] = layer.nf4.shape;
    layer.setNf4Weights(stackNf4(Array.from({length: E}, () =>
        quantiseNf4(Float32Array.from({length: out * inFeatures}, () => Math.random() - 0.5), {shape: [out, inFeatures]}))));
  }
  saveHfCheckpoint(a, hf64, fused, {layout: 'fused'});
  const fusedFile = readSafetensors(path.join(fused, 'model.safetensors'));
  expect(fusedFile.get('model.layers.0.mlp.gate_proj.weight')!.shape).toEqual([11 * 32, 1]);
  expect(fusedFile.has('model.layers.0.mlp.experts.0.gate_proj.weight')).toBe(false);
  const b = build64();
  expect(loadHfCheckpoint(b, fused).unused).toEqual([]);
  same(a, b);
  for (const m of [model, reloaded, twice, a, b]) m.dispose();
});

test('QLoRA: adapters on the 4-bit experts train through model.fit; the NF4 base stays as loaded', async () => {
  const model = build({expertsIn4bit: true});
  loadHfCheckpoint(model, HF5);
  applyLora(model, {r: 4, alpha: 8, targets: ['q_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj']});
  compileCausalLm(model, new AdamW({learningRate: 1e-2}));
  const nf4 = leafLayers(model).filter((l): l is MoeFusedLinearNf4Layer => l instanceof MoeFusedLinearNf4Layer);
  const base = () => nf4.flatMap(l => l.nonTrainableWeights.map(w => Array.from(w.read().dataSync())));
  const before = base();
  expect(before).toHaveLength(12);
  expect(model.trainableWeights.every(w => /lora_[AB]/.test(w.name))).toBe(true);
  const history = await model.fit(ids(), ids(), {epochs: 5, verbose: 0});
  const losses = history.history.loss as number[];
  expect(losses[4]).toBeLessThan(losses[0]);
  expect(base()).toEqual(before);
  expect(() => nf4[0].mergeLora()).toThrow(/cannot be merged into an NF4 base/);
  model.dispose();
});

test('the CLI trains and generates with --load-in-4bit', async () => {
  // A model folder with a tokenizer: hf5_saved's vocabulary (97) is too small for the fixture tokenizer,
  // so the CLI's own default model is trained (full weights) and saved first.
  const quiet = [jest.spyOn(console, 'log').mockImplementation(() => {}), jest.spyOn(process.stderr, 'write').mockImplementation(() => true),
                 jest.spyOn(process.stdout, 'write').mockImplementation(() => true)];
  const errors: string[] = [];
  quiet.push(jest.spyOn(console, 'error').mockImplementation((...a) => void errors.push(a.join(' '))));
  try {
    const out = path.join(tmp, 'cli');
    expect(await main(['train', '--lora-r', '0', '--steps', '1', '--seq-len', '16', '--batch', '1', '--out', out])).toBe(0);
    const args = ['--model', path.join(out, 'model'), '--load-in-4bit', '--steps', '2', '--seq-len', '16', '--batch', '1', '--out', path.join(out, 'q')];
    expect(await main(['train', ...args])).toBe(0);
    expect(fs.existsSync(path.join(out, 'q', 'adapter', 'adapter_model.safetensors'))).toBe(true);
    expect(await main(['generate', '--model', path.join(out, 'model'), '--adapter', path.join(out, 'q', 'adapter'), '--load-in-4bit',
                       '--prompt', 'The', '--max-new-tokens', '2'])).toBe(0);
    expect(await main(['train', '--load-in-4bit', '--steps', '1'])).toBe(1);
    expect(errors.join('\n')).toMatch(/--load-in-4bit needs --model/);
  } finally {
    quiet.forEach(s => s.mockRestore());
  }
});

test('the CLI writes a checkpoint with NF4 experts (convert --load-in-4bit), and converts one as stored', async () => {
  const quiet = [jest.spyOn(console, 'log').mockImplementation(() => {})];
  const errors: string[] = [];
  quiet.push(jest.spyOn(console, 'error').mockImplementation((...a) => void errors.push(a.join(' '))));
  try {
    const out = path.join(tmp, 'cli-4bit'), again = path.join(tmp, 'cli-4bit-again');
    expect(await main(['convert', '--model', HF5, '--out', out, '--layout', 'unfused', '--load-in-4bit'])).toBe(0);
    expect(await main(['convert', '--model', out, '--out', again, '--layout', 'unfused', '--load-in-4bit'])).toBe(0);
    const expected = build({expertsIn4bit: true});
    loadHfCheckpoint(expected, HF5);
    for (const dir of [out, again]) {
      const model = build({expertsIn4bit: true});
      expect(loadHfCheckpoint(model, dir).unused).toEqual([]);
      expect(Array.from(logitsOf(model))).toEqual(Array.from(logitsOf(expected)));
      model.dispose();
    }
    expected.dispose();
    const fused = path.join(tmp, 'cli-4bit-fused');
    expect(await main(['convert', '--model', HF5, '--out', fused, '--load-in-4bit', '--dtype', 'F16'])).toBe(1);
    expect(await main(['convert', '--model', HF5, '--out', fused, '--load-in-4bit'])).toBe(1);
    expect(errors.join('\n')).toMatch(/--dtype must be one of F32, BF16[\s\S]*do not tile one expert/);
    expect(fs.existsSync(fused)).toBe(false);
    // Never over the input: the float checkpoint stays as it was.
    const copy = path.join(tmp, 'cli-4bit-in-place');
    fs.cpSync(HF5, copy, {recursive: true});
    const before = fs.readFileSync(path.join(copy, 'model.safetensors'));
    expect(await main(['convert', '--model', copy, '--out', `${copy}/`, '--layout', 'unfused', '--load-in-4bit'])).toBe(1);
    expect(errors.join('\n')).toMatch(/the output folder must differ from the input \(--out is --model\)/);
    expect(fs.readFileSync(path.join(copy, 'model.safetensors')).equals(before)).toBe(true);
  } finally {
    quiet.forEach(s => s.mockRestore());
  }
});
