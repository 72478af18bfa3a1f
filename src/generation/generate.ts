/**
 * Text generation with a KV cache, as Transformers' generate() runs it for a decoder-only model:
 * the (left-padded) prompts go through the model at once, then one token per row per step, each
 * step reading the cached keys and values. Tokens are chosen greedily (argmax of the logits) or
 * drawn from softmax of the warped logits (temperature, top-k, top-p) with a seeded generator.
 * A row stops at one of eosTokenIds; it then receives padTokenId until every row has stopped or
 * maxNewTokens are made (Transformers' unfinished_sequences). Token ids in, token ids out.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {causalLmParts} from '../../models/qwen3_moe/model';
import {forwardCached} from './cached_forward';
import {KvCache} from './kv_cache';
import {checkSamplingOptions, SamplingOptions, warpLogits} from './logits_warpers';
import {Rng} from './rng';
import {argmax, sampleIndex} from './sampling';

export interface GenerateOptions extends SamplingOptions {
  /** The most tokens to add to each prompt (an integer >= 0). */
  maxNewTokens: number;
  /** A row stops once it makes one of these. */
  eosTokenIds?: number[];
  /** Filled in after a row stops; left padding of shorter prompts. Default eosTokenIds[0] (as Transformers), else 0. */
  padTokenId?: number;
  /** Draw tokens (with temperature, topK, topP) instead of taking the argmax. Default false. */
  doSample?: boolean;
  /** Seed of the sampling generator; the same seed gives the same tokens. Default: a random one. */
  seed?: number;
  /** Keep the raw logits of every step (GenerateOutput.logits). */
  outputLogits?: boolean;
  /** Called after every step with that step's tokens, one per row. */
  onStep?: (tokens: number[], step: number) => void;
}

export interface GenerateOutput {
  /** The new tokens of each row [B][N]: N ≤ maxNewTokens steps, padTokenId after a row's eos. */
  tokens: number[][];
  /** With outputLogits: each step's next-token logits [B·V], row-major (Transformers' output_logits). */
  logits?: Float32Array[];
}

/** Continues each prompt (token ids; prompts of different lengths are left-padded into one batch). */
export async function generate(model: tfl.LayersModel, prompts: number[][], options: GenerateOptions): Promise<GenerateOutput> {
  const parts = causalLmParts(model);
  const V = parts.embed.vocabSize;
  const {maxNewTokens, eosTokenIds: eos = [], doSample = false} = options;
  checkOptions(prompts, options, V);
  const pad = options.padTokenId ?? eos[0] ?? 0;
  const rng = new Rng(options.seed ?? Math.floor(Math.random() * 2 ** 32));

  const B = prompts.length, P = Math.max(...prompts.map(p => p.length));
  const mask = prompts.map(p => [...new Array(P - p.length).fill(0), ...new Array(p.length).fill(1)]);
  const ids = prompts.map(p => [...new Array(P - p.length).fill(pad), ...p]);
  const tokens: number[][] = prompts.map(() => []);
  const logits: Float32Array[] = [];
  const unfinished = new Array(B).fill(true);
  const cache = new KvCache(B, parts.layers.length);
  try {
    for (let step = 0; step < maxNewTokens && unfinished.some(u => u); ++step) {
      const stepLogits = tf.tidy(() => step === 0 ? forwardCached(parts, tf.tensor2d(ids, undefined, 'int32'), cache, mask)
          : forwardCached(parts, tf.tensor2d(tokens.map(t => [t[step - 1]]), undefined, 'int32'), cache));
      const values = await stepLogits.data() as Float32Array;
      stepLogits.dispose();
      if (options.outputLogits) logits.push(values);
      const next = tokens.map((_, b) => {
        const rowLogits = values.subarray(b * V, (b + 1) * V);
        const token = doSample ? sampleIndex(warpLogits(rowLogits, options), rng.next()) : argmax(rowLogits);
        return unfinished[b] ? token : pad;
      });
      next.forEach((token, b) => {
        tokens[b].push(token);
        if (eos.includes(token)) unfinished[b] = false;
      });
      options.onStep?.(next, step);
    }
  } finally {
    cache.dispose();
  }
  return options.outputLogits ? {tokens, logits} : {tokens};
}

function checkOptions(prompts: number[][], options: GenerateOptions, V: number): void {
  const checkId = (id: number, what: string) => {
    if (!(Number.isInteger(id) && id >= 0 && id < V)) throw new RangeError(`generate: ${what} = ${id} is not a token id in [0, ${V})`);
  };
  if (!Array.isArray(prompts) || prompts.length === 0) throw new RangeError('generate: prompts must hold at least one prompt');
  prompts.forEach((prompt, b) => {
    if (!Array.isArray(prompt) || prompt.length === 0) throw new RangeError(`generate: prompts[${b}] is empty`);
    prompt.forEach((id, i) => checkId(id, `prompts[${b}][${i}]`));
  });
  if (!(Number.isInteger(options.maxNewTokens) && options.maxNewTokens >= 0)) {
    throw new RangeError(`generate: maxNewTokens must be an integer >= 0, got ${options.maxNewTokens}`);
  }
  options.eosTokenIds?.forEach((id, i) => checkId(id, `eosTokenIds[${i}]`));
  if (options.padTokenId !== undefined) checkId(options.padTokenId, 'padTokenId');
  checkSamplingOptions(options, 'generate');
}
