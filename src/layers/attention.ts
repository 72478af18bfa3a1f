/**
 * Qwen3 self-attention, as Transformers' eager implementation computes it:
 *   q = q_norm(x·Wqᵀ per head), k = k_norm(x·Wkᵀ per head), v = x·Wvᵀ   ([B, heads, S, head_dim])
 *   q, k ← RoPE(q), RoPE(k)           rotate-half convention, θ = ropeTheta, positions 0..S−1
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
    const {numHeads, numKvHeads, headDim, ropeTheta} = this.args;
    return tf.tidy(() => {
      const [B, S] = x.shape;
      // [B, S, heads·d] → [B, heads, S, d]
      const heads = (t: tf.Tensor, n: number) => tf.transpose(tf.reshape(t, [B, S, n, headDim]), [0, 2, 1, 3]);
      const [cos, sin] = ropeTables(S, headDim, ropeTheta);
      const rope = (t: tf.Tensor) => tf.add(tf.mul(t, cos), tf.mul(rotateHalf(t), sin));
      const q = rope(heads(this.q_norm.call(tf.reshape(this.q_proj.call(x, kwargs), [B, S, numHeads, headDim])), numHeads));
      const kHeads = this.k_norm.call(tf.reshape(this.k_proj.call(x, kwargs), [B, S, numKvHeads, headDim]));
      const k = repeatKv(rope(heads(kHeads, numKvHeads)), numHeads / numKvHeads);
      const v = repeatKv(heads(this.v_proj.call(x, kwargs), numKvHeads), numHeads / numKvHeads);
      const scores = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(headDim)), maskBias(S, attentionMask));
      const out = tf.matMul(tf.softmax(scores), v);  // [B, heads, S, d]
      const merged = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [B, S, numHeads * headDim]);
      return this.o_proj.call(merged, kwargs);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    const {name: _n, trainable: _t, ...shape} = this.args;
    return asConfig({...super.getConfig(), ...shape, lora: loraOf(this, this.children())});
  }
}
tf.serialization.registerClass(Qwen3Attention);

/** cos and sin [S, d] of RoPE: angle(p, i) = p / θ^(2i/d) for i < d/2, repeated for both halves. */
function ropeTables(S: number, d: number, theta: number): [tf.Tensor2D, tf.Tensor2D] {
  const half = d / 2;
  const cos = new Float32Array(S * d), sin = new Float32Array(S * d);
  for (let i = 0; i < half; ++i) {
    const invFreq = Math.fround(1 / Math.pow(theta, Math.fround((2 * i) / d)));  // as Transformers, in float32
    for (let p = 0; p < S; ++p) {
      const angle = Math.fround(p * invFreq);
      cos[p * d + i] = cos[p * d + i + half] = Math.cos(angle);
      sin[p * d + i] = sin[p * d + i + half] = Math.sin(angle);
    }
  }
  return [tf.tensor2d(cos, [S, d]), tf.tensor2d(sin, [S, d])];
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

/** 0 where a query may attend a key, float32 min elsewhere: [S, S] or [B, 1, S, S]. */
function maskBias(S: number, attentionMask?: tf.Tensor): tf.Tensor {
  const causal = tf.linalg.bandPart(tf.ones([S, S]), -1, 0);  // 1 where key ≤ query
  const allowed = attentionMask ? tf.mul(causal, tf.reshape(tf.cast(attentionMask, 'float32'), [-1, 1, 1, S])) : causal;
  return tf.mul(tf.sub(1, allowed), MASKED);
}
