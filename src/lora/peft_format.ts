/**
 * The PEFT LoRA adapter format (adapter_config.json + adapter_model.safetensors) as peft 0.21
 * reads and writes it, and the conversions between its expert layouts and ours.
 *
 * Tensor names are `base_model.model.<module>.lora_{A,B}.weight`. Experts come in two layouts:
 *   per expert (Transformers 4, vLLM, the seed project; peft converts it on load under Transformers 5):
 *     model.layers.L.mlp.experts.e.{gate,up,down}_proj.lora_A.weight [r, in], lora_B [out, r]
 *   fused (peft's target_parameters on Transformers 5's expert tensors gate_up_proj [E, 2I, H], down_proj):
 *     ...mlp.experts[.base_layer]*.lora_A.weight [E·r, in]  (expert-major: A_e = A[e·r : (e+1)·r])
 *     ...lora_B.weight [out, r·E]                         (rank-major: B_e[:, j] = B[:, j·E + e])
 *     one wrapper per targeted parameter, nested in registration order (gate_up_proj innermost, so
 *     its keys carry `.base_layer` when down_proj is targeted too); gate_up_proj's A is shared by
 *     gate (rows [0, I) of B_e) and up (rows [I, 2I)).
 * Ours: A [E, r, in], B [E, out, r] per projection, ΔW[e] = scaling · B[e]·A[e].
 */
import {HostTensor} from '../io/safetensors';
import {LoraOptions} from '../layers/lora';

export const PREFIX = 'base_model.model.';

export interface AdapterConfig {
  peft_type?: string;
  base_model_name_or_path?: string | null;
  r: number;
  lora_alpha: number;
  use_rslora?: boolean;
  target_modules?: string[] | string | null;
  target_parameters?: string[] | null;
  rank_pattern?: Record<string, number>;
  alpha_pattern?: Record<string, number>;
  lora_dropout?: number;
  use_dora?: boolean;
}

/**
 * The adapter of one of our layers, in our layout: experts A [E, r, in], B [E, out, r]; any other
 * linear layer A [r, in], B [out, r]. Keyed by our layer name (Transformers' module path).
 */
export interface ModuleAdapter {
  A: Float32Array;
  B: Float32Array;
  shapeA: number[];
  shapeB: number[];
  options: LoraOptions;
}

/** Experts E, intermediate size I and hidden size H of the MoE block at `mlp`; undefined where there is none. */
export type ExpertShapes = (mlp: string) => {E: number; I: number; H: number} | undefined;

/** PEFT's pattern lookup: key p applies to module k when re.match(rf"(.*\.)?({p})$", k); the first wins. */
export function patternValue(table: Record<string, number> | undefined, module: string, fallback: number): number {
  for (const [key, value] of Object.entries(table ?? {})) {
    if (new RegExp(`^(.*\\.)?(${key})$`).test(module)) return value;
  }
  return fallback;
}

/** Our A [E, r, in] and B [E, rows, r] from a fused adapter (rows [from, to) of each B_e). */
export function expertsFromFused(A: HostTensor, B: HostTensor, E: number, rows: [number, number]): {A: Float32Array; B: Float32Array} {
  const r = A.shape[0] / E, cols = B.shape[1], out = rows[1] - rows[0];
  const b = new Float32Array(E * out * r);
  for (let e = 0; e < E; ++e) {
    for (let i = 0; i < out; ++i) {
      for (let j = 0; j < r; ++j) b[(e * out + i) * r + j] = B.data[(rows[0] + i) * cols + j * E + e];
    }
  }
  return {A: A.data as Float32Array, B: b};  // A is expert-major: already [E, r, in]
}

/** The fused B [out, r·E] (rank-major) of our B [E, out, r]. */
export function fusedB(B: Float32Array, E: number, out: number, r: number): Float32Array {
  const fused = new Float32Array(out * r * E);
  for (let e = 0; e < E; ++e) {
    for (let i = 0; i < out; ++i) {
      for (let j = 0; j < r; ++j) fused[i * r * E + j * E + e] = B[(e * out + i) * r + j];
    }
  }
  return fused;
}
