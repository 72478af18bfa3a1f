/**
 * The key-value cache of a batch being generated: per decoder layer, the keys (after RoPE) and
 * values of every position so far, [B, kvHeads, T, head_dim] (stored once per KV head; attention
 * repeats them for its query heads), and per row the attention mask of those T positions.
 *
 * Position ids are Transformers' in generate(): cumsum(mask) − 1 over the prompt (0 at padding),
 * then one more per new token, i.e. a position's id is the number of real tokens before it. A
 * left-padded row is numbered 0, 1, ... from its first real token, as if it had no padding.
 */
import * as tf from '@tensorflow/tfjs-core';

import type {KeysValues} from '../layers/attention';

/** What a step of S new positions needs: their position ids and the mask over all T + S positions. */
export interface CacheStep {
  /** Position ids [B·S], row-major. */
  positions: number[];
  /** Attention mask of all T + S positions [B][T + S] (1 = token, 0 = padding). */
  mask: number[][];
}

export class KvCache {
  private readonly entries: (KeysValues | undefined)[];
  private mask: number[][];
  private disposed = false;

  constructor(readonly batchSize: number, numLayers: number) {
    this.entries = new Array(numLayers).fill(undefined);
    this.mask = Array.from({length: batchSize}, () => []);
  }

  /** T, the number of cached positions. */
  get length(): number {
    return this.mask[0].length;
  }

  /** Layer i's cached keys and values (undefined before the first step). */
  past(layer: number): KeysValues | undefined {
    this.checkLive();
    return this.entries[layer];
  }

  /** Position ids and the full mask for S new positions whose mask is newMask [B][S]; changes nothing. */
  plan(newMask: number[][]): CacheStep {
    this.checkLive();
    if (newMask.length !== this.batchSize) {
      throw new RangeError(`KvCache: the step's mask has ${newMask.length} rows, the cache ${this.batchSize}`);
    }
    const positions: number[] = [];
    const mask = newMask.map((row, b) => {
      let real = this.mask[b].reduce((n, m) => n + m, 0);
      for (const m of row) positions.push(m ? real++ : 0);
      return [...this.mask[b], ...row];
    });
    return {positions, mask};
  }

  /** Takes a step's results: its mask and every layer's keys and values of all T + S positions (the old ones are disposed). */
  append(step: CacheStep, layers: KeysValues[]): void {
    this.checkLive();
    if (layers.length !== this.entries.length) {
      throw new RangeError(`KvCache: ${layers.length} layers' keys and values for a cache of ${this.entries.length}`);
    }
    layers.forEach((kv, i) => {
      const old = this.entries[i];
      if (old) tf.dispose([old.keys, old.values]);
      this.entries[i] = kv;
    });
    this.mask = step.mask;
  }

  /** Frees every cached tensor; the cache cannot be used afterwards. */
  dispose(): void {
    for (const kv of this.entries) if (kv) tf.dispose([kv.keys, kv.values]);
    this.entries.fill(undefined);
    this.disposed = true;
  }

  private checkLive(): void {
    if (this.disposed) throw new Error('KvCache: used after dispose()');
  }
}
