/**
 * One forward step of a Qwen3-MoE causal LM with a KV cache: S new tokens per row after the T
 * cached positions (the prompt at once, then one token per step), through the model's own layers,
 * LoRA adapters included. Only the new positions are computed; attention reads the cached keys and
 * values. Returns the logits of the last new position, the next-token distribution.
 */
import * as tf from '@tensorflow/tfjs-core';

import {AttentionStep, KeysValues, maskBias, ropeTables} from '../layers/attention';
import type {CausalLmParts} from '../../models/qwen3_moe/model';
import {KvCache} from './kv_cache';

/**
 * ids [B, S] (int32) of the new tokens, newMask [B][S] their attention mask (1 = token, 0 =
 * padding; all ones when left out) → next-token logits [B, V]; the cache grows by S positions.
 */
export function forwardCached(parts: CausalLmParts, ids: tf.Tensor2D, cache: KvCache, newMask?: number[][]): tf.Tensor2D {
  const [B, S] = ids.shape;
  const T = cache.length;
  const step = cache.plan(newMask ?? Array.from({length: B}, () => new Array(S).fill(1)));
  const {headDim, ropeTheta} = parts.layers[0].args;
  const kwargs = {training: false};
  let layers: KeysValues[] = [];
  const logits = tf.tidy(() => {
    const [cos, sin] = ropeTables(step.positions, headDim, ropeTheta);
    const attention: AttentionStep = {
      cos: tf.reshape(cos, [B, 1, S, headDim]),
      sin: tf.reshape(sin, [B, 1, S, headDim]),
      bias: maskBias(S, T, tf.tensor2d(step.mask, [B, T + S], 'int32')),
    };
    let h = parts.embed.call(ids);
    layers = parts.layers.map((layer, i) => {
      const {out, keys, values} = layer.callCached(h, attention, cache.past(i), kwargs);
      h = out;
      return {keys: tf.keep(keys), values: tf.keep(values)};  // the cache's, past the tidy
    });
    const last = tf.slice(h, [0, S - 1, 0], [B, 1, -1]);  // only the last position's logits are needed
    return tf.reshape(parts.head.call(parts.norm.call(last), kwargs), [B, -1]) as tf.Tensor2D;
  });
  cache.append(step, layers);
  return logits;
}
