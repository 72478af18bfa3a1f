/** LoRA settings shared by the layers that take adapters (Linear, MoeFusedLinear). */

export interface LoraOptions {
  /** Rank r of the update ΔW = scaling · B · A. */
  r: number;
  /** Scaling numerator: scaling = alpha / r, or alpha / √r with useRslora. */
  alpha: number;
  /** Rank-stabilised scaling alpha / √r (rsLoRA). */
  useRslora?: boolean;
  /** Dropout on the adapter's input during training (PEFT's lora_dropout). */
  dropout?: number;
}

export function checkLoraOptions(o: LoraOptions, where: string): void {
  if (!Number.isInteger(o.r) || o.r < 1) throw new RangeError(`${where}: LoRA r must be a positive integer, got ${o.r}`);
  if (!(o.alpha > 0)) throw new RangeError(`${where}: LoRA alpha must be positive, got ${o.alpha}`);
  if (o.dropout !== undefined && !(o.dropout >= 0 && o.dropout < 1)) {
    throw new RangeError(`${where}: LoRA dropout must be in [0, 1), got ${o.dropout}`);
  }
}

export function loraScaling(o: LoraOptions): number {
  return o.useRslora ? o.alpha / Math.sqrt(o.r) : o.alpha / o.r;
}
