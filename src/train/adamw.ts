/**
 * AdamW as torch.optim.AdamW computes it, for model.fit:
 *   every `accumulationSteps` micro-batches (their gradients averaged):
 *     g ← g · min(1, maxGradNorm / ‖g‖₂)            global-norm clipping over all gradients
 *     lr_t = schedule(t)                             linear warm-up, then linear decay to 0
 *     θ ← θ · (1 − lr_t · weightDecay)               decoupled decay (not on 1-D weights: norms)
 *     θ ← Adam(θ, g, lr_t)                           tfjs's Adam with bias correction
 * The moments and the update count are optimizer weights, so model.save(…, {includeOptimizer:
 * true}) keeps them and training resumes on the same schedule. A partial accumulation is not saved.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface AdamWConfig {
  learningRate: number;
  beta1?: number;
  beta2?: number;
  epsilon?: number;
  /** Decoupled weight decay (torch's default 0.01). */
  weightDecay?: number;
  /** Clip the global gradient norm to this (off when absent). */
  maxGradNorm?: number;
  /** Updates of linear warm-up from 0 to learningRate. */
  warmupSteps?: number;
  /** Total updates: after warm-up the rate falls linearly to 0 at this step (constant when absent). */
  totalSteps?: number;
  /** Micro-batches whose gradients are averaged into one update. */
  accumulationSteps?: number;
}

/** A gradient and the name of its variable, as optimizers receive them. */
type NamedTensor = {name: string; tensor: tf.Tensor};
type NamedGrads = tf.NamedTensorMap | NamedTensor[];

export class AdamW extends tf.AdamOptimizer {
  static override get className(): string {
    return 'AdamW';
  }
  readonly config: Required<Omit<AdamWConfig, 'maxGradNorm' | 'totalSteps'>> & Pick<AdamWConfig, 'maxGradNorm' | 'totalSteps'>;
  private accumulated = new Map<string, tf.Tensor>();
  private microBatches = 0;

  constructor(config: AdamWConfig) {
    const c = {beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.01, warmupSteps: 0, accumulationSteps: 1, ...config};
    if (!(c.learningRate > 0)) throw new RangeError(`AdamW: learningRate must be positive, got ${c.learningRate}`);
    if (!Number.isInteger(c.accumulationSteps) || c.accumulationSteps < 1) {
      throw new RangeError(`AdamW: accumulationSteps must be a positive integer, got ${c.accumulationSteps}`);
    }
    if (c.maxGradNorm !== undefined && !(c.maxGradNorm > 0)) {
      throw new RangeError(`AdamW: maxGradNorm must be positive, got ${c.maxGradNorm}`);
    }
    super(c.learningRate, c.beta1, c.beta2, c.epsilon);
    this.config = c;
  }

  /** The learning rate of update `step` (0-based), as Transformers' linear schedule with warm-up. */
  rateAt(step: number): number {
    const {learningRate, warmupSteps, totalSteps} = this.config;
    if (step < warmupSteps) return learningRate * step / Math.max(1, warmupSteps);
    if (totalSteps === undefined) return learningRate;
    return learningRate * Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmupSteps));
  }

  override applyGradients(variableGradients: NamedGrads): void {
    const list = Array.isArray(variableGradients)
        ? variableGradients : Object.entries(variableGradients).map(([name, tensor]) => ({name, tensor}));
    const grads = this.accumulate(list);
    if (!grads) return;
    const rate = this.rateAt(this.iterations);
    this.learningRate = rate;
    tf.tidy(() => {
      const scale = this.clipScale(grads);
      const decay = rate * this.config.weightDecay;
      for (const {name} of grads) {
        const v = tf.engine().registeredVariables[name];
        if (decay > 0 && v.rank > 1) v.assign(tf.mul(v, 1 - decay));
      }
      super.applyGradients(scale === 1 ? grads : grads.map(g => ({name: g.name, tensor: tf.mul(g.tensor, scale)})));
    });
    if (this.config.accumulationSteps > 1) grads.forEach(g => g.tensor.dispose());  // our averages
  }

  /** The averaged gradients when an update is due, else undefined (the micro-batch is kept). */
  private accumulate(list: NamedTensor[]): NamedTensor[] | undefined {
    const steps = this.config.accumulationSteps;
    if (steps === 1) return list;
    for (const {name, tensor} of list) {
      const sum = this.accumulated.get(name);
      this.accumulated.set(name, tf.keep(sum ? tf.add(sum, tensor) : tf.clone(tensor)));
      sum?.dispose();
    }
    if (++this.microBatches < steps) return undefined;
    const averaged = list.map(({name}) => ({name, tensor: tf.keep(tf.div(this.accumulated.get(name)!, steps))}));
    this.accumulated.forEach(t => t.dispose());
    this.accumulated.clear();
    this.microBatches = 0;
    return averaged;
  }

  /** min(1, maxGradNorm / ‖g‖₂) over all gradients together. */
  private clipScale(grads: NamedTensor[]): number | tf.Scalar {
    if (this.config.maxGradNorm === undefined) return 1;
    const norm = tf.sqrt(tf.addN(grads.map(g => tf.sum(tf.square(g.tensor)))));
    return tf.minimum(1, tf.div(this.config.maxGradNorm, tf.add(norm, 1e-6))) as tf.Scalar;
  }

  override dispose(): void {
    this.accumulated.forEach(t => t.dispose());
    this.accumulated.clear();
    super.dispose();
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {...this.config};
  }

  static override fromConfig<T extends tf.serialization.Serializable>(
      cls: tf.serialization.SerializableConstructor<T>, config: tf.serialization.ConfigDict): T {
    return new cls(config as unknown as AdamWConfig);
  }
}
tf.serialization.registerClass(AdamW);
