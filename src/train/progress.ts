/** A model.fit callback that reports loss, tokens per second and the time left, every batch. */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

export interface Progress {
  step: number;
  steps: number;
  loss: number;
  tokensPerSecond: number;
  /** Estimated seconds to the end of fit. */
  etaSeconds: number;
}

/**
 * new TrainingProgress(tokensPerBatch, report): `report` gets a Progress after every batch;
 * steps and ETA come from fit's epochs and the number of batches per epoch.
 */
export class TrainingProgress extends tfl.Callback {
  private started = 0;
  private step = 0;

  constructor(private readonly tokensPerBatch: number, private readonly report: (p: Progress) => void) {
    super();
  }

  override async onTrainBegin(): Promise<void> {
    this.started = performance.now();
    this.step = 0;
  }

  override async onBatchEnd(_batch: number, logs?: tfl.Logs): Promise<void> {
    this.step += 1;
    const {epochs = 1, steps, samples, batchSize} = this.params as {epochs?: number; steps?: number; samples?: number; batchSize?: number};
    const perEpoch = steps ?? Math.ceil((samples ?? 0) / (batchSize ?? 32));
    const total = perEpoch * epochs;
    const seconds = (performance.now() - this.started) / 1000;
    const loss = logs?.loss as number | tf.Scalar | undefined;  // tfjs passes batch losses as scalars
    this.report({
      step: this.step,
      steps: total,
      loss: typeof loss === 'number' ? loss : loss ? loss.dataSync()[0] : NaN,
      tokensPerSecond: this.step * this.tokensPerBatch / seconds,
      etaSeconds: total > this.step ? seconds / this.step * (total - this.step) : 0,
    });
  }
}
