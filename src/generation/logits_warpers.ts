/**
 * The logits warpers of Transformers' sampling, in the order generate() applies them
 * (GenerationMixin._get_logits_processor), on one row of next-token logits; filtered tokens
 * become −∞:
 *   temperature   s ← s / T                                   (skipped at T = 1)
 *   top-k         drop s < (k-th largest s), ties kept       (TopKLogitsWarper; skipped at k = 0)
 *   top-p         sort ascending, c = cumsum(softmax(s)); drop c ≤ 1 − p, always keep the largest
 *                 (TopPLogitsWarper, min_tokens_to_keep 1; skipped at p = 1)
 * Defaults are Transformers' (GenerationConfig): temperature 1, top-k 50, top-p 1.
 */

export interface SamplingOptions {
  /** Divides the logits; > 0. Default 1. */
  temperature?: number;
  /** Keeps the k most likely tokens (ties at the k-th kept); 0 turns it off. Default 50, as Transformers. */
  topK?: number;
  /** Keeps the smallest set of most likely tokens whose probability reaches p; in (0, 1]. Default 1 (off). */
  topP?: number;
}

export const SAMPLING_DEFAULTS: Required<SamplingOptions> = {temperature: 1, topK: 50, topP: 1};

/** Throws a RangeError naming the first bad option (after `where: `). */
export function checkSamplingOptions(o: SamplingOptions, where = 'sampling'): void {
  if (o.temperature !== undefined && !(o.temperature > 0 && Number.isFinite(o.temperature))) {
    throw new RangeError(`${where}: temperature must be a positive number, got ${o.temperature}`);
  }
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) {
    throw new RangeError(`${where}: topK must be an integer >= 0 (0: off), got ${o.topK}`);
  }
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new RangeError(`${where}: topP must be in (0, 1], got ${o.topP}`);
}

/** The warped scores of one row of logits (a new array; float32 values, −∞ where filtered). */
export function warpLogits(logits: ArrayLike<number>, options: SamplingOptions = {}): Float32Array {
  const {temperature, topK, topP} = {...SAMPLING_DEFAULTS, ...options};
  const scores = Float32Array.from(logits);
  // float32 division, as torch: both operands are float32, and double rounding of a quotient is exact
  if (temperature !== 1) for (let i = 0; i < scores.length; ++i) scores[i] = scores[i] / Math.fround(temperature);
  if (topK > 0) applyTopK(scores, Math.min(topK, scores.length));
  if (topP < 1) applyTopP(scores, topP);
  return scores;
}

function applyTopK(scores: Float32Array, k: number): void {
  const threshold = Float32Array.from(scores).sort()[scores.length - k];  // the k-th largest
  for (let i = 0; i < scores.length; ++i) if (scores[i] < threshold) scores[i] = -Infinity;
}

function applyTopP(scores: Float32Array, topP: number): void {
  // ascending; tokens already at −∞ (top-k) have probability 0 and stay filtered
  const order = Array.from(scores.keys()).filter(i => scores[i] > -Infinity).sort((a, b) => scores[a] - scores[b] || a - b);
  const max = scores[order[order.length - 1]];
  const exp = order.map(i => Math.exp(scores[i] - max));
  const total = exp.reduce((a, b) => a + b, 0);
  let cumulative = 0;
  for (let j = 0; j < order.length - 1; ++j) {  // the last (largest) is always kept
    cumulative += exp[j] / total;
    if (cumulative > 1 - topP) break;
    scores[order[j]] = -Infinity;
  }
}
