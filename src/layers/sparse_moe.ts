/**
 * Qwen3-MoE's sparse MoE block, a drop-in layer [B, S, H] → [B, S, H]:
 *   logits = gate(x)                       router, Linear H → E without bias
 *   (w, order) = moeRoute(logits, top-k)   softmax in float32, top-k, optional renormalisation
 *   rows = x[order.tokenIndex]             the T·k token copies, grouped by expert
 *   y = down_proj(silu(gate_proj(rows)) · up_proj(rows))   MoeFusedLinear, per expert
 *   out[t] = Σ_s w[t, s] · y[row of copy (t, s)]
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type {LayerArgs} from '@tensorflow/tfjs-layers/dist/engine/topology';

import {moeRoute} from '../ops/moe_route';
import {moeCombineRows, moeGatherRows} from '../ops/moe_rows';
import {asConfig, built, CompositeLayer} from './composite';
import {Linear} from './linear';
import {LoraOptions} from './lora';
import {loraOf, swiglu} from './mlp';
import {MoeFusedLinearLayer} from './moe_fused_linear';
import {MoeFusedLinearNf4Layer} from './moe_fused_linear_nf4';

export interface SparseMoeArgs extends LayerArgs {
  hiddenSize: number;
  moeIntermediateSize: number;
  numExperts: number;
  topK: number;
  normTopKProb: boolean;
  /** LoRA adapters by child name: gate (the router), gate_proj, up_proj, down_proj. */
  lora?: Record<string, LoraOptions>;
  /** Experts held frozen in NF4 (bitsandbytes' 4-bit format), for QLoRA. */
  nf4?: {blocksize: number};
}

export class SparseMoe extends CompositeLayer {
  static className = 'MoeFused>SparseMoe';
  readonly args: SparseMoeArgs;
  readonly gate: Linear;
  readonly gate_proj: MoeFusedLinearLayer;
  readonly up_proj: MoeFusedLinearLayer;
  readonly down_proj: MoeFusedLinearLayer;
  /**
   * When set, each call keeps its router logits [B·S, E] (on the tape, for the auxiliary loss)
   * and the attention mask [B·S] it was given, until the next call.
   */
  recordRouterLogits = false;
  routerLogits?: tf.Tensor2D;
  routerMask?: tf.Tensor1D;

  constructor(args: SparseMoeArgs) {
    super(args);
    if (!Number.isInteger(args.topK) || args.topK < 1 || args.topK > args.numExperts) {
      throw new RangeError(`${this.name}: topK must be an integer in [1, numExperts = ${args.numExperts}], got ${args.topK}`);
    }
    this.args = args;
    const {hiddenSize: H, moeIntermediateSize: I, numExperts: E} = args;
    const experts = (child: string, inFeatures: number, units: number) => {
      const layerArgs = {name: `${this.name}.${child}`, units, numExperts: E, lora: args.lora?.[child]};
      const layer = args.nf4 ? new MoeFusedLinearNf4Layer({...layerArgs, blocksize: args.nf4.blocksize})
                             : new MoeFusedLinearLayer(layerArgs);
      return built(layer, [[null, inFeatures], [E]]);
    };
    this.gate = built(new Linear({name: `${this.name}.gate`, units: E, lora: args.lora?.gate}), [null, H]);
    this.gate_proj = experts('gate_proj', H, I);
    this.up_proj = experts('up_proj', H, I);
    this.down_proj = experts('down_proj', I, H);
  }

  children(): tfl.layers.Layer[] {
    return [this.gate, this.gate_proj, this.up_proj, this.down_proj];
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return inputShape as tfl.Shape;
  }

  /** Inputs: x [B, S, H], or [x, attentionMask [B, S]] (the mask only matters to the auxiliary loss). */
  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: {training?: boolean}): tf.Tensor {
    const [x, attentionMask] = Array.isArray(inputs) ? inputs : [inputs];
    const {hiddenSize: H, topK, normTopKProb} = this.args;
    return tf.tidy(() => {
      const tokens = tf.reshape(x, [-1, H]);
      const logits = this.gate.call(tokens, kwargs) as tf.Tensor2D;
      if (this.recordRouterLogits) {
        this.routerLogits?.dispose();
        this.routerMask?.dispose();
        this.routerLogits = tf.keep(logits);
        this.routerMask = attentionMask ? tf.keep(tf.reshape(tf.cast(attentionMask, 'float32'), [-1])) : undefined;
      }
      const routing = moeRoute(logits, {topK, normTopKProb});
      const rows = moeGatherRows(tokens, routing.tokenIndex);
      const experts = (layer: MoeFusedLinearLayer, input: tf.Tensor) => layer.call([input, routing.groupSizes], kwargs);
      const y = experts(this.down_proj, swiglu(experts(this.gate_proj, rows), experts(this.up_proj, rows)));
      return tf.reshape(moeCombineRows(y, routing), x.shape);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    const {name: _n, trainable: _t, ...shape} = this.args;
    return asConfig({...super.getConfig(), ...shape, lora: loraOf(this, this.children())});
  }
}
tf.serialization.registerClass(SparseMoe);
