/**
 * A Qwen3-MoE decoder layer (pre-norm residual):
 *   h = x + self_attn(input_layernorm(x), attentionMask)
 *   out = h + mlp(post_attention_layernorm(h))        mlp: SparseMoe, or DenseMlp
 * Inputs: [x [B, S, H]] or [x, attentionMask [B, S]].
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type {LayerArgs} from '@tensorflow/tfjs-layers/dist/engine/topology';

import {AttentionOutput, AttentionShape, AttentionStep, KeysValues, Qwen3Attention} from './attention';
import {asConfig, built, CompositeLayer} from './composite';
import {LoraOptions} from './lora';
import {DenseMlp, loraBelow, loraOf} from './mlp';
import {RMSNorm} from './rms_norm';
import {SparseMoe} from './sparse_moe';

export interface DecoderLayerArgs extends LayerArgs, AttentionShape {
  /** Sparse MoE MLP when set; otherwise a dense MLP of intermediateSize. */
  moe?: {moeIntermediateSize: number; numExperts: number; topK: number; normTopKProb: boolean; nf4?: {blocksize: number}};
  intermediateSize: number;
  /** LoRA adapters by dotted path below this layer (self_attn.q_proj, mlp.gate_proj, ...). */
  lora?: Record<string, LoraOptions>;
  /** Gradient checkpointing: keep no activations for the backward pass; recompute them there. */
  checkpoint?: boolean;
}

export class DecoderLayer extends CompositeLayer {
  static className = 'MoeFused>Qwen3MoeDecoderLayer';
  readonly args: DecoderLayerArgs;
  readonly input_layernorm: RMSNorm;
  readonly self_attn: Qwen3Attention;
  readonly post_attention_layernorm: RMSNorm;
  readonly mlp: SparseMoe | DenseMlp;

  constructor(args: DecoderLayerArgs) {
    super(args);
    this.args = args;
    const {hiddenSize, rmsNormEps} = args;
    const path = (child: string) => `${this.name}.${child}`;
    this.input_layernorm = built(new RMSNorm({name: path('input_layernorm'), eps: rmsNormEps}), [hiddenSize]);
    const {numHeads, numKvHeads, headDim, ropeTheta} = args;
    this.self_attn = new Qwen3Attention({
      name: path('self_attn'), hiddenSize, numHeads, numKvHeads, headDim, ropeTheta, rmsNormEps,
      lora: loraBelow(args.lora, 'self_attn'),
    });
    this.post_attention_layernorm = built(new RMSNorm({name: path('post_attention_layernorm'), eps: rmsNormEps}), [hiddenSize]);
    const mlpLora = loraBelow(args.lora, 'mlp');
    this.mlp = args.moe ? new SparseMoe({name: path('mlp'), hiddenSize, ...args.moe, lora: mlpLora})
                        : new DenseMlp({name: path('mlp'), hiddenSize, intermediateSize: args.intermediateSize, lora: mlpLora});
  }

  children(): tfl.layers.Layer[] {
    return [this.input_layernorm, this.self_attn, this.post_attention_layernorm, this.mlp];
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
  }

  /** Turns gradient checkpointing on or off (it applies while training). */
  set checkpoint(on: boolean) {
    this.args.checkpoint = on;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: {training?: boolean}): tf.Tensor {
    const [x, attentionMask] = Array.isArray(inputs) ? inputs : [inputs];
    const forward = (xt: tf.Tensor) => tf.tidy(() => {
      const normed = this.input_layernorm.call(xt);
      const h = tf.add(xt, this.self_attn.call(attentionMask ? [normed, attentionMask] : normed, kwargs));
      return this.mlpResidual(h, attentionMask, kwargs);
    });
    return this.args.checkpoint && kwargs.training ? this.checkpointed(forward, x) : forward(x);
  }

  /**
   * The layer on S new tokens x [B, S, H] after cached keys and values (Qwen3Attention.callCached):
   * returns the output and this layer's keys and values of all positions. Runs in the caller's tidy.
   */
  callCached(x: tf.Tensor, step: AttentionStep, past: KeysValues | undefined, kwargs: {training?: boolean}): AttentionOutput {
    const attended = this.self_attn.callCached(this.input_layernorm.call(x), step, past, kwargs);
    return {...attended, out: this.mlpResidual(tf.add(x, attended.out), undefined, kwargs)};
  }

  /** h + mlp(post_attention_layernorm(h)). */
  private mlpResidual(h: tf.Tensor, attentionMask: tf.Tensor | undefined, kwargs: {training?: boolean}): tf.Tensor {
    const normedH = this.post_attention_layernorm.call(h);
    return tf.add(h, this.mlp.call(attentionMask ? [normedH, attentionMask] : normedH, kwargs));
  }

  /**
   * out = forward(x) run off the tape, so no activation is kept; the backward pass runs forward
   * again on the saved input and differentiates that: d(x, W) = ∂⟨forward(x), dy⟩/∂(x, W).
   * Dropout draws again in the recomputation.
   */
  private checkpointed(forward: (x: tf.Tensor) => tf.Tensor, x: tf.Tensor): tf.Tensor {
    const variables = this.trainableWeights.map(w => w.read() as tf.Variable);
    const run = tf.customGrad((...args: unknown[]) => {
      const save = args[args.length - 1] as tf.GradSaveFunc;
      const input = args[0] as tf.Tensor;
      save([input]);
      return {
        value: forward(input),
        gradFunc: (dy: tf.Tensor | tf.Tensor[], [saved]: tf.Tensor[]) => nestedGradients(
            () => tf.sum(tf.mul(forward(saved), dy as tf.Tensor)) as tf.Scalar, [saved, ...variables]),
      };
    });
    return (run as (...t: tf.Tensor[]) => tf.Tensor)(x, ...variables);
  }

  override getConfig(): tf.serialization.ConfigDict {
    const {name: _n, trainable: _t, ...shape} = this.args;
    return asConfig({...super.getConfig(), ...shape, lora: loraOf(this, this.children())});
  }
}
tf.serialization.registerClass(DecoderLayer);

/**
 * d f / d xs, from inside a backward pass. tfjs's Engine.gradients() at gradient depth 0 starts a
 * tape and drops the active one on return, so the tape being walked is set aside meanwhile.
 */
function nestedGradients(f: () => tf.Scalar, xs: tf.Tensor[]): tf.Tensor[] {
  const state = (tf.engine() as unknown as {state: {gradientDepth: number; activeTape: unknown}}).state;
  const [depth, tape] = [state.gradientDepth, state.activeTape];
  state.gradientDepth = 0;
  try {
    return tf.engine().gradients(f, xs, undefined, true).grads;
  } finally {
    state.gradientDepth = depth;
    state.activeTape = tape;
  }
}
