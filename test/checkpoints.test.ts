/** Saving and loading models: Hugging Face checkpoints (both expert layouts) and tfjs's file://. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';  // no tfjs-node here: file:// must come from this package

import {relativeError} from './helpers/reference';
import {fromHfConfig} from '../models/qwen3_moe/config';
import {buildQwen3MoeForCausalLM} from '../models/qwen3_moe/model';
import {AdamW} from '../src';
import {registerFileHandlers} from '../src/io/file_handler';
import {convertHfCheckpoint} from '../src/io/convert_checkpoint';
import {HfCheckpoint, loadHfCheckpoint, saveHfCheckpoint, SaveOptions} from '../src/io/hf_checkpoint';
import {hfName, loadHfWeights} from '../src/io/hf_weights';
import {readSafetensors} from '../src/io/safetensors';
import {compileCausalLm} from '../src/train/causal_lm';

const FIXTURE = path.join(__dirname, 'fixtures', 'qwen3_moe', 'base');
const hf = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'config.json'), 'utf8'));
const io = readSafetensors(path.join(FIXTURE, 'io.safetensors'));
const ids = () => tf.tensor(io.get('input_ids')!.data, io.get('input_ids')!.shape, 'int32');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'checkpoints-'));
afterAll(() => fs.rmSync(dir, {recursive: true, force: true}));

function fixtureModel(): tfl.LayersModel {
  const model = buildQwen3MoeForCausalLM(fromHfConfig(hf));
  loadHfWeights(model, readSafetensors(path.join(FIXTURE, 'weights.safetensors')));
  return model;
}

beforeAll(() => tf.setBackend('cpu'));

test.each<[string, SaveOptions, number]>([
  ['fused, float32, one file', {layout: 'fused', dtype: 'F32'}, 1e-6],
  ['unfused, bf16, sharded', {layout: 'unfused', dtype: 'BF16', maxShardBytes: 4000}, 2e-2],
])('a checkpoint saved %s loads back into a fresh model', async (name, options, tolerance) => {
  const model = fixtureModel();
  const out = path.join(dir, name.replace(/\W+/g, '_'));
  saveHfCheckpoint(model, hf, out, options);
  if (options.maxShardBytes) {
    const index = JSON.parse(fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8'));
    expect(new Set(Object.values(index.weight_map)).size).toBeGreaterThan(1);
    expect(index.weight_map['model.layers.0.mlp.experts.10.down_proj.weight']).toBeDefined();
  }
  const fresh = buildQwen3MoeForCausalLM(fromHfConfig(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'))));
  expect(loadHfCheckpoint(fresh, out).unused).toEqual([]);
  const [a, b] = [model, fresh].map(m => (m.predict(ids()) as tf.Tensor).dataSync());
  expect(relativeError(b, a)).toBeLessThanOrEqual(tolerance);
});

const HF = path.join(__dirname, 'fixtures', 'hf_checkpoints');

// Checkpoints written by Transformers 5.24 and by hand in the layouts found in the wild
// (scripts/hf_checkpoint_fixtures.py), with the logits Transformers computes from them.
test.each([
  ['unfused_bf16_sharded', 'Transformers 4 layout: per-expert matrices, BF16, 2 shards with an index'],
  ['hf5_saved', "Transformers 5's save_pretrained: per-expert matrices, F32"],
  ['hf5_fused_saved', 'Transformers 5 fused: experts.gate_up_proj [E, 2I, H], experts.down_proj'],
  ['fused_f16', 'the seed layout: mlp.{gate,up,down}_proj.weight [E, out, in], F16, tied embeddings'],
])('%s (%s) loads and gives Transformers\' logits', async dir => {
  const folder = path.join(HF, dir);
  const config = fromHfConfig(JSON.parse(fs.readFileSync(path.join(folder, 'config.json'), 'utf8')));
  const model = buildQwen3MoeForCausalLM(config);
  const {unused} = loadHfCheckpoint(model, folder);
  expect(unused).toEqual([]);
  const expected = readSafetensors(path.join(folder, 'expected.safetensors'));
  const inputIds = tf.tensor(expected.get('input_ids')!.data, expected.get('input_ids')!.shape, 'int32');
  const logits = (model.predict(inputIds) as tf.Tensor).dataSync();
  expect(relativeError(logits, expected.get('logits')!.data)).toBeLessThanOrEqual(1e-5);
  model.dispose();
});

test.each(['unfused_bf16_sharded', 'hf5_saved', 'hf5_fused_saved', 'fused_f16'])(
  '%s converts to either layout, streamed, and still gives Transformers\' logits', name => {
  const folder = path.join(HF, name);
  const expected = readSafetensors(path.join(folder, 'expected.safetensors'));
  const inputIds = tf.tensor(expected.get('input_ids')!.data, expected.get('input_ids')!.shape, 'int32');
  const source = HfCheckpoint.open(folder);
  const storedDtypes = new Set(source.names().map(n => source.dtype(n)));
  source.close();
  for (const layout of ['fused', 'unfused'] as const) {
    const out = path.join(dir, `converted-${name}-${layout}`);
    convertHfCheckpoint(folder, out, {layout, maxShardBytes: 20000});
    const ckpt = HfCheckpoint.open(out);
    const names = ckpt.names();
    expect(names.some(n => /experts\.\d+\.down_proj\.weight$/.test(n))).toBe(layout === 'unfused');
    expect(names.some(n => /mlp\.down_proj\.weight$/.test(n))).toBe(layout === 'fused');
    expect(new Set(names.map(n => ckpt.dtype(n)))).toEqual(storedDtypes);  // each tensor keeps its dtype
    const model = buildQwen3MoeForCausalLM(fromHfConfig(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'))));
    expect(loadHfCheckpoint(model, ckpt).unused).toEqual([]);
    ckpt.close();
    const logits = (model.predict(inputIds) as tf.Tensor).dataSync();
    expect(relativeError(logits, expected.get('logits')!.data)).toBeLessThanOrEqual(1e-5);
    model.dispose();
  }
  expect(() => convertHfCheckpoint(folder, folder, {layout: 'fused'})).toThrow(/must differ from the input/);
  expect(() => convertHfCheckpoint(folder, path.join(dir, 'x'), {layout: 'stacked' as 'fused'})).toThrow(/layout must be 'fused' or 'unfused'/);
  for (const bnb of ['unfused_bnb', 'hf5_bnb']) {
    const out = path.join(dir, bnb);
    expect(() => convertHfCheckpoint(path.join(__dirname, 'fixtures', 'nf4', bnb), out, {layout: 'fused'}))
      .toThrow(/holds bitsandbytes 4-bit weights \(model\.layers\.\d+\..+\); converting 4-bit checkpoints is not supported/);
    expect(fs.existsSync(out)).toBe(false);
  }
});

test('a bitsandbytes 4-bit checkpoint (Transformers 5, NF4 attention) loads with its weights dequantised as bitsandbytes does', () => {
  const folder = path.join(__dirname, 'fixtures', 'nf4', 'hf5_bnb');
  const model = buildQwen3MoeForCausalLM(fromHfConfig(JSON.parse(fs.readFileSync(path.join(folder, 'config.json'), 'utf8'))));
  expect(loadHfCheckpoint(model, folder).unused).toEqual([]);
  // The same model from the float checkpoint, with bitsandbytes' own dequantised attention weights.
  const reference = buildQwen3MoeForCausalLM(fromHfConfig(JSON.parse(fs.readFileSync(path.join(HF, 'hf5_saved', 'config.json'), 'utf8'))));
  loadHfCheckpoint(reference, path.join(HF, 'hf5_saved'));
  const dequantised = readSafetensors(path.join(folder, 'expected.safetensors'));
  expect(dequantised.size).toBe(8);
  for (const weight of reference.weights) {
    const t = dequantised.get(hfName(weight));
    if (t) weight.write(tf.tensor(t.data, t.shape));
  }
  const ids = tf.tensor2d([[1, 5, 9, 2, 77, 3]], undefined, 'int32');
  const [a, b] = [model, reference].map(m => (m.predict(ids) as tf.Tensor).dataSync());
  expect(relativeError(a, b)).toBe(0);
});

test('loading reports what is missing or misshapen, naming the tensor', () => {
  const out = path.join(dir, 'broken');
  const model = fixtureModel();
  saveHfCheckpoint(model, hf, out);
  const bigger = buildQwen3MoeForCausalLM(fromHfConfig({...hf, vocab_size: 98}));
  expect(() => loadHfCheckpoint(bigger, out)).toThrow(/model.embed_tokens.weight has shape \[97,16\], the model expects \[98,16\]/);
  const deeper = buildQwen3MoeForCausalLM(fromHfConfig({...hf, num_hidden_layers: 3}));
  expect(() => loadHfCheckpoint(deeper, out)).toThrow(/no tensor for model.layers.2.input_layernorm.weight/);
  expect(() => HfCheckpoint.open(path.join(dir, 'nowhere'))).toThrow(/neither model.safetensors nor model.safetensors.index.json/);
});

test('file:// saves and loads a model with its optimizer without tfjs-node, atomically', async () => {
  registerFileHandlers();
  const model = fixtureModel();
  compileCausalLm(model, new AdamW({learningRate: 1e-3}));
  await model.fit(ids(), ids(), {epochs: 1, verbose: 0});
  const target = path.join(dir, 'tfjs-model');
  await model.save(`file://${target}`, {includeOptimizer: true});
  expect(fs.readdirSync(target).sort()).toEqual(['model.json', 'weights.bin']);
  const loaded = await tfl.loadLayersModel(`file://${target}/model.json`);
  expect(loaded.optimizer).toBeInstanceOf(AdamW);
  const [a, b] = [model, loaded].map(m => (m.predict(ids()) as tf.Tensor).dataSync());
  expect(relativeError(b, a)).toBe(0);
  await expect(tfl.loadLayersModel(`file://${dir}/none/model.json`)).rejects.toThrow(/no such model file/);
});
