/**
 * The load-balancing loss of Switch Transformers, as Transformers' Qwen3-MoE computes it over
 * the router logits of all sparse layers together (rows r over layers × tokens, padding left out):
 *   p = softmax(logits[r]),  c[r, e] = 1 if e is among r's top-k experts
 *   f_e = Σ_r m_r c[r, e] / Σ_r m_r,   P_e = Σ_r m_r p[r, e] / Σ_r m_r
 *   aux = E · Σ_e f_e · P_e                      (a balanced router gives k)
 * The gradient reaches the router through P only.
 */
import * as tf from '@tensorflow/tfjs-core';

import {SparseMoe} from '../layers/sparse_moe';

export function routerAuxLoss(blocks: SparseMoe[]): tf.Scalar {
  if (blocks.length === 0 || blocks.some(b => !b.routerLogits)) {
    throw new Error('routerAuxLoss: every sparse block must have recorded its router logits (recordRouterLogits)');
  }
  const {numExperts: E, topK} = blocks[0].args;
  return tf.tidy(() => {
    const logits = tf.concat(blocks.map(b => b.routerLogits!), 0);
    const mask = blocks[0].routerMask ? tf.concat(blocks.map(b => b.routerMask!), 0) : tf.ones([logits.shape[0]]);
    const rows = tf.expandDims(mask, 1);
    const probs = tf.softmax(logits);
    const chosen = tf.sum(tf.oneHot(tf.topk(probs, topK).indices, E), 1);  // [rows, E]
    const total = tf.sum(mask);
    const f = tf.div(tf.sum(tf.mul(chosen, rows), 0), total);
    const p = tf.div(tf.sum(tf.mul(probs, rows), 0), total);
    return tf.mul(tf.sum(tf.mul(f, p)), E) as tf.Scalar;
  });
}
