/**
 * MoeFusedLinearLayer with a frozen NF4 base, for QLoRA: the experts' weight [E, out, in] is held
 * quantised (non-trainable weights `packed`, int32 words, and `absmax`, float32 per block, see
 * moeFusedLinearNf4) and decoded inside the kernel; a LoRA adapter A [E, r, in], B [E, out, r]
 * trains in float32 on top. The base starts as zeros: load it with setNf4Weights.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {moeFusedLinearNf4, Nf4Weights, nf4Weights} from '../ops/moe_fused_linear_nf4';
import {NF4_BLOCKSIZES, nf4Sizes, Nf4Tensor} from '../quant/nf4';
import {MoeFusedLinearLayer, MoeFusedLinearLayerArgs} from './moe_fused_linear';

export interface MoeFusedLinearNf4LayerArgs extends MoeFusedLinearLayerArgs {
  /** NF4 block size of the base weight (default 64, bitsandbytes' default). */
  blocksize?: number;
}

export class MoeFusedLinearNf4Layer extends MoeFusedLinearLayer {
  static override className = 'MoeFused>MoeFusedLinearNf4';
  readonly blocksize: number;
  private packed?: tfl.LayerVariable;
  private absmax?: tfl.LayerVariable;

  constructor(args: MoeFusedLinearNf4LayerArgs) {
    super(args);
    this.blocksize = args.blocksize ?? 64;
    if (!NF4_BLOCKSIZES.includes(this.blocksize)) {
      throw new RangeError(`${this.name}: blocksize ${this.blocksize} is not one of ${NF4_BLOCKSIZES.join(', ')}`);
    }
  }

  protected override buildBase(): void {
    const E = this.numExperts, N = this.units, K = this.inFeatures;
    if (E > 1 && (N * K) % 2 !== 0) throw new RangeError(`${this.name}: stacked NF4 experts need an even out·in (got ${N}·${K})`);
    const {bytes, blocks} = nf4Sizes(N * K, this.blocksize);
    const zeros = tfl.initializers.zeros();
    this.packed = this.addWeight('packed', [Math.ceil(E * bytes / 4)], 'int32', zeros, undefined, false);
    this.absmax = this.addWeight('absmax', [E * blocks], 'float32', zeros, undefined, false);
  }

  /** The base weight as the kernels read it. */
  get nf4(): Nf4Weights {
    if (!this.packed || !this.absmax) throw new Error(`${this.name} is not built yet`);
    return {packed: this.packed.read() as tf.Tensor1D, absmax: this.absmax.read() as tf.Tensor1D,
            shape: [this.numExperts, this.units, this.inFeatures], blocksize: this.blocksize};
  }

  /** Loads quantised experts [E, out, in] (quantiseNf4 + stackNf4, or readBnbExperts). */
  setNf4Weights(t: Nf4Tensor): void {
    const {shape, blocksize} = this.nf4;
    if (t.blocksize !== blocksize || t.shape.length !== 3 || t.shape.some((d, i) => d !== shape[i])) {
      throw new RangeError(`${this.name}: expected NF4 experts [${shape}] in blocks of ${blocksize}, ` +
                           `got [${t.shape}] in blocks of ${t.blocksize}`);
    }
    const w = nf4Weights(t);
    this.packed!.write(w.packed);
    this.absmax!.write(w.absmax);
    tf.dispose([w.packed, w.absmax]);
  }

  protected override baseProduct(x: tf.Tensor, inputs: tf.Tensor[]): tf.Tensor {
    return moeFusedLinearNf4(x, this.nf4, inputs[1]);
  }

  /** The base is frozen from the start. */
  protected override freezeBase(): void {}

  override get kernel(): tfl.LayerVariable {
    throw new Error(`${this.name}: the base weight is NF4 (see .nf4), there is no float kernel`);
  }

  override mergeLora(): void {
    throw new Error(`${this.name}: a LoRA adapter cannot be merged into an NF4 base (that would requantise it)`);
  }

  override unmergeLora(): void {
    this.mergeLora();
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {...super.getConfig(), blocksize: this.blocksize};
  }
}
tf.serialization.registerClass(MoeFusedLinearNf4Layer);
