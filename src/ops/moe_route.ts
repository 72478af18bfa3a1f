import {div, dispose, softmax, sum, Tensor, Tensor2D, tidy, topk} from '@tensorflow/tfjs-core';

import {fail, Input, toTensor} from './convert';
import {ExpertOrder, moeSortByExpert} from './moe_sort_by_expert';

export interface MoeRouteOptions {
  /** Experts per token (num_experts_per_tok). */
  topK: number;
  /** Renormalise the top-k probabilities to sum to 1 (Qwen3-MoE's norm_topk_prob). Default true. */
  normTopKProb?: boolean;
}

/** The routing of T tokens to their top-k experts, and the order that groups them by expert. */
export interface MoeRouting extends ExpertOrder {
  /** [T, k] float32 routing weights, differentiable with respect to the logits. */
  weights: Tensor2D;
  /** [T, k] int32 expert ids, best first; the sorted rows are the token copies t·k + s. */
  expertIds: Tensor2D;
}

/**
 * Softmax top-k router, as in Qwen3-MoE and Mixtral:
 *   p = softmax(logits)  (float32, over E experts);   (w, ids) = topk(p, k)
 *   w = w / Σ_s w[s]     (when normTopKProb)
 * plus the stable permutation that groups the T·k token copies by expert, its inverse, and the
 * group sizes that moeFusedLinear takes. Gradients flow from `weights` to `logits` (tfjs 4.22
 * has no TopK gradient; this package registers one).
 */
export function moeRoute(logits: Input, options: MoeRouteOptions): MoeRouting {
  const op = 'moeRoute';
  const created: Tensor[] = [];
  const $logits = toTensor<Tensor2D>(logits, 'logits', op, 'float32', 2, '[T, E]', created);
  const E = $logits.shape[1];
  const {topK, normTopKProb = true} = options;
  if (!Number.isInteger(topK) || topK < 1 || topK > E) {
    fail(op, `topK must be an integer in [1, E = ${E}], but is ${topK}`, created);
  }
  try {
    return tidy(() => {
      const {values, indices} = topk(softmax($logits), topK);
      const weights = normTopKProb ? div(values, sum(values, -1, true)) : values;
      const order = moeSortByExpert(indices, E);
      return {weights: weights as Tensor2D, expertIds: indices as Tensor2D, ...order};
    });
  } finally {
    dispose(created);
  }
}

