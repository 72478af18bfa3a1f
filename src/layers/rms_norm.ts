/** RMSNorm as Qwen3 computes it (in float32): y = x / √(mean(x², last axis) + eps) · weight. */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type {LayerArgs} from '@tensorflow/tfjs-layers/dist/engine/topology';

export interface RMSNormArgs extends LayerArgs {
  eps: number;
}

export class RMSNorm extends tfl.layers.Layer {
  static className = 'MoeFused>RMSNorm';
  readonly eps: number;
  private weight!: tfl.LayerVariable;

  constructor(args: RMSNormArgs) {
    super(args);
    if (!(args.eps > 0)) throw new RangeError(`${this.name}: eps must be positive, got ${args.eps}`);
    this.eps = args.eps;
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const shape = inputShape as tfl.Shape;
    this.weight = this.addWeight('weight', [shape[shape.length - 1] as number], 'float32', tfl.initializers.ones());
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    return tf.tidy(() => {
      const variance = tf.mean(tf.square(x), -1, true);
      return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, this.eps))), this.weight.read());
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {...super.getConfig(), eps: this.eps};
  }
}
tf.serialization.registerClass(RMSNorm);
