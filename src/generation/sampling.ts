/** Choosing the next token from a row of scores: greedy (argmax) or a draw from softmax(scores). */

/** The index of the largest score, the first of ties (as torch.argmax). */
export function argmax(scores: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < scores.length; ++i) if (scores[i] > scores[best]) best = i;
  return best;
}

/**
 * A draw from p = softmax(scores) (−∞ has probability 0) by inverting the cumulative distribution
 * at u ∈ [0, 1): the first i with p₀ + … + pᵢ > u. Sums in float64.
 */
export function sampleIndex(scores: ArrayLike<number>, u: number): number {
  let max = -Infinity;
  for (let i = 0; i < scores.length; ++i) max = Math.max(max, scores[i]);
  const weights = Float64Array.from({length: scores.length}, (_, i) => Math.exp(scores[i] - max));
  const target = u * weights.reduce((a, b) => a + b, 0);
  let cumulative = 0, last = 0;
  for (let i = 0; i < weights.length; ++i) {
    if (weights[i] === 0) continue;
    cumulative += weights[i];
    last = i;
    if (cumulative > target) return i;
  }
  return last;  // u·total rounded up to the total
}
