/** Reading a PEFT LoRA adapter folder (either expert layout, see peft_format.ts) into our layout. */
import * as fs from 'fs';
import * as path from 'path';

import {HostTensor, readSafetensors} from '../io/safetensors';
import {LoraOptions} from '../layers/lora';
import {AdapterConfig, ExpertShapes, expertsFromFused, ModuleAdapter, patternValue} from './peft_format';

export function readAdapterConfig(dir: string): AdapterConfig {
  const file = path.join(dir, 'adapter_config.json');
  let config: AdapterConfig;
  try {
    config = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`);
  }
  if (config.peft_type !== undefined && config.peft_type !== 'LORA') {
    throw new Error(`${file}: peft_type ${config.peft_type} is not supported (LORA only)`);
  }
  if (!Number.isInteger(config.r) || !(config.lora_alpha > 0)) throw new Error(`${file}: r and lora_alpha must be given`);
  if (config.use_dora) throw new Error(`${file}: DoRA adapters are not supported`);
  if (typeof config.target_modules === 'string') {
    throw new Error(`${file}: target_modules as a regular expression is not supported; list the modules`);
  }
  return config;
}

const float32 = (t: HostTensor) => t.data as Float32Array;  // float tensors are widened on read

/** The adapters in `dir` by our layer name; `experts` tells the sizes of each MoE block. */
export function readPeftAdapter(dir: string, experts: ExpertShapes): Map<string, ModuleAdapter> {
  const config = readAdapterConfig(dir);
  const tensors = readSafetensors(path.join(dir, 'adapter_model.safetensors'));
  const options = (key: string, r: number): LoraOptions => ({
    r, alpha: patternValue(config.alpha_pattern, key, config.lora_alpha), useRslora: config.use_rslora ?? false,
  });
  // The router is a parameter target under Transformers 5: its pattern key is `<module>.weight`.
  const parameterTargets = config.target_parameters ?? [];
  const keyOf = (module: string) => parameterTargets.some(p => `${module}.weight`.endsWith(p)) ? `${module}.weight` : module;

  const modules = new Map<string, {A?: HostTensor; B?: HostTensor}>();
  for (const [name, t] of tensors) {
    const m = /^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$/.exec(name);
    if (!m) throw new Error(`${dir}: unexpected tensor ${name} in the adapter`);
    if (t.dtype !== 'float32') throw new Error(`${dir}: ${name} is ${t.dtype}, expected a float tensor`);
    if (t.shape.length !== 2) throw new Error(`${dir}: ${name} has shape [${t.shape}], expected a matrix`);
    const entry = modules.get(m[1]) ?? {};
    entry[m[2] as 'A' | 'B'] = t;
    modules.set(m[1], entry);
  }

  const adapters = new Map<string, ModuleAdapter>();
  const perExpert = new Map<string, {A: HostTensor[]; B: HostTensor[]}>();
  for (const [module, {A, B}] of modules) {
    if (!A || !B) throw new Error(`${dir}: ${module} has lora_${A ? 'B' : 'A'} missing`);
    const expert = /^(.+\.mlp)\.experts\.(\d+)\.((?:gate|up|down)_proj)$/.exec(module);
    const fused = /^(.+\.mlp)\.experts(?:\.base_layer)*$/.exec(module);
    if (expert) {  // gathered, then stacked below
      const group = perExpert.get(`${expert[1]}.${expert[3]}`) ?? {A: [], B: []};
      group.A[Number(expert[2])] = A;
      group.B[Number(expert[2])] = B;
      perExpert.set(`${expert[1]}.${expert[3]}`, group);
    } else if (fused) {
      const mlp = fused[1], shapes = experts(mlp);
      if (!shapes) throw new Error(`${dir}: the model has no experts at ${mlp}`);
      const {E, I, H} = shapes, rank = A.shape[0] / E;
      if (!Number.isInteger(rank) || B.shape[1] !== A.shape[0]) {
        throw new Error(`${dir}: ${module} has lora_A [${A.shape}] and lora_B [${B.shape}], expected [E·r, in] and [out, r·E] with E = ${E}`);
      }
      const stacked = (rows: [number, number], o: LoraOptions): ModuleAdapter =>
          ({...expertsFromFused(A, B, E, rows), shapeA: [E, rank, A.shape[1]], shapeB: [E, rows[1] - rows[0], rank], options: o});
      // Which parameter a wrapper adapts follows from the shapes: gate_up_proj [2I, H] or down_proj [H, I].
      if (A.shape[1] === H && B.shape[0] === 2 * I) {
        const o = options(`${mlp}.experts.gate_up_proj`, rank);
        adapters.set(`${mlp}.gate_proj`, stacked([0, I], o));
        adapters.set(`${mlp}.up_proj`, stacked([I, 2 * I], o));
      } else if (A.shape[1] === I && B.shape[0] === H) {
        adapters.set(`${mlp}.down_proj`, stacked([0, H], options(`${mlp}.experts.down_proj`, rank)));
      } else {
        throw new Error(`${dir}: ${module} [${B.shape[0]}, ${A.shape[1]}] fits neither gate_up_proj [${2 * I}, ${H}] nor down_proj [${H}, ${I}]`);
      }
    } else {
      adapters.set(module, {A: float32(A), B: float32(B), shapeA: A.shape, shapeB: B.shape, options: options(keyOf(module), A.shape[0])});
    }
  }
  for (const [key, {A, B}] of perExpert) {
    const E = A.length;
    if (A.filter(Boolean).length !== E || B.filter(Boolean).length !== E) throw new Error(`${dir}: ${key} lacks adapters for some experts`);
    const [r, inFeatures] = A[0].shape, out = B[0].shape[0];
    if (A.some(a => a.shape[0] !== r || a.shape[1] !== inFeatures) || B.some(b => b.shape[0] !== out || b.shape[1] !== r)) {
      throw new Error(`${dir}: the experts of ${key} have different adapter shapes; stacked experts need one`);
    }
    const module = key.replace(/\.(\w+)$/, '.experts.0.$1');
    adapters.set(key, {A: concat(A.map(float32)), B: concat(B.map(float32)), shapeA: [E, r, inFeatures], shapeB: [E, out, r],
                       options: options(module, r)});
  }
  return adapters;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
