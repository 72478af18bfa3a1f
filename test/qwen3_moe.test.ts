/**
 * The Qwen3-MoE model against Hugging Face Transformers: fixtures written by
 * scripts/qwen3_moe_fixtures.py (torch CPU + transformers 5, eager attention and experts) hold
 * random tiny models, their inputs, logits, losses, router decisions, and the gradients of LoRA
 * adapters. Our model loads the same weights and must reproduce them.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {BACKENDS, useBackend} from './helpers/backends';
import {relativeError} from './helpers/reference';
import {fromHfConfig} from '../models/qwen3_moe/config';
import {buildQwen3MoeForCausalLM, sparseBlocks} from '../models/qwen3_moe/model';
import {moeRoute} from '../src';
import {hfName, loadHfWeights} from '../src/io/hf_weights';
import {HostTensor, readSafetensors} from '../src/io/safetensors';
import {applyLora, mergeLora, unmergeLora} from '../src/lora/apply_lora';
import {causalLmLoss} from '../src/train/causal_lm_loss';
import {routerAuxLoss} from '../src/train/router_aux_loss';

const ROOT = path.join(__dirname, 'fixtures', 'qwen3_moe');
const CONFIGS = fs.readdirSync(ROOT).filter(d => fs.statSync(path.join(ROOT, d)).isDirectory());

interface Fixture {
  hf: Record<string, unknown> & {lora: {alpha: number; r: Record<string, number>; target_modules: string[]}};
  weights: Map<string, HostTensor>;
  io: Map<string, HostTensor>;
}

function fixture(name: string): Fixture {
  const dir = path.join(ROOT, name);
  return {
    hf: JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')),
    weights: readSafetensors(path.join(dir, 'weights.safetensors')),
    io: readSafetensors(path.join(dir, 'io.safetensors')),
  };
}

const tensorOf = (t: HostTensor) => tf.tensor(t.data, t.shape, t.dtype);

function setUp(f: Fixture): {model: tfl.LayersModel; inputs: tf.Tensor[]; labels: tf.Tensor} {
  const model = buildQwen3MoeForCausalLM(fromHfConfig(f.hf), {attentionMask: true});
  const inputs = [tensorOf(f.io.get('input_ids')!), tensorOf(f.io.get('attention_mask')!)];
  return {model, inputs, labels: tensorOf(f.io.get('labels')!)};
}

/** The model's loss as Transformers forms it: cross-entropy, plus coef · aux with output_router_logits. */
function modelLoss(model: tfl.LayersModel, labels: tf.Tensor, logits: tf.Tensor): tf.Scalar {
  const [layerLoss] = model.calculateLosses();
  return layerLoss ? tf.add(causalLmLoss(labels, logits), layerLoss) : causalLmLoss(labels, logits);
}

const near = (actual: number, expected: number) => Math.abs(actual - expected) / Math.abs(expected);

describe.each(BACKENDS.filter(b => b !== 'fallback'))('Qwen3-MoE against Transformers on %s', backend => {
  beforeAll(() => useBackend(backend));

  test.each(CONFIGS)('%s: logits, loss and router decisions', async name => {
    const f = fixture(name);
    const {model, inputs, labels} = setUp(f);
    const {unused} = loadHfWeights(model, f.weights);
    expect(unused.every(n => n.includes('.lora_'))).toBe(true);
    const blocks = sparseBlocks(model);
    blocks.forEach(b => b.recordRouterLogits = true);

    const logits = model.predict(inputs) as tf.Tensor;
    expect(relativeError(await logits.data(), f.io.get('logits')!.data)).toBeLessThanOrEqual(1e-5);
    expect(near((await causalLmLoss(labels, logits).data())[0], f.io.get('ce_loss')!.data[0])).toBeLessThanOrEqual(1e-5);
    expect(near((await modelLoss(model, labels, logits).data())[0], f.io.get('loss')!.data[0])).toBeLessThanOrEqual(1e-5);
    if (f.hf.output_router_logits) {
      expect(near((await routerAuxLoss(blocks).data())[0], f.io.get('aux_loss')!.data[0])).toBeLessThanOrEqual(1e-5);
    }

    expect(blocks.length).toBeGreaterThan(0);
    for (const block of blocks) {
      const layer = block.name.split('.')[2];
      const routerLogits = block.routerLogits!;
      expect(relativeError(await routerLogits.data(), f.io.get(`router.${layer}.logits`)!.data)).toBeLessThanOrEqual(1e-5);
      const routing = moeRoute(routerLogits, {topK: block.args.topK, normTopKProb: block.args.normTopKProb});
      expect(Array.from(await routing.expertIds.data())).toEqual(Array.from(f.io.get(`router.${layer}.expert_ids`)!.data));
      expect(relativeError(await routing.weights.data(), f.io.get(`router.${layer}.weights`)!.data)).toBeLessThanOrEqual(1e-5);
    }
    model.dispose();
  });

  test.each(CONFIGS)('%s: LoRA loss and gradients of the adapters', async name => {
    const f = fixture(name);
    const {model, inputs, labels} = setUp(f);
    const {lora} = f.hf;
    applyLora(model, {r: 1, alpha: lora.alpha, targets: lora.target_modules, rankPattern: lora.r});
    const {unused} = loadHfWeights(model, f.weights);
    expect(unused).toEqual([]);

    const variables = model.trainableWeights.map(w => w.read() as tf.Variable);
    expect(variables.length).toBe([...f.weights.keys()].filter(n => n.includes('.lora_')).length);
    const {value, grads} = tf.variableGrads(
        () => modelLoss(model, labels, model.apply(inputs, {training: true}) as tf.Tensor), variables);
    expect(near((await value.data())[0], f.io.get('lora_loss')!.data[0])).toBeLessThanOrEqual(1e-5);
    // Against the float64 model's gradients: Transformers' float32 ones carry their own rounding.
    for (const weight of model.trainableWeights) {
      const expected = f.io.get(`grad64.${hfName(weight)}`);
      expect(expected).toBeDefined();
      expect(relativeError(await grads[(weight.read() as tf.Variable).name].data(), expected!.data)).toBeLessThanOrEqual(1e-4);
    }
    model.dispose();
  });

  test('mergeLora folds the adapters into the weights (same logits); unmergeLora takes them out again', async () => {
    const f = fixture('base');
    const {model, inputs} = setUp(f);
    const {lora} = f.hf;
    applyLora(model, {r: 1, alpha: lora.alpha, targets: lora.target_modules, rankPattern: lora.r});
    loadHfWeights(model, f.weights);
    const base = model.weights.filter(w => w.originalName.endsWith('/weight'));
    const before = await Promise.all(base.map(w => w.read().data()));
    const withAdapters = await (model.predict(inputs) as tf.Tensor).data();
    expect(relativeError(withAdapters, f.io.get('lora_logits')!.data)).toBeLessThanOrEqual(1e-5);
    mergeLora(model);
    expect(relativeError(await (model.predict(inputs) as tf.Tensor).data(), withAdapters)).toBeLessThanOrEqual(1e-5);
    expect(() => mergeLora(model)).toThrow(/already merged/);
    unmergeLora(model);
    const after = await Promise.all(base.map(w => w.read().data()));
    before.forEach((w, i) => expect(relativeError(after[i], w)).toBeLessThanOrEqual(1e-6));
    model.dispose();
  });

  test('configs of Transformers 4 and 5 read alike; what the model lacks is reported', () => {
    const v5 = fixture('gqa').hf;
    const v4 = {...v5, num_experts: v5.num_local_experts, rope_theta: 1e6, num_local_experts: undefined, rope_parameters: undefined};
    expect(fromHfConfig(v4)).toEqual(fromHfConfig(v5));
    expect(() => fromHfConfig({...v5, rope_parameters: {rope_type: 'yarn', factor: 4}})).toThrow(/rope type "yarn" is not supported/);
    expect(() => fromHfConfig({...v5, hidden_act: 'gelu'})).toThrow(/hidden_act "gelu" is not supported/);
    expect(() => fromHfConfig({...v5, model_type: 'llama'})).toThrow(/model_type "llama" is not qwen3_moe/);
    expect(() => fromHfConfig({...v5, hidden_size: undefined})).toThrow(/missing hidden_size/);
    const model = buildQwen3MoeForCausalLM(fromHfConfig(v5));
    expect(() => applyLora(model, {r: 4, alpha: 8, targets: ['qkv']})).toThrow(/no layer matches the targets \["qkv"\]/);
    model.dispose();
  });
});
