/**
 * Token embedding, weight [V, H] (Hugging Face's embed_tokens). Called on int32 ids [B, S] it
 * looks rows up; called (as the same, shared layer) on hidden states [B, S, H] it is a tied LM
 * head: logits = h · weightᵀ. Lookups use moeGatherRows, whose gradient is a row scatter-add
 * (tfjs's gather gradient on the cpu backend is a loop over all V rows).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import type {LayerArgs} from '@tensorflow/tfjs-layers/dist/engine/topology';

import {moeGatherRows} from '../ops/moe_rows';

export interface TokenEmbeddingArgs extends LayerArgs {
  vocabSize: number;
  hiddenSize: number;
  /** Standard deviation of the normal initialiser (Transformers' initializer_range). */
  initStd?: number;
}

export class TokenEmbedding extends tfl.layers.Layer {
  static className = 'MoeFused>TokenEmbedding';
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly initStd: number;
  private weight!: tfl.LayerVariable;

  constructor(args: TokenEmbeddingArgs) {
    super(args);
    this.vocabSize = args.vocabSize;
    this.hiddenSize = args.hiddenSize;
    this.initStd = args.initStd ?? 0.02;
  }

  override build(): void {
    this.weight = this.addWeight('weight', [this.vocabSize, this.hiddenSize], 'float32',
                                 tfl.initializers.randomNormal({stddev: this.initStd}));
    this.built = true;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const s = inputShape as tfl.Shape;
    return s.length === 2 ? [...s, this.hiddenSize] : [...s.slice(0, -1), this.vocabSize];
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    return tf.tidy(() => {
      if (x.rank === 2) {  // ids [B, S] → [B, S, H]
        const rows = moeGatherRows(this.weight.read(), tf.reshape(tf.cast(x, 'int32'), [-1]));
        return tf.reshape(rows, [...x.shape, this.hiddenSize]);
      }
      const h = tf.reshape(x, [-1, this.hiddenSize]);  // tied head: [B, S, H] → [B, S, V]
      return tf.reshape(tf.matMul(h, this.weight.read(), false, true), [...x.shape.slice(0, -1), this.vocabSize]);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return {...super.getConfig(), vocabSize: this.vocabSize, hiddenSize: this.hiddenSize, initStd: this.initStd};
  }
}
tf.serialization.registerClass(TokenEmbedding);
