/**
 * Qwen3 self-attention, as Transformers' eager implementation computes it:
 *   q = q_norm(x·Wqᵀ per head), k = k_norm(x·Wkᵀ per head), v = x·Wvᵀ   ([B, heads, S, head_dim])
 *   q, k ← RoPE(q), RoPE(k)           rotate-half convention, θ = ropeTheta, positions 0..S−1
 *                                     (callCached: the step's positions; k, v ← cached ‖ new)
 *   k, v ← each KV head repeated heads/kvHeads times (grouped-query attention)
 *   p = softmax(q·kᵀ / √head_dim + mask),   mask = 0 where allowed, float32 min elsewhere
 *   out = o_proj(p·v)
 * A key is allowed when it is not after the query (causal) and its attention-mask entry is 1.
 * Inputs: [x [B, S, H]] or [x, attentionMask [B, S]].
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type {LayerArgs} from '@tensorflow/tfjs-layers/dist/engine/topology';

import {asConfig, built, CompositeLayer} from './composite';
import {Linear} from './linear';
import {loraOf} from './mlp';
import {LoraOptions} from './lora';
import {RMSNorm} from './rms_norm';

/** The smallest float32, which Transformers adds to masked attention scores. */
const MASKED = -3.4028234663852886e38;

/** The sizes of Qwen3 attention (shared with the decoder layer that holds it). */
export interface AttentionShape {
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
}

export interface AttentionArgs extends LayerArgs, AttentionShape {
  /** LoRA adapters of the projections, by child name (q_proj, k_proj, v_proj, o_proj). */
  lora?: Record<string, LoraOptions>;
}

/** Keys (after RoPE) and values of the cached positions, per KV head: [B, kvHeads, T, head_dim] each. */
export interface KeysValues {
  keys: tf.Tensor;
  values: tf.Tensor;
}

/** What every attention layer of a step shares: RoPE tables of the new positions and the mask. */
export interface AttentionStep {
  /** cos and sin of the new tokens' positions: [S, d] (shared by the batch) or [B, 1, S, d]. */
  cos: tf.Tensor;
  sin: tf.Tensor;
  /** maskBias over all keys: [S, T + S] or [B, 1, S, T + S]. */
  bias: tf.Tensor;
}

/** The attention output [B, S, H], and the keys and values of all positions (past ‖ new). */
export interface AttentionOutput extends KeysValues {
  out: tf.Tensor;
}

export class Qwen3Attention extends CompositeLayer {
  static className = 'MoeFused>Qwen3Attention';
  readonly args: AttentionArgs;
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;
  readonly q_norm: RMSNorm;
  readonly k_norm: RMSNorm;

  constructor(args: AttentionArgs) {
    super(args);
    const {numHeads, numKvHeads, headDim, hiddenSize, rmsNormEps} = args;
    if (numHeads % numKvHeads !== 0) {
      throw new RangeError(`${this.name}: numHeads (${numHeads}) must be a multiple of numKvHeads (${numKvHeads})`);
    }
    if (headDim % 2 !== 0) throw new RangeError(`${this.name}: headDim must be even for RoPE, got ${headDim}`);
    this.args = args;
    const linear = (child: string, inFeatures: number, units: number) =>
        built(new Linear({name: `${this.name}.${child}`, units, lora: args.lora?.[child]}), [null, inFeatures]);
    this.q_proj = linear('q_proj', hiddenSize, numHeads * headDim);
    this.k_proj = linear('k_proj', hiddenSize, numKvHeads * headDim);
    this.v_proj = linear('v_proj', hiddenSize, numKvHeads * headDim);
    this.o_proj = linear('o_proj', numHeads * headDim, hiddenSize);
    this.q_norm = built(new RMSNorm({name: `${this.name}.q_norm`, eps: rmsNormEps}), [headDim]);
    this.k_norm = built(new RMSNorm({name: `${this.name}.k_norm`, eps: rmsNormEps}), [headDim]);
  }

  children(): tfl.layers.Layer[] {
    return [this.q_proj, this.k_proj, this.v_proj, this.o_proj, this.q_norm, this.k_norm];
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: {training?: boolean}): tf.Tensor {
    const [x, attentionMask] = Array.isArray(inputs) ? inputs : [inputs];
    return tf.tidy(() => {
      const S = x.shape[1] as number;
      const [cos, sin] = ropeTables(Array.from({length: S}, (_, p) => p), this.args.headDim, this.args.ropeTheta);
      return this.attend(x, {cos, sin, bias: maskBias(S, 0, attentionMask)}, kwargs).out;
    });
  }

  /**
   * Attention of S new tokens x [B, S, H] over the T cached ones and themselves: keys and values are
   * past ‖ new along the sequence axis. Returns the output and the keys and values of all T + S
   * positions, for the cache. No tidy here: the caller (a generation step) runs in one.
   */
  callCached(x: tf.Tensor, step: AttentionStep, past: KeysValues | undefined, kwargs: {training?: boolean}): AttentionOutput {
    return this.attend(x, step, kwargs, past);
  }

  private attend(x: tf.Tensor, step: AttentionStep, kwargs: {training?: boolean}, past?: KeysValues): AttentionOutput {
    const {numHeads, numKvHeads, headDim} = this.args;
    const [B, S] = x.shape;
    // [B, S, heads·d] → [B, heads, S, d]
    const heads = (t: tf.Tensor, n: number) => tf.transpose(tf.reshape(t, [B, S, n, headDim]), [0, 2, 1, 3]);
    const rope = (t: tf.Tensor) => tf.add(tf.mul(t, step.cos), tf.mul(rotateHalf(t), step.sin));
    const q = rope(heads(this.q_norm.call(tf.reshape(this.q_proj.call(x, kwargs), [B, S, numHeads, headDim])), numHeads));
    const kHeads = this.k_norm.call(tf.reshape(this.k_proj.call(x, kwargs), [B, S, numKvHeads, headDim]));
    const kNew = rope(heads(kHeads, numKvHeads));
    const vNew = heads(this.v_proj.call(x, kwargs), numKvHeads);
    const keys = past ? tf.concat([past.keys, kNew], 2) : kNew;
    const values = past ? tf.concat([past.values, vNew], 2) : vNew;
    const k = repeatKv(keys, numHeads / numKvHeads);
    const v = repeatKv(values, numHeads / numKvHeads);
    const scores = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(headDim)), step.bias);
    const out = tf.matMul(tf.softmax(scores), v);  // [B, heads, S, d]
    const merged = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [B, S, numHeads * headDim]);
    return {out: this.o_proj.call(merged, kwargs), keys, values};
  }

  override getConfig(): tf.serialization.ConfigDict {
    const {name: _n, trainable: _t, ...shape} = this.args;
    return asConfig({...super.getConfig(), ...shape, lora: loraOf(this, this.children())});
  }
}
tf.serialization.registerClass(Qwen3Attention);

/**
 * cos and sin [N, d] of RoPE at the given positions: angle(p, i) = p / θ^(2i/d) for i < d/2,
 * repeated for both halves.
 */
export function ropeTables(positions: ArrayLike<number>, d: number, theta: number): [tf.Tensor2D, tf.Tensor2D] {
  const half = d / 2, N = positions.length;
  const cos = new Float32Array(N * d), sin = new Float32Array(N * d);
  for (let i = 0; i < half; ++i) {
    const invFreq = Math.fround(1 / Math.pow(theta, Math.fround((2 * i) / d)));  // as Transformers, in float32
    for (let n = 0; n < N; ++n) {
      const angle = Math.fround(positions[n] * invFreq);
      cos[n * d + i] = cos[n * d + i + half] = Math.cos(angle);
      sin[n * d + i] = sin[n * d + i + half] = Math.sin(angle);
    }
  }
  return [tf.tensor2d(cos, [N, d]), tf.tensor2d(sin, [N, d])];
}

/** rotate_half(x) = [−x₂, x₁] for the two halves x₁, x₂ of the last axis. */
function rotateHalf(x: tf.Tensor): tf.Tensor {
  const [x1, x2] = tf.split(x, 2, -1);
  return tf.concat([tf.neg(x2), x1], -1);
}

/** [B, kv, S, d] → [B, kv·rep, S, d], head h = kv·rep + r reading KV head kv. */
function repeatKv(x: tf.Tensor, rep: number): tf.Tensor {
  if (rep === 1) return x;
  const [B, kv, S, d] = x.shape;  // rank-4 tiles only: tfjs has no rank-5 tile gradient
  return tf.reshape(tf.tile(tf.reshape(x, [B, kv, 1, S * d]), [1, 1, rep, 1]), [B, kv * rep, S, d]);
}

/**
 * The additive mask of S queries that follow T earlier positions, over all T + S keys: 0 where
 * query i (position T + i) may attend key j, float32 min elsewhere. Allowed: j ≤ T + i (causal)
 * and attentionMask [B, T + S] is 1 at j. Shape [S, T + S], or [B, 1, S, T + S] with a mask.
 */
export function maskBias(S: number, T: number, attentionMask?: tf.Tensor): tf.Tensor {
  const causal = tf.cast(tf.lessEqual(tf.range(0, T + S), tf.reshape(tf.range(T, T + S), [S, 1])), 'float32');  // key ≤ query
  const allowed = attentionMask ? tf.mul(causal, tf.reshape(tf.cast(attentionMask, 'float32'), [-1, 1, 1, T + S])) : causal;
  return tf.mul(tf.sub(1, allowed), MASKED);
}
