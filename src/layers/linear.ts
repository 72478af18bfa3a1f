/** nn.Linear without bias, in Hugging Face's layout: weight [out, in], y = x · Wᵀ; takes LoRA. */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {LoraLinearBase} from './lora_linear_base';

export class Linear extends LoraLinearBase {
  static className = 'MoeFused>Linear';

  protected weightShape(inFeatures: number): number[] {
    return [this.units, inFeatures];
  }

  protected loraShapes(inFeatures: number, r: number): [number[], number[]] {
    return [[r, inFeatures], [this.units, r]];  // A [r, in], B [out, r]
  }

  protected inputFeatures(inputShape: tfl.Shape | tfl.Shape[]): number {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tfl.Shape;
    return shape[shape.length - 1] as number;
  }

  /** x [..., in] · wᵀ for w [out, in]. */
  protected product(x: tf.Tensor, w: tf.Tensor): tf.Tensor {
    const rows = tf.reshape(x, [-1, x.shape[x.rank - 1]]);
    return tf.reshape(tf.matMul(rows, w, false, true), [...x.shape.slice(0, -1), w.shape[0]]);
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return [...(inputShape as tfl.Shape).slice(0, -1), this.units];
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: {training?: boolean}): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    return tf.tidy(() => this.linear(x, [x], kwargs.training === true));
  }
}
tf.serialization.registerClass(Linear);
