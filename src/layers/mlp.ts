/** The dense SwiGLU MLP of Qwen3 layers without experts: down_proj(silu(gate_proj(x)) · up_proj(x)). */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type {LayerArgs} from '@tensorflow/tfjs-layers/dist/engine/topology';

import {asConfig, built, CompositeLayer} from './composite';
import {Linear} from './linear';
import {LoraOptions} from './lora';

export interface DenseMlpArgs extends LayerArgs {
  hiddenSize: number;
  intermediateSize: number;
  /** LoRA adapters by child name (gate_proj, up_proj, down_proj). */
  lora?: Record<string, LoraOptions>;
}

/** silu(g) · u = g · sigmoid(g) · u. */
export function swiglu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(gate, tf.sigmoid(gate)), up);
}

export class DenseMlp extends CompositeLayer {
  static className = 'MoeFused>DenseMlp';
  readonly args: DenseMlpArgs;
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;

  constructor(args: DenseMlpArgs) {
    super(args);
    this.args = args;
    const linear = (child: string, inFeatures: number, units: number) =>
        built(new Linear({name: `${this.name}.${child}`, units, lora: args.lora?.[child]}), [null, inFeatures]);
    this.gate_proj = linear('gate_proj', args.hiddenSize, args.intermediateSize);
    this.up_proj = linear('up_proj', args.hiddenSize, args.intermediateSize);
    this.down_proj = linear('down_proj', args.intermediateSize, args.hiddenSize);
  }

  children(): tfl.layers.Layer[] {
    return [this.gate_proj, this.up_proj, this.down_proj];
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return inputShape as tfl.Shape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: {training?: boolean}): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    return tf.tidy(() => this.down_proj.call(swiglu(this.gate_proj.call(x, kwargs), this.up_proj.call(x, kwargs)), kwargs));
  }

  override getConfig(): tf.serialization.ConfigDict {
    const {name: _n, trainable: _t, ...shape} = this.args;
    return asConfig({...super.getConfig(), ...shape, lora: loraOf(this, this.children())});
  }
}
tf.serialization.registerClass(DenseMlp);

/**
 * The LoRA options under a composite, keyed by dotted child path relative to it
 * (q_proj, or self_attn.q_proj one level up), for getConfig.
 */
export function loraOf(parent: tfl.layers.Layer, children: tfl.layers.Layer[]): Record<string, LoraOptions> {
  const lora: Record<string, LoraOptions> = {};
  for (const child of children) {
    const key = child.name.slice(parent.name.length + 1);
    if (child instanceof CompositeLayer) {
      for (const [path, options] of Object.entries(loraOf(child, child.children()))) lora[`${key}.${path}`] = options;
    } else {
      const options = (child as {lora?: LoraOptions}).lora;
      if (options) lora[key] = options;
    }
  }
  return lora;
}

/** The entries of `lora` below child `prefix`, with the prefix removed. */
export function loraBelow(lora: Record<string, LoraOptions> | undefined, prefix: string): Record<string, LoraOptions> {
  const below: Record<string, LoraOptions> = {};
  for (const [path, options] of Object.entries(lora ?? {})) {
    if (path.startsWith(`${prefix}.`)) below[path.slice(prefix.length + 1)] = options;
  }
  return below;
}
