/**
 * Writing a model's LoRA adapters as a PEFT adapter (adapter_model.safetensors + adapter_config.json)
 * that peft loads onto the Transformers model. Experts in either layout of peft_format.ts.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tfl from '@tensorflow/tfjs-layers';

import {TensorToWrite, writeAtomically, writeSafetensors} from '../io/safetensors';
import {leafLayers} from '../layers/composite';
import {LoraOptions} from '../layers/lora';
import {LoraLinearBase} from '../layers/lora_linear_base';
import {fusedB, ModuleAdapter, PREFIX} from './peft_format';

export interface SavePeftOptions {
  /** base_model_name_or_path of adapter_config.json (the checkpoint folder or Hub id). */
  baseModel?: string;
  /**
   * 'fused' (default): experts as peft's `target_parameters` on Transformers 5's expert tensors,
   * what peft 0.21 loads natively (exact with rsLoRA too). 'per-expert': Transformers 4 module names
   * (vLLM, older peft); peft under Transformers 5 converts them on load, but then ignores rank and
   * alpha patterns of gate/up_proj and scales rsLoRA gate/up deltas √2 too large.
   */
  expertLayout?: 'fused' | 'per-expert';
}

/** One adapted module or parameter as written: its pattern key, tensors and options. */
interface Entry {
  key: string;
  /** Tensor name stem (module path, or the fused wrapper's). */
  module: string;
  A: Float32Array;
  B: Float32Array;
  shapeA: number[];
  shapeB: number[];
  options: LoraOptions;
}

/** The adapters of a model's layers, in our layout, by layer name. */
export function modelAdapters(model: tfl.LayersModel): Map<string, ModuleAdapter> {
  const adapters = new Map<string, ModuleAdapter>();
  for (const layer of leafLayers(model)) {
    if (!(layer instanceof LoraLinearBase) || !layer.adapter) continue;
    const {A, B} = layer.adapter;
    adapters.set(layer.name, {A: A.read().dataSync() as Float32Array, B: B.read().dataSync() as Float32Array,
                              shapeA: A.shape as number[], shapeB: B.shape as number[], options: layer.lora!});
  }
  return adapters;
}

/** Writes the model's adapters as a PEFT adapter folder. */
export function savePeftAdapter(model: tfl.LayersModel, dir: string, options: SavePeftOptions = {}): void {
  const adapters = modelAdapters(model);
  if (adapters.size === 0) throw new Error('savePeftAdapter: the model has no LoRA adapters');
  writePeftAdapter(adapters, dir, options);
}

/** Writes adapters (ours, by layer name; experts are the 3-D ones) as a PEFT adapter folder. */
export function writePeftAdapter(adapters: Map<string, ModuleAdapter>, dir: string, options: SavePeftOptions = {}): void {
  const layout = options.expertLayout ?? 'fused';
  if (layout !== 'fused' && layout !== 'per-expert') {
    throw new RangeError(`savePeftAdapter: expertLayout must be 'fused' or 'per-expert', got ${JSON.stringify(layout)}`);
  }
  const entries: Entry[] = [];
  const targetModules = new Set<string>(), targetParameters = new Set<string>();
  const experts = new Map<string, Map<string, ModuleAdapter>>();  // mlp path → projection → adapter

  for (const [name, adapter] of adapters) {
    const dot = name.lastIndexOf('.');
    const [parent, suffix] = [name.slice(0, dot), name.slice(dot + 1)];
    const {A, B, shapeA, shapeB, options: o} = adapter;
    if (shapeA.length === 3) {
      if (layout === 'fused') {
        experts.set(parent, (experts.get(parent) ?? new Map()).set(suffix, adapter));
        continue;
      }
      const [E, r, inFeatures] = shapeA, out = shapeB[1];
      for (let e = 0; e < E; ++e) {
        const module = `${parent}.experts.${e}.${suffix}`;
        entries.push({key: module, module, options: o, shapeA: [r, inFeatures], shapeB: [out, r],
                      A: A.subarray(e * r * inFeatures, (e + 1) * r * inFeatures), B: B.subarray(e * out * r, (e + 1) * out * r)});
      }
      targetModules.add(suffix);
    } else if (layout === 'fused' && suffix === 'gate' && parent.endsWith('.mlp')) {
      // Transformers 5's router is a parameter (Qwen3MoeTopKRouter.weight), with the same tensor names.
      entries.push({key: `${name}.weight`, module: name, A, B, options: o, shapeA, shapeB});
      targetParameters.add('gate.weight');
    } else {
      entries.push({key: name, module: name, A, B, options: o, shapeA, shapeB});
      targetModules.add(suffix);
    }
  }
  for (const [mlp, projections] of experts) {
    const fused = fusedExpertEntries(mlp, projections);
    for (const entry of fused) targetParameters.add(`mlp.experts.${entry.key.slice(entry.key.lastIndexOf('.') + 1)}`);
    entries.push(...fused);
  }

  const rslora = new Set(entries.map(e => e.options.useRslora ?? false));
  if (rslora.size > 1) throw new Error('savePeftAdapter: PEFT has one use_rslora per adapter; the layers differ');
  const r = mostCommon(entries.map(e => e.options.r)), alpha = mostCommon(entries.map(e => e.options.alpha));
  const rankPattern: Record<string, number> = {}, alphaPattern: Record<string, number> = {};
  const tensors: TensorToWrite[] = [];
  for (const e of entries) {
    tensors.push({name: `${PREFIX}${e.module}.lora_A.weight`, dtype: 'F32', shape: e.shapeA, data: () => e.A});
    tensors.push({name: `${PREFIX}${e.module}.lora_B.weight`, dtype: 'F32', shape: e.shapeB, data: () => e.B});
    if (e.options.r !== r) rankPattern[e.key] = e.options.r;
    if (e.options.alpha !== alpha) alphaPattern[e.key] = e.options.alpha;
  }
  // peft's ParamWrapper (target_parameters) refuses lora_dropout ≠ 0; dropout only matters in training.
  const dropout = targetParameters.size > 0 ? 0 : mostCommon(entries.map(e => e.options.dropout ?? 0));
  const config = {
    peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: options.baseModel ?? null,
    r, lora_alpha: alpha, lora_dropout: dropout, use_rslora: [...rslora][0],
    target_modules: [...targetModules].sort(), target_parameters: targetParameters.size ? [...targetParameters].sort() : null,
    rank_pattern: rankPattern, alpha_pattern: alphaPattern,
    bias: 'none', fan_in_fan_out: false, init_lora_weights: true, inference_mode: true, modules_to_save: null, use_dora: false,
  };
  fs.mkdirSync(dir, {recursive: true});
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors.sort((x, y) => (x.name < y.name ? -1 : 1)), {format: 'pt'});
  writeAtomically(path.join(dir, 'adapter_config.json'), fd => fs.writeSync(fd, JSON.stringify(config, null, 2) + '\n'));
}

/**
 * One block's experts in peft's fused layout: gate and up become one gate_up_proj adapter. If they
 * share A (as after loading a fused adapter), B_e = [B_gate_e; B_up_e] at rank r; otherwise
 * A_e = [A_gate_e; A_up_e], B_e = blockdiag(B_gate_e, B_up_e) at rank 2r with alpha doubled
 * (√2·alpha with rsLoRA), which keeps the scaling. A projection without an adapter gets zeros.
 */
function fusedExpertEntries(mlp: string, projections: Map<string, ModuleAdapter>): Entry[] {
  const entries: Entry[] = [];
  const gateAdapter = projections.get('gate_proj'), upAdapter = projections.get('up_proj');
  const down = projections.get('down_proj');
  // gate_up_proj is wrapped first (innermost): `.base_layer` when down_proj is wrapped around it.
  const wrapper = (name: 'gate_up_proj' | 'down_proj') =>
      name === 'gate_up_proj' && down ? `${mlp}.experts.base_layer` : `${mlp}.experts`;
  if (gateAdapter || upAdapter) {
    const like = (gateAdapter ?? upAdapter)!;
    const zeros = (): ModuleAdapter => ({...like, A: new Float32Array(like.A.length), B: new Float32Array(like.B.length)});
    const gate = gateAdapter ?? zeros(), up = upAdapter ?? zeros();
    const [E, r, H] = like.shapeA, I = like.shapeB[1];
    const o = gate.options, same = (p: keyof LoraOptions) => (gate.options[p] ?? 0) === (up.options[p] ?? 0);
    if (!same('r') || !same('alpha') || !same('useRslora')) {
      throw new Error(`savePeftAdapter: ${mlp}.gate_proj and up_proj have different LoRA settings; the fused layout ` +
                      "adapts them as one gate_up_proj tensor (use expertLayout 'per-expert')");
    }
    const shared = gate.A.every((v, i) => Object.is(v, up.A[i]));
    const rank = shared ? r : 2 * r;
    const A = shared ? gate.A : new Float32Array(E * rank * H);
    const B = new Float32Array(E * 2 * I * rank);  // ours: [E, 2I, rank]
    for (let e = 0; e < E; ++e) {
      if (!shared) {
        A.set(gate.A.subarray(e * r * H, (e + 1) * r * H), e * rank * H);
        A.set(up.A.subarray(e * r * H, (e + 1) * r * H), (e * rank + r) * H);
      }
      for (let i = 0; i < I; ++i) {
        for (let j = 0; j < r; ++j) {
          B[(e * 2 * I + i) * rank + j] = gate.B[(e * I + i) * r + j];
          B[(e * 2 * I + I + i) * rank + (shared ? j : r + j)] = up.B[(e * I + i) * r + j];
        }
      }
    }
    const alpha = shared ? o.alpha : o.useRslora ? Math.SQRT2 * o.alpha : 2 * o.alpha;
    entries.push({key: `${mlp}.experts.gate_up_proj`, module: wrapper('gate_up_proj'), A, B: fusedB(B, E, 2 * I, rank),
                  shapeA: [E * rank, H], shapeB: [2 * I, rank * E], options: {...o, r: rank, alpha}});
  }
  if (down) {
    const [E, r, I] = down.shapeA, H = down.shapeB[1];
    entries.push({key: `${mlp}.experts.down_proj`, module: wrapper('down_proj'), A: down.A, B: fusedB(down.B, E, H, r),
                  shapeA: [E * r, I], shapeB: [H, r * E], options: down.options});
  }
  return entries;
}

/** The most frequent value (the first seen on ties): PEFT's defaults, so that patterns stay short. */
function mostCommon<T>(values: T[]): T {
  const counts = new Map<T, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].reduce((best, c) => (c[1] > best[1] ? c : best))[0];
}
