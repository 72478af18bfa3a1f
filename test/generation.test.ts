/**
 * Generation with a KV cache against Hugging Face Transformers: fixtures written by
 * scripts/generation_fixtures.py (transformers 5.24 generate(), greedy, on the hf5_saved checkpoint)
 * hold prompts, generated ids and every step's logits for one prompt, a left-padded batch of two
 * and a batch that stops at eos; and the probabilities after Transformers' sampling warpers.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {BACKENDS, useBackend} from './helpers/backends';
import {relativeError} from './helpers/reference';
import {fromHfConfig} from '../models/qwen3_moe/config';
import {buildQwen3MoeForCausalLM, causalLmParts} from '../models/qwen3_moe/model';
import '../src';
import {forwardCached} from '../src/generation/cached_forward';
import {generate} from '../src/generation/generate';
import {KvCache} from '../src/generation/kv_cache';
import {warpLogits} from '../src/generation/logits_warpers';
import {Rng} from '../src/generation/rng';
import {argmax, sampleIndex} from '../src/generation/sampling';
import {loadHfCheckpoint} from '../src/io/hf_checkpoint';
import {HostTensor, readSafetensors} from '../src/io/safetensors';
import {applyLora} from '../src/lora/apply_lora';

const ROOT = path.join(__dirname, 'fixtures', 'generation');
const CASES = JSON.parse(fs.readFileSync(path.join(ROOT, 'cases.json'), 'utf8'));
const FIXTURE = readSafetensors(path.join(ROOT, 'generation.safetensors'));
const MODEL_DIR = path.join(ROOT, CASES.model);
const HF_CONFIG = JSON.parse(fs.readFileSync(path.join(MODEL_DIR, 'config.json'), 'utf8'));
const V = HF_CONFIG.vocab_size as number;

const get = (key: string): HostTensor => FIXTURE.get(key) ?? fail(`fixture ${key} missing`);
function fail(message: string): never {
  throw new Error(message);
}

/** Rows of an int tensor [B, N] as number arrays. */
const rows = (t: HostTensor): number[][] => {
  const [B, N] = t.shape;
  return Array.from({length: B}, (_, b) => Array.from(t.data.subarray(b * N, (b + 1) * N)));
};

/** The prompts of a case without their left padding. */
const prompts = (name: string): number[][] => {
  const ids = rows(get(`${name}.prompt_ids`)), mask = rows(get(`${name}.attention_mask`));
  return ids.map((row, b) => row.filter((_, i) => mask[b][i] === 1));
};

function loadModel(): tfl.LayersModel {
  const model = buildQwen3MoeForCausalLM(fromHfConfig(HF_CONFIG));
  expect(loadHfCheckpoint(model, MODEL_DIR).unused).toEqual([]);
  return model;
}

/** The last position's logits [V] of a cache-free forward pass over one unpadded sequence. */
function fullForwardLast(model: tfl.LayersModel, ids: number[]): Float32Array {
  return tf.tidy(() => {
    const logits = model.predict(tf.tensor2d([ids], undefined, 'int32')) as tf.Tensor;
    return tf.slice(logits, [0, ids.length - 1, 0], [1, 1, V]);
  }).dataSync() as Float32Array;
}

/** Each step's logits against cache-free passes over every row's own prefix (no padding). */
function expectCacheFreeLogits(model: tfl.LayersModel, promptRows: number[][], tokens: number[][], logits: Float32Array[]) {
  logits.forEach((step, s) => promptRows.forEach((prompt, b) => {
    const expected = fullForwardLast(model, [...prompt, ...tokens[b].slice(0, s)]);
    expect(relativeError(step.subarray(b * V, (b + 1) * V), expected)).toBeLessThanOrEqual(1e-5);
  }));
}

/** Each step's logits against Transformers' (output_logits [N, B, V]), row by row. */
function expectTransformersLogits(name: string, logits: Float32Array[]) {
  const expected = get(`${name}.logits`);
  const [N, B] = expected.shape;
  expect(logits.length).toBe(N);
  for (let s = 0; s < N; ++s) {
    for (let b = 0; b < B; ++b) {
      const at = (s * B + b) * V;
      expect(relativeError(logits[s].subarray(b * V, (b + 1) * V), expected.data.subarray(at, at + V))).toBeLessThanOrEqual(1e-4);
    }
  }
}

describe.each(BACKENDS.filter(b => b !== 'fallback'))('generation with a KV cache on %s', backend => {
  let model: tfl.LayersModel;
  beforeAll(async () => {
    await useBackend(backend);
    model = loadModel();
  });
  afterAll(() => model.dispose());

  test.each(['single', 'batch', 'eos'])('%s: greedy ids and every step\'s logits are Transformers\'', async name => {
    const c = CASES.cases[name];
    const promptRows = prompts(name);
    const {tokens, logits} = await generate(model, promptRows, {
      maxNewTokens: c.max_new_tokens, eosTokenIds: c.eos_token_id ?? undefined, padTokenId: c.pad_token_id, outputLogits: true,
    });
    expect(tokens).toEqual(rows(get(`${name}.generated_ids`)));
    expectTransformersLogits(name, logits!);
    if (name !== 'eos') expectCacheFreeLogits(model, promptRows, tokens, logits!);  // eos: finished rows read pads
  });

  test('eos: the first row stops early and gets the pad token; the batch stops before maxNewTokens', async () => {
    const eos: number[] = CASES.cases.eos.eos_token_id;  // row 0 makes eos[0] at step 2, row 1 eos[1] at step 4
    const {tokens} = await generate(model, prompts('eos'), {maxNewTokens: 10, eosTokenIds: eos, padTokenId: 0});
    expect(tokens[0].slice(2)).toEqual([eos[0], 0, 0]);
    expect(tokens[1]).toHaveLength(5);
    expect(tokens[1][4]).toBe(eos[1]);
    // no padTokenId: Transformers pads with eos_token_id[0]
    const padded = await generate(model, prompts('eos'), {maxNewTokens: 10, eosTokenIds: eos});
    expect(padded.tokens[0].slice(2)).toEqual([eos[0], eos[0], eos[0]]);
  });

  test('a prompt fed in chunks, then token by token, gives the cache-free logits (positions offset by the cache)', () => {
    const [prompt] = prompts('single');
    const parts = causalLmParts(model);
    const cache = new KvCache(1, parts.layers.length);
    const feed = (ids: number[]) => {
      const logits = forwardCached(parts, tf.tensor2d([ids], undefined, 'int32'), cache);
      const values = logits.dataSync() as Float32Array;
      logits.dispose();
      return values;
    };
    feed(prompt.slice(0, 2));
    expect(cache.length).toBe(2);
    let sequence = [...prompt];
    let logits = feed(prompt.slice(2));
    for (let s = 0; s < 4; ++s) {
      expect(relativeError(logits, fullForwardLast(model, sequence))).toBeLessThanOrEqual(1e-5);
      const next = argmax(logits);
      sequence = [...sequence, next];
      logits = feed([next]);
    }
    expect(cache.length).toBe(sequence.length);
    cache.dispose();
    expect(() => cache.past(0)).toThrow(/used after dispose/);
  });

  test('LoRA adapters (nonzero B) take part: cached logits equal cache-free ones, and differ from the base model\'s', async () => {
    const lora = loadModel();
    const adapted = applyLora(lora, {r: 2, alpha: 4, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate', 'gate_proj', 'up_proj', 'down_proj']});
    for (const layer of adapted) {
      const B = layer.adapter!.B;
      B.write(tf.randomNormal(B.shape as number[], 0, 0.3, 'float32', 7));
    }
    const promptRows = prompts('batch');
    const {tokens, logits} = await generate(lora, promptRows, {maxNewTokens: 6, outputLogits: true});
    expectCacheFreeLogits(lora, promptRows, tokens, logits!);
    const base = await generate(model, promptRows, {maxNewTokens: 1, outputLogits: true});
    expect(relativeError(logits![0], base.logits![0])).toBeGreaterThan(1e-2);
    lora.dispose();
  });

  test('seeded sampling reproduces; other seeds give other tokens; draws stay inside top-k', async () => {
    const promptRows = prompts('batch');
    const options = {maxNewTokens: 16, doSample: true, temperature: 1.5, topK: 0, topP: 0.95};
    const a = await generate(model, promptRows, {...options, seed: 1});
    const b = await generate(model, promptRows, {...options, seed: 1});
    const c = await generate(model, promptRows, {...options, seed: 2});
    expect(b.tokens).toEqual(a.tokens);
    expect(c.tokens).not.toEqual(a.tokens);
    const greedy = await generate(model, promptRows, {maxNewTokens: 16});
    expect(a.tokens).not.toEqual(greedy.tokens);

    const topK = await generate(model, promptRows, {maxNewTokens: 16, doSample: true, topK: 3, seed: 3, outputLogits: true});
    topK.logits!.forEach((step, s) => topK.tokens.forEach((row, r) => {
      const scores = step.subarray(r * V, (r + 1) * V);
      const third = Float32Array.from(scores).sort()[V - 3];
      expect(scores[row[s]]).toBeGreaterThanOrEqual(third);
    }));
  });

  test('no tensor leaks: the count is flat across steps and back to the start afterwards', async () => {
    const before = tf.memory().numTensors;
    const perStep: number[] = [];
    const onStep = () => perStep.push(tf.memory().numTensors);
    await generate(model, prompts('batch'), {maxNewTokens: 12, onStep});
    await generate(model, prompts('batch'), {maxNewTokens: 12, doSample: true, topP: 0.9, seed: 5, onStep});
    expect(new Set(perStep).size).toBe(1);  // the cache: 2 tensors per layer, replaced every step
    expect(perStep[0]).toBe(before + 2 * causalLmParts(model).layers.length);
    expect(tf.memory().numTensors).toBe(before);
  });

  test('bad input is reported, naming the argument', async () => {
    const ok = [[1, 2, 3]];
    await expect(generate(model, [[1, V, 2]], {maxNewTokens: 1})).rejects.toThrow(`prompts[0][1] = ${V} is not a token id in [0, ${V})`);
    await expect(generate(model, [ok[0], []], {maxNewTokens: 1})).rejects.toThrow('prompts[1] is empty');
    await expect(generate(model, [], {maxNewTokens: 1})).rejects.toThrow('prompts must hold at least one prompt');
    await expect(generate(model, ok, {maxNewTokens: -1})).rejects.toThrow('maxNewTokens must be an integer >= 0, got -1');
    await expect(generate(model, ok, {maxNewTokens: 1, eosTokenIds: [-1]})).rejects.toThrow('eosTokenIds[0] = -1 is not a token id');
    await expect(generate(model, ok, {maxNewTokens: 1, padTokenId: 1.5})).rejects.toThrow('padTokenId = 1.5 is not a token id');
    await expect(generate(model, ok, {maxNewTokens: 1, topP: 0})).rejects.toThrow('topP must be in (0, 1], got 0');
    await expect(generate(model, ok, {maxNewTokens: 1, topP: 1.5})).rejects.toThrow('topP must be in (0, 1], got 1.5');
    await expect(generate(model, ok, {maxNewTokens: 1, temperature: 0})).rejects.toThrow('temperature must be a positive number, got 0');
    await expect(generate(model, ok, {maxNewTokens: 1, topK: 2.5})).rejects.toThrow('topK must be an integer >= 0 (0: off), got 2.5');
    await expect(generate(model, ok, {maxNewTokens: 1, seed: 0.5})).rejects.toThrow('seed must be an integer, got 0.5');
    expect((await generate(model, ok, {maxNewTokens: 0})).tokens).toEqual([[]]);
  });
});

describe('sampling', () => {
  const warpers = (CASES.warpers as {temperature: number; top_k: number; top_p: number}[]).map((w, i) => [i, w.temperature, w.top_k, w.top_p]);
  test.each(warpers)('warpers %i (temperature %d, top-k %d, top-p %d) keep exactly Transformers\' tokens and probabilities',
                     (i, temperature, topK, topP) => {
    const logits = get(`warp.${i}.logits`), scores = get(`warp.${i}.scores`), probs = get(`warp.${i}.probs`);
    for (let r = 0; r < logits.shape[0]; ++r) {
      const row = (t: HostTensor) => t.data.subarray(r * V, (r + 1) * V);
      const warped = warpLogits(row(logits), {temperature, topK, topP});
      expect(Array.from(warped)).toEqual(Array.from(row(scores)));
      const max = Math.max(...warped);
      const exp = Array.from(warped, s => Math.exp(s - max));
      const total = exp.reduce((a, b) => a + b, 0);
      expect(relativeError(exp.map(e => e / total), row(probs))).toBeLessThanOrEqual(1e-6);
    }
  });

  test('sampleIndex inverts the cumulative distribution of softmax(scores); argmax takes the first maximum', () => {
    const scores = [0, -Infinity, Math.log(3)];  // p = [1/4, 0, 3/4]
    expect([0, 0.2, 0.26, 0.99].map(u => sampleIndex(scores, u))).toEqual([0, 0, 2, 2]);
    expect(argmax([1, 3, 3, 2])).toBe(1);
  });

  test('the seeded generator reproduces and is uniform', () => {
    const draw = (seed: number) => {
      const rng = new Rng(seed);
      return Array.from({length: 10000}, () => rng.next());
    };
    const a = draw(42);
    expect(draw(42)).toEqual(a);
    expect(draw(43)).not.toEqual(a);
    expect(a.every(u => u >= 0 && u < 1)).toBe(true);
    expect(Math.abs(a.reduce((s, u) => s + u, 0) / a.length - 0.5)).toBeLessThan(0.01);
  });
});
