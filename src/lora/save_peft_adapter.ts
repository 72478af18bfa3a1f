/**
 * Writing a model's LoRA adapters as a PEFT adapter (adapter_model.safetensors + adapter_config.json)
 * that peft loads onto the Transformers model. Experts in either layout of peft_format.ts.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tfl from '@tensorflow/tfjs-layers';

import {TensorToWrite, writeAtomically, writeSafetensors} from '../io/safetensors';
import {LoraOptions} from '../layers/lora';
import {LoraLinearBase} from '../layers/lora_linear_base';
import {MoeFusedLinearLayer} from '../layers/moe_fused_linear';
import {leafLayers} from './apply_lora';
import {fusedB, PREFIX} from './peft_format';

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

type Adapter = {A: Float32Array; B: Float32Array; options: LoraOptions};

function read(layer: LoraLinearBase): Adapter {
  const {A, B} = layer.adapter!;
  return {A: A.read().dataSync() as Float32Array, B: B.read().dataSync() as Float32Array, options: layer.lora!};
}

export function savePeftAdapter(model: tfl.LayersModel, dir: string, options: SavePeftOptions = {}): void {
  const layout = options.expertLayout ?? 'fused';
  if (layout !== 'fused' && layout !== 'per-expert') {
    throw new RangeError(`savePeftAdapter: expertLayout must be 'fused' or 'per-expert', got ${JSON.stringify(layout)}`);
  }
  const layers = leafLayers(model).filter((l): l is LoraLinearBase => l instanceof LoraLinearBase && l.adapter !== undefined);
  if (layers.length === 0) throw new Error('savePeftAdapter: the model has no LoRA adapters');
  const entries: Entry[] = [];
  const targetModules = new Set<string>(), targetParameters = new Set<string>();
  const experts = new Map<string, Map<string, MoeFusedLinearLayer>>();  // mlp path → projection → layer

  for (const layer of layers) {
    const dot = layer.name.lastIndexOf('.');
    const [parent, suffix] = [layer.name.slice(0, dot), layer.name.slice(dot + 1)];
    if (layer instanceof MoeFusedLinearLayer) {
      if (layout === 'fused') {
        experts.set(parent, (experts.get(parent) ?? new Map()).set(suffix, layer));
        continue;
      }
      const {A, B, options: o} = read(layer);
      const [E, r, inFeatures] = layer.adapter!.A.shape as number[];
      const out = layer.units;
      for (let e = 0; e < E; ++e) {
        const module = `${parent}.experts.${e}.${suffix}`;
        entries.push({key: module, module, options: o, shapeA: [r, inFeatures], shapeB: [out, r],
                      A: A.subarray(e * r * inFeatures, (e + 1) * r * inFeatures), B: B.subarray(e * out * r, (e + 1) * out * r)});
      }
      targetModules.add(suffix);
    } else if (layout === 'fused' && suffix === 'gate' && parent.endsWith('.mlp')) {
      // Transformers 5's router is a parameter (Qwen3MoeTopKRouter.weight), with the same tensor names.
      const {A, B, options: o} = read(layer);
      entries.push({key: `${layer.name}.weight`, module: layer.name, A, B, options: o,
                    shapeA: layer.adapter!.A.shape as number[], shapeB: layer.adapter!.B.shape as number[]});
      targetParameters.add('gate.weight');
    } else {
      const {A, B, options: o} = read(layer);
      entries.push({key: layer.name, module: layer.name, A, B, options: o,
                    shapeA: layer.adapter!.A.shape as number[], shapeB: layer.adapter!.B.shape as number[]});
      targetModules.add(suffix);
    }
  }
  for (const [mlp, projections] of experts) {
    const fused = fusedExperts(mlp, projections);
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
function fusedExperts(mlp: string, projections: Map<string, MoeFusedLinearLayer>): Entry[] {
  const entries: Entry[] = [];
  const gateLayer = projections.get('gate_proj'), upLayer = projections.get('up_proj');
  const downLayer = projections.get('down_proj');
  // gate_up_proj is wrapped first (innermost): `.base_layer` when down_proj is wrapped around it.
  const wrapper = (name: 'gate_up_proj' | 'down_proj') =>
      name === 'gate_up_proj' && downLayer ? `${mlp}.experts.base_layer` : `${mlp}.experts`;
  if (gateLayer || upLayer) {
    const like = read((gateLayer ?? upLayer)!);
    const zeros = (): Adapter => ({A: new Float32Array(like.A.length), B: new Float32Array(like.B.length), options: like.options});
    const gate = gateLayer ? read(gateLayer) : zeros(), up = upLayer ? read(upLayer) : zeros();
    const [E, r, H] = (gateLayer ?? upLayer)!.adapter!.A.shape as number[];
    const I = (gateLayer ?? upLayer)!.units;
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
  if (downLayer) {
    const down = read(downLayer);
    const [E, r, I] = downLayer.adapter!.A.shape as number[];
    const H = downLayer.units;
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
