/**
 * PEFT adapters: loading the three adapters peft 0.21 and the seed project write
 * (scripts/hf_checkpoint_fixtures.py) gives Transformers' logits; exporting writes files that peft
 * loads to our logits (test/fixtures/hf_checkpoints/export_*, checked by that script with peft).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';

import '../src';  // registers the kernels
import {relativeError} from './helpers/reference';
import {fromHfConfig} from '../models/qwen3_moe/config';
import {buildQwen3MoeForCausalLM} from '../models/qwen3_moe/model';
import {loadHfCheckpoint} from '../src/io/hf_checkpoint';
import {readSafetensors, writeSafetensors} from '../src/io/safetensors';
import {leafLayers} from '../src/layers/composite';
import {applyLora, mergeLora} from '../src/lora/apply_lora';
import {loadPeftAdapter} from '../src/lora/load_peft_adapter';
import {LoraLinearBase} from '../src/layers/lora_linear_base';
import {savePeftAdapter, SavePeftOptions} from '../src/lora/save_peft_adapter';
import {convertPeftAdapter} from '../src/lora/convert_peft_adapter';

const HF = path.join(__dirname, 'fixtures', 'hf_checkpoints');
const BASE = path.join(HF, 'hf5_saved');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peft-'));
afterAll(() => fs.rmSync(tmp, {recursive: true, force: true}));
beforeAll(() => tf.setBackend('cpu'));

const inputIds = () => {
  const t = readSafetensors(path.join(BASE, 'expected.safetensors')).get('input_ids')!;
  return tf.tensor(t.data, t.shape, 'int32');
};
const logitsOf = (model: tfl.LayersModel) => tf.tidy(() => (model.predict(inputIds()) as tf.Tensor).dataSync() as Float32Array);

function baseModel(): tfl.LayersModel {
  const model = buildQwen3MoeForCausalLM(fromHfConfig(JSON.parse(fs.readFileSync(path.join(BASE, 'config.json'), 'utf8'))));
  loadHfCheckpoint(model, BASE);
  return model;
}

const adapted = (model: tfl.LayersModel) =>
    leafLayers(model).filter((l): l is LoraLinearBase => l instanceof LoraLinearBase && l.adapter !== undefined);

describe.each([
  ['peft_attention', 'q/k/v/o and the router, rank and alpha patterns (peft)'],
  ['peft_experts', "fused experts through target_parameters, gate_up's shared A (peft)"],
  ['peft_experts_v4', 'per-expert modules (Transformers 4 layout)'],
])('%s: %s', adapter => {
  const dir = path.join(HF, adapter);
  const expected = readSafetensors(path.join(dir, 'expected.safetensors'));

  test('loads into our layout and gives the adapted logits, unmerged and merged', () => {
    const model = baseModel();
    loadPeftAdapter(model, dir);
    for (const [name, t] of expected) {
      const m = /^fused\.(.+)\.lora_([AB])\.weight$/.exec(name);
      if (!m) continue;
      const layer = leafLayers(model).find(l => l.name === m[1]) as LoraLinearBase;
      const v = layer.adapter![m[2] as 'A' | 'B'];
      expect(v.shape).toEqual(t.shape);
      expect(relativeError(v.read().dataSync(), t.data)).toBe(0);
    }
    const unmerged = expected.get(adapter.endsWith('v4') ? 'peft_unmerged_logits' : 'unmerged_logits')!.data;
    expect(relativeError(logitsOf(model), unmerged)).toBeLessThanOrEqual(1e-5);
    mergeLora(model);
    expect(relativeError(logitsOf(model), expected.get('logits')!.data)).toBeLessThanOrEqual(1e-5);
    // Only the adapters train.
    expect(model.trainableWeights.every(w => /lora_[AB]/.test(w.name))).toBe(true);
    expect(model.trainableWeights.length).toBe(2 * adapted(model).length);
    model.dispose();
  });
});

test('an adapter saved by peft is written back byte for byte (fused layout, shared gate/up A, nested wrappers)', () => {
  for (const adapter of ['peft_experts', 'peft_attention']) {
    const model = baseModel();
    loadPeftAdapter(model, path.join(HF, adapter));
    const out = path.join(tmp, adapter);
    savePeftAdapter(model, out, {baseModel: '../hf5_saved'});
    const [ours, theirs] = [out, path.join(HF, adapter)].map(d => readSafetensors(path.join(d, 'adapter_model.safetensors')));
    expect([...ours.keys()].sort()).toEqual([...theirs.keys()].sort());
    for (const [name, t] of theirs) {
      expect(ours.get(name)!.shape).toEqual(t.shape);
      expect(relativeError(ours.get(name)!.data, t.data)).toBe(0);
    }
    // The same modules, ranks and scalings as peft's config: re-importing gives the same adapters.
    const again = baseModel();
    loadPeftAdapter(again, out);
    expect(relativeError(logitsOf(again), logitsOf(model))).toBe(0);
    for (const m of [model, again]) m.dispose();
  }
});

// The exports that scripts/hf_checkpoint_fixtures.py loads with peft (its `--verify-only` checks that
// peft's merged and unmerged models give `ours.safetensors`' logits). Set TFJS_MOE_WRITE_EXPORTS=1
// to rewrite them after a deliberate change of the format, then re-run that script.
const EXPORTS: Array<[string, SavePeftOptions, () => tfl.LayersModel]> = [
  ['export_fused', {expertLayout: 'fused'}, () => withAdapter('peft_experts_v4')],
  ['export_per_expert', {expertLayout: 'per-expert'}, () => withAdapter('peft_experts_v4')],
  ['export_fused_rslora', {expertLayout: 'fused'}, rsloraModel],
];

function withAdapter(adapter: string): tfl.LayersModel {
  const model = baseModel();
  loadPeftAdapter(model, path.join(HF, adapter));
  return model;
}

/** Our own LoRA: rsLoRA, a rank pattern, gate and up with their own A, the router; seeded values. */
function rsloraModel(): tfl.LayersModel {
  const model = baseModel();
  applyLora(model, {r: 2, alpha: 4, useRslora: true, rankPattern: {q_proj: 3}, alphaPattern: {down_proj: 6},
                    targets: ['q_proj', 'o_proj', 'gate', 'gate_proj', 'up_proj', 'down_proj']});
  adapted(model).forEach((layer, i) => {
    for (const [j, v] of [layer.adapter!.A, layer.adapter!.B].entries()) {
      v.write(tf.randomNormal(v.shape as number[], 0, 0.3, 'float32', 100 + 2 * i + j));
    }
  });
  return model;
}

test.each(EXPORTS)('%s: our export is what peft was shown to load to our logits', (name, options, make) => {
  const fixture = path.join(HF, name);
  const model = make();
  const logits = logitsOf(model);
  if (process.env.TFJS_MOE_WRITE_EXPORTS === '1') {
    savePeftAdapter(model, fixture, {...options, baseModel: '../hf5_saved'});
    writeSafetensors(path.join(fixture, 'ours.safetensors'), [{name: 'logits', dtype: 'F32', shape: [2, 7, 97], data: () => logits}]);
  }
  const out = path.join(tmp, name);
  savePeftAdapter(model, out, {...options, baseModel: '../hf5_saved'});
  for (const file of ['adapter_model.safetensors', 'adapter_config.json']) {
    expect(fs.readFileSync(path.join(out, file)).equals(fs.readFileSync(path.join(fixture, file)))).toBe(true);
  }
  expect(relativeError(logits, readSafetensors(path.join(fixture, 'ours.safetensors')).get('logits')!.data)).toBeLessThanOrEqual(1e-6);
  const again = baseModel();
  loadPeftAdapter(again, fixture);
  expect(relativeError(logitsOf(again), logits)).toBeLessThanOrEqual(1e-6);
  for (const m of [model, again]) m.dispose();
});

test('convertPeftAdapter rewrites an adapter in the other expert layout without building the model', () => {
  // per expert → fused: the same files as exporting from a model (export_fused, which peft loads to our logits)
  const fused = path.join(tmp, 'converted-fused');
  convertPeftAdapter(path.join(HF, 'peft_experts_v4'), fused, BASE, {expertLayout: 'fused'});
  for (const file of ['adapter_model.safetensors', 'adapter_config.json']) {
    expect(fs.readFileSync(path.join(fused, file)).equals(fs.readFileSync(path.join(HF, 'export_fused', file)))).toBe(true);
  }
  // peft's fused adapter → per expert: loads to peft's logits
  const perExpert = path.join(tmp, 'converted-per-expert');
  convertPeftAdapter(path.join(HF, 'peft_experts'), perExpert, BASE, {expertLayout: 'per-expert'});
  expect(JSON.parse(fs.readFileSync(path.join(perExpert, 'adapter_config.json'), 'utf8')).target_parameters).toBeNull();
  const model = baseModel();
  loadPeftAdapter(model, perExpert);
  const expected = readSafetensors(path.join(HF, 'peft_experts', 'expected.safetensors')).get('unmerged_logits')!.data;
  expect(relativeError(logitsOf(model), expected)).toBeLessThanOrEqual(1e-5);
  model.dispose();
  expect(() => convertPeftAdapter(fused, fused, BASE, {})).toThrow(/must differ from the input/);
});

test('bad adapters give one clear error naming the file or tensor', () => {
  const bad = path.join(tmp, 'bad');
  fs.mkdirSync(bad, {recursive: true});
  expect(() => loadPeftAdapter(baseModel(), bad)).toThrow(/adapter_config.json: ENOENT/);
  const write = (config: object) => fs.writeFileSync(path.join(bad, 'adapter_config.json'), JSON.stringify(config));
  write({peft_type: 'LORA', r: 2, lora_alpha: 4, use_dora: true});
  expect(() => loadPeftAdapter(baseModel(), bad)).toThrow(/DoRA adapters are not supported/);
  write({peft_type: 'IA3', r: 2, lora_alpha: 4});
  expect(() => loadPeftAdapter(baseModel(), bad)).toThrow(/peft_type IA3 is not supported/);
  write({peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: 'q_proj|v_proj'});
  expect(() => loadPeftAdapter(baseModel(), bad)).toThrow(/regular expression is not supported/);
  write({peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj']});
  const tensor = (name: string, shape: number[]) => ({name, dtype: 'F32' as const, shape, data: () => new Float32Array(shape[0] * shape[1])});
  writeSafetensors(path.join(bad, 'adapter_model.safetensors'), [tensor('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', [2, 16])]);
  expect(() => loadPeftAdapter(baseModel(), bad)).toThrow(/model.layers.0.self_attn.q_proj has lora_B missing/);
  writeSafetensors(path.join(bad, 'adapter_model.safetensors'), [tensor('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', [2, 15]),
                                                                 tensor('base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight', [16, 2])]);
  expect(() => loadPeftAdapter(baseModel(), bad)).toThrow(/lora_A of model.layers.0.self_attn.q_proj is \[2,15\], the layer expects \[2,16\]/);
  writeSafetensors(path.join(bad, 'adapter_model.safetensors'), [tensor('base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight', [2, 16]),
                                                                 tensor('base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight', [16, 2])]);
  expect(() => loadPeftAdapter(baseModel(), bad)).toThrow(/the model has no linear layer model.layers.9.self_attn.q_proj/);
  expect(() => savePeftAdapter(baseModel(), path.join(tmp, 'none'))).toThrow(/the model has no LoRA adapters/);
});
