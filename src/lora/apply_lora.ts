/**
 * LoRA on a model in PEFT's way: adapters on the projections whose name ends in a target
 * (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or the router `gate`), every
 * other weight frozen. Works on any model made of this package's layers.
 */
import * as tfl from '@tensorflow/tfjs-layers';

import {leafLayers} from '../layers/composite';
import {LoraLinearBase} from '../layers/lora_linear_base';
import {patternValue} from './peft_format';

export interface LoraConfig {
  /** Default rank. */
  r: number;
  /** Default alpha (scaling alpha / r, or alpha / √r with useRslora). */
  alpha: number;
  /** Module-name suffixes to adapt, e.g. ['q_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj']. */
  targets: string[];
  /** Per-module ranks, keyed by a name suffix (or full name, or a regular expression) as PEFT's rank_pattern. */
  rankPattern?: Record<string, number>;
  /** Per-module alphas, keyed likewise (PEFT's alpha_pattern). */
  alphaPattern?: Record<string, number>;
  useRslora?: boolean;
  dropout?: number;
}

/** Whether module `name` matches a target: equal, or ending in `.target`. */
function matches(name: string, target: string): boolean {
  return name === target || name.endsWith(`.${target}`);
}

/**
 * Adds adapters to the target layers and freezes every other weight. Returns the adapted layers.
 * Call model.compile() afterwards: the trainable weights are collected at compile time.
 */
export function applyLora(model: tfl.LayersModel, config: LoraConfig): LoraLinearBase[] {
  if (config.targets.length === 0) throw new RangeError('applyLora: targets must name at least one module');
  const layers = leafLayers(model);
  const isTarget = (layer: tfl.layers.Layer): layer is LoraLinearBase =>
      layer instanceof LoraLinearBase && config.targets.some(t => matches(layer.name, t));
  const adapted = layers.filter(isTarget);
  if (adapted.length === 0) {
    throw new RangeError(`applyLora: no layer matches the targets ${JSON.stringify(config.targets)}`);
  }
  for (const layer of adapted) {
    layer.enableLora({
      r: patternValue(config.rankPattern, layer.name, config.r),
      alpha: patternValue(config.alphaPattern, layer.name, config.alpha),
      useRslora: config.useRslora,
      dropout: config.dropout,
    });
  }
  freezeAllBut(model, adapted);
  return adapted;
}

/** Freezes every leaf layer of the model except `keep` (whose base weights their adapters froze). */
export function freezeAllBut(model: tfl.LayersModel, keep: tfl.layers.Layer[]): void {
  for (const layer of leafLayers(model)) if (!keep.includes(layer)) layer.trainable = false;
}

/** Merges every adapter into its base weight (W ← W + scaling·B·A). */
export function mergeLora(model: tfl.LayersModel): void {
  for (const layer of leafLayers(model)) if (layer instanceof LoraLinearBase && layer.adapter) layer.mergeLora();
}

/** Undoes mergeLora. */
export function unmergeLora(model: tfl.LayersModel): void {
  for (const layer of leafLayers(model)) if (layer instanceof LoraLinearBase && layer.adapter) layer.unmergeLora();
}
