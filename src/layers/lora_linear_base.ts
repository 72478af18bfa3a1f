/**
 * A linear map y = product(x, W) that can carry a LoRA adapter, as PEFT's LoraLayer does:
 *   y = product(x, W) + scaling · product(product(dropout(x), A), B)
 * with W frozen while the adapter is on. Subclasses say what `product` is (a dense x·Wᵀ, or the
 * grouped MoeFusedLinear) and what shapes W, A and B have.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type {LayerArgs} from '@tensorflow/tfjs-layers/dist/engine/topology';

import {linearUniform} from './initializers';
import {checkLoraOptions, loraScaling, LoraOptions} from './lora';

export interface LoraLinearArgs extends LayerArgs {
  /** Output features. */
  units: number;
  /** An adapter to create with the layer (also how a saved model restores one). */
  lora?: LoraOptions;
  /** Whether the adapter is merged into W (saved models keep the state). */
  loraMerged?: boolean;
}

export abstract class LoraLinearBase extends tfl.layers.Layer {
  readonly units: number;
  protected inFeatures = 0;
  protected weight!: tfl.LayerVariable;
  protected loraA?: tfl.LayerVariable;
  protected loraB?: tfl.LayerVariable;
  private loraOptions?: LoraOptions;
  private merged: boolean;

  constructor(args: LoraLinearArgs) {
    super(args);
    if (!Number.isInteger(args.units) || args.units < 1) {
      throw new RangeError(`${this.name}: units must be a positive integer, got ${args.units}`);
    }
    this.units = args.units;
    if (args.lora) checkLoraOptions(args.lora, this.name);
    this.loraOptions = args.lora;
    this.merged = args.loraMerged ?? false;
  }

  /** The shape of W for `inFeatures` inputs. */
  protected abstract weightShape(inFeatures: number): number[];
  /** The shapes of A and B for rank r. */
  protected abstract loraShapes(inFeatures: number, r: number): [number[], number[]];
  /** product(x, W) of this layer's kind, for W, A or B. */
  protected abstract product(x: tf.Tensor, w: tf.Tensor, inputs: tf.Tensor[]): tf.Tensor;

  /** Input features, from the input's last dimension. */
  protected abstract inputFeatures(inputShape: tfl.Shape | tfl.Shape[]): number;

  /** Adds the base weight: W, initialised as nn.Linear does. */
  protected buildBase(): void {
    this.weight = this.addWeight('weight', this.weightShape(this.inFeatures), 'float32', linearUniform(this.inFeatures));
  }

  /** product(x, W) for the base weight. */
  protected baseProduct(x: tf.Tensor, inputs: tf.Tensor[]): tf.Tensor {
    return this.product(x, this.weight.read(), inputs);
  }

  /** Freezes the base weight while an adapter trains. */
  protected freezeBase(): void {
    this.weight.trainable = false;
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    this.inFeatures = this.inputFeatures(inputShape);
    this.buildBase();
    if (this.loraOptions) this.addAdapter(this.loraOptions);
    this.built = true;
  }

  get lora(): LoraOptions | undefined {
    return this.loraOptions;
  }

  /** The shape of W ([out, in], or [E, out, in] for experts), whatever form W is held in. */
  get baseShape(): number[] {
    return this.weightShape(this.inFeatures);
  }

  /** The base weight W. */
  get kernel(): tfl.LayerVariable {
    return this.weight;
  }

  /** The adapter's A and B, when there is one. */
  get adapter(): {A: tfl.LayerVariable; B: tfl.LayerVariable} | undefined {
    return this.loraA && this.loraB ? {A: this.loraA, B: this.loraB} : undefined;
  }

  /**
   * Adds a LoRA adapter: A drawn like nn.Linear's weight, B zeros (so the layer's output does not
   * change), W frozen. Recompile a model after this: its trainable weights change.
   */
  enableLora(options: LoraOptions): void {
    if (this.loraOptions) throw new Error(`${this.name} already has a LoRA adapter`);
    checkLoraOptions(options, this.name);
    this.loraOptions = options;
    if (this.built) this.addAdapter(options);
  }

  private addAdapter(options: LoraOptions): void {
    const [aShape, bShape] = this.loraShapes(this.inFeatures, options.r);
    // Weight names are scoped by the layer being applied: during build that is this layer; an
    // adapter added later (enableLora) is outside any scope and spells the layer out itself.
    const scoped = (name: string) => this.built ? `${this.name}/${name}` : name;
    this.loraA = this.addWeight(scoped('lora_A'), aShape, 'float32', linearUniform(this.inFeatures));
    this.loraB = this.addWeight(scoped('lora_B'), bShape, 'float32', tfl.initializers.zeros());
    this.freezeBase();
  }

  /** W ← W + scaling·B·A; the adapter stays, and is skipped until unmergeLora(). */
  mergeLora(): void {
    this.applyDelta(+1, true);
  }

  /** W ← W − scaling·B·A, undoing mergeLora(). */
  unmergeLora(): void {
    this.applyDelta(-1, false);
  }

  private applyDelta(sign: number, merged: boolean): void {
    const adapter = this.adapter;
    if (!adapter || !this.loraOptions) throw new Error(`${this.name} has no LoRA adapter`);
    if (this.merged === merged) throw new Error(`${this.name}: the LoRA adapter is already ${merged ? '' : 'un'}merged`);
    const scale = sign * loraScaling(this.loraOptions);
    this.weight.write(tf.tidy(() => tf.add(this.weight.read(), tf.mul(tf.matMul(adapter.B.read(), adapter.A.read()), scale))));
    this.merged = merged;
  }

  /** y = product(x, W) + scaling · product(product(dropout(x), A), B). */
  protected linear(x: tf.Tensor, inputs: tf.Tensor[], training: boolean): tf.Tensor {
    const y = this.baseProduct(x, inputs);
    const adapter = this.adapter;
    if (!adapter || this.merged || !this.loraOptions) return y;
    const rate = this.loraOptions.dropout ?? 0;
    const xd = training && rate > 0 ? tf.dropout(x, rate) : x;
    const delta = this.product(this.product(xd, adapter.A.read(), inputs), adapter.B.read(), inputs);
    return tf.add(y, tf.mul(delta, loraScaling(this.loraOptions)));
  }

  override getConfig(): tf.serialization.ConfigDict {
    const config: tf.serialization.ConfigDict = {...super.getConfig(), units: this.units};
    if (this.loraOptions) Object.assign(config, {lora: {...this.loraOptions}, loraMerged: this.merged});
    return config;
  }
}
