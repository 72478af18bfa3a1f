/**
 * The experts' linear layer of an MoE block: weight [E, out, in] (nn.Linear per expert,
 * stacked), applied with moeFusedLinear to rows grouped by expert. Inputs: [x [R, in],
 * groupSizes int32 [E]]. Takes LoRA: A [E, r, in], B [E, out, r].
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {moeFusedLinear} from '../ops/moe_fused_linear';
import {LoraLinearArgs, LoraLinearBase} from './lora_linear_base';

export interface MoeFusedLinearLayerArgs extends LoraLinearArgs {
  numExperts: number;
}

export class MoeFusedLinearLayer extends LoraLinearBase {
  static className = 'MoeFused>MoeFusedLinear';
  readonly numExperts: number;

  constructor(args: MoeFusedLinearLayerArgs) {
    super(args);
    if (!Number.isInteger(args.numExperts) || args.numExperts < 1) {
      throw new RangeError(`${this.name}: numExperts must be a positive integer, got ${args.numExperts}`);
    }
    this.numExperts = args.numExperts;
  }

  protected weightShape(inFeatures: number): number[] {
    return [this.numExperts, this.units, inFeatures];
  }

  protected loraShapes(inFeatures: number, r: number): [number[], number[]] {
    return [[this.numExperts, r, inFeatures], [this.numExperts, this.units, r]];
  }

  protected inputFeatures(inputShape: tfl.Shape | tfl.Shape[]): number {
    const x = (inputShape as tfl.Shape[])[0];
    return x[x.length - 1] as number;
  }

  /** Row m of x times w[g(m)]ᵀ, with the group sizes of this call. */
  protected product(x: tf.Tensor, w: tf.Tensor, inputs: tf.Tensor[]): tf.Tensor {
    return moeFusedLinear(x, w, inputs[1]);
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return [(inputShape as tfl.Shape[])[0][0], this.units];
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: {training?: boolean}): tf.Tensor {
    const list = inputs as tf.Tensor[];
    return tf.tidy(() => this.linear(list[0], list, kwargs.training === true));
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {...super.getConfig(), numExperts: this.numExperts};
  }
}
tf.serialization.registerClass(MoeFusedLinearLayer);
