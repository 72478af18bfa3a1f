/** Initialisers as PyTorch's nn.Linear and PEFT use them. */
import * as tfl from '@tensorflow/tfjs-layers';
import type {Initializer} from '@tensorflow/tfjs-layers/dist/initializers';

/**
 * nn.Linear's default: kaiming_uniform_(a = √5), i.e. U(−1/√fanIn, 1/√fanIn), with fanIn the
 * input features (the last dimension of a [..., out, in] weight). PEFT initialises lora_A so.
 */
export function linearUniform(fanIn: number): Initializer {
  const bound = 1 / Math.sqrt(Math.max(fanIn, 1));
  return tfl.initializers.randomUniform({minval: -bound, maxval: bound});
}
