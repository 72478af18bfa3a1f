/**
 * The causal language-modelling loss of Transformers (ForCausalLMLoss): position t predicts the
 * label at t + 1; labels equal to ignoreIndex (−100: padding) do not count;
 *   loss = −(1/N) Σ_{t : label[t+1] ≠ ignore} log softmax(logits[t])[label[t+1]]
 * with N the number of counted positions (a batch with none gives 0 rather than NaN).
 * labels [B, S] (int32 or float32), logits [B, S, V].
 */
import * as tf from '@tensorflow/tfjs-core';

import {moeGatherRows} from '../ops/moe_rows';

export const IGNORE_INDEX = -100;

export function causalLmLoss(labels: tf.Tensor, logits: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const [B, S, V] = logits.shape;
    const ids = tf.cast(labels, 'int32');
    const next = tf.concat([tf.slice(ids, [0, 1], [B, S - 1]), tf.fill([B, 1], IGNORE_INDEX, 'int32')], 1);
    const counted = tf.notEqual(next, IGNORE_INDEX);
    const safe = tf.where(counted, next, tf.zerosLike(next));
    // log p of the label at each position: a row gather from the flat [B·S·V, 1] log-probabilities.
    const flatIndex = tf.add(tf.mul(tf.range(0, B * S, 1, 'int32'), tf.scalar(V, 'int32')), tf.reshape(safe, [-1]));
    const logp = moeGatherRows(tf.reshape(tf.logSoftmax(logits), [-1, 1]), flatIndex);
    const weights = tf.reshape(tf.cast(counted, 'float32'), [-1, 1]);
    return tf.div(tf.neg(tf.sum(tf.mul(logp, weights))), tf.maximum(tf.sum(weights), 1)) as tf.Scalar;
  });
}
