/**
 * Hugging Face checkpoints of Qwen3-MoE: a directory with config.json and model.safetensors, or
 * shards listed in model.safetensors.index.json. Tensors are read one at a time, so a checkpoint
 * never sits in memory whole. Experts load into our fused layout ([E, out, in] per projection)
 * from any of the layouts found in the wild:
 *   fused (this package, the seed project)  model.layers.L.mlp.{gate,up,down}_proj.weight [E, out, in]
 *   Transformers 5                          model.layers.L.mlp.experts.gate_up_proj [E, 2·I, H]
 *                                           model.layers.L.mlp.experts.down_proj    [E, H, I]
 *   unfused (Transformers 4, the Hub)       model.layers.L.mlp.experts.e.{gate,up,down}_proj.weight [out, in]
 * bitsandbytes 4-bit weights (NF4, any of these names) are dequantised to float32 on load, or
 * held as they are by NF4 expert layers, which also save that way.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {leafLayers} from '../layers/composite';
import {MoeFusedLinearNf4Layer} from '../layers/moe_fused_linear_nf4';
import {int32WordsToBytes} from '../quant/int32_words';
import {dequantiseNf4, nf4Sizes, Nf4Tensor, quantiseNf4, stackNf4} from '../quant/nf4';
import {bnb4bitTensors, bnbTensorNames, isBnb4bit, readBnb4bit, readBnbExperts} from './bnb_4bit';
import {hfName} from './hf_weights';
import {DTYPE_BYTES, HostTensor, SafetensorsDtype, SafetensorsFile, TensorToWrite, writeAtomically, writeSafetensors} from './safetensors';

const INDEX = 'model.safetensors.index.json';
const SINGLE = 'model.safetensors';

/** The tensors of a checkpoint directory, by name, read on demand. */
export class HfCheckpoint {
  private readonly files = new Map<string, SafetensorsFile>();
  /** Tensor name → the file that holds it. */
  private readonly where = new Map<string, SafetensorsFile>();

  private constructor(readonly dir: string) {
    const index = path.join(dir, INDEX);
    if (fs.existsSync(index)) {
      let weightMap: Record<string, string>;
      try {
        weightMap = JSON.parse(fs.readFileSync(index, 'utf8')).weight_map;
      } catch (e) {
        throw new SyntaxError(`${index}: not valid JSON (${(e as Error).message})`);
      }
      if (typeof weightMap !== 'object' || weightMap === null) throw new TypeError(`${index}: no weight_map object`);
      for (const [name, shard] of Object.entries(weightMap)) {
        const file = this.file(shard);
        if (!file.entries.has(name)) throw new Error(`${index}: ${JSON.stringify(name)} is not in ${shard}`);
        this.where.set(name, file);
      }
    } else if (fs.existsSync(path.join(dir, SINGLE))) {
      const file = this.file(SINGLE);
      for (const name of file.entries.keys()) this.where.set(name, file);
    } else {
      throw new Error(`${dir}: neither ${SINGLE} nor ${INDEX} found`);
    }
  }

  static open(dir: string): HfCheckpoint {
    return new HfCheckpoint(dir);
  }

  private file(shard: string): SafetensorsFile {
    if (shard.includes('/') || shard.includes('\\')) throw new Error(`${this.dir}: shard name ${JSON.stringify(shard)} leaves the folder`);
    let file = this.files.get(shard);
    if (!file) {
      const p = path.join(this.dir, shard);
      if (!fs.existsSync(p)) throw new Error(`${this.dir}: shard ${shard} is missing`);
      file = SafetensorsFile.open(p);
      this.files.set(shard, file);
    }
    return file;
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  shape(name: string): number[] | undefined {
    return this.where.get(name)?.entries.get(name)?.shape;
  }

  /** The stored dtype of a tensor. */
  dtype(name: string): SafetensorsDtype | undefined {
    return this.where.get(name)?.entries.get(name)?.dtype;
  }

  read(name: string): HostTensor {
    const file = this.where.get(name);
    if (!file) throw new Error(`${this.dir}: no tensor ${JSON.stringify(name)}`);
    return file.read(name);
  }

  close(): void {
    this.files.forEach(f => f.close());
  }
}

/**
 * Tensor `name` as float32 (int32 stays int32): stored floats widened, or a bitsandbytes 4-bit
 * weight dequantised as bitsandbytes does; with the checkpoint tensors it consumed.
 */
function readTensor(ckpt: HfCheckpoint, name: string): {t: HostTensor; used: string[]} {
  if (!isBnb4bit(ckpt, name)) return {t: ckpt.read(name), used: [name]};
  const q = readBnb4bit(ckpt, name);
  return {t: {dtype: 'float32', shape: q.shape, data: dequantiseNf4(q)}, used: bnbTensorNames(ckpt, name)};
}

export const EXPERT_WEIGHT = /^(model\.layers\.\d+\.mlp)\.(gate|up|down)_proj\.weight$/;

/**
 * The fused [E, out, in] data of expert weight `name` from whichever layout the checkpoint uses,
 * with the names it consumed; undefined when the checkpoint has none of them.
 */
export function fusedExperts(ckpt: HfCheckpoint, name: string, shape: number[]): {data: Float32Array; used: string[]} | undefined {
  const match = EXPERT_WEIGHT.exec(name);
  if (!match || shape.length !== 3) return undefined;
  if (ckpt.has(name)) {  // ours and the seed project's: stored fused
    const {t, used} = readTensor(ckpt, name);
    expectShape(ckpt, name, t.shape, shape);
    return {data: t.data as Float32Array, used};
  }
  const [, mlp, proj] = match;
  const [E, out, inFeatures] = shape;
  const per = out * inFeatures;
  const data = new Float32Array(E * per);
  const gateUp = `${mlp}.experts.gate_up_proj`, down = `${mlp}.experts.down_proj`;
  if (proj !== 'down' && ckpt.has(gateUp)) {  // Transformers 5: gate rows first, then up
    const {t, used} = readTensor(ckpt, gateUp);
    expectShape(ckpt, gateUp, t.shape, [E, 2 * out, inFeatures]);
    for (let e = 0; e < E; ++e) {
      data.set(t.data.subarray((2 * e + (proj === 'up' ? 1 : 0)) * per, (2 * e + (proj === 'up' ? 2 : 1)) * per), e * per);
    }
    return {data, used};
  }
  if (proj === 'down' && ckpt.has(down)) {
    const {t, used} = readTensor(ckpt, down);
    expectShape(ckpt, down, t.shape, shape);
    return {data: t.data as Float32Array, used};
  }
  const expert = (e: number) => `${mlp}.experts.${e}.${proj}_proj.weight`;
  if (!ckpt.has(expert(0))) return undefined;
  const used: string[] = [];
  for (let e = 0; e < E; ++e) {  // Transformers 4 / the Hub: one matrix per expert, stacked here
    const {t, used: parts} = readTensor(ckpt, expert(e));
    expectShape(ckpt, expert(e), t.shape, [out, inFeatures]);
    data.set(t.data, e * per);
    used.push(...parts);
  }
  return {data, used};
}

function expectShape(ckpt: HfCheckpoint, name: string, actual: number[], expected: number[]): void {
  if (actual.length !== expected.length || actual.some((d, i) => d !== expected[i])) {
    throw new Error(`${ckpt.dir}: ${name} has shape [${actual}], the model expects [${expected}]`);
  }
}

/**
 * Loads a checkpoint's tensors into the model's weights, one tensor at a time. Every weight must
 * be found; tensors the model has no use for are returned (e.g. rotary buffers).
 */
export function loadHfCheckpoint(model: tfl.LayersModel, checkpoint: string | HfCheckpoint): {unused: string[]} {
  const ckpt = typeof checkpoint === 'string' ? HfCheckpoint.open(checkpoint) : checkpoint;
  try {
    const used = new Set<string>();
    const nf4Layers = leafLayers(model).filter((l): l is MoeFusedLinearNf4Layer => l instanceof MoeFusedLinearNf4Layer);
    for (const layer of nf4Layers) loadNf4Experts(ckpt, layer).forEach(n => used.add(n));
    const quantised = new Set(nf4Layers.flatMap(l => l.weights));
    for (const weight of model.weights) {
      if (quantised.has(weight)) continue;
      const name = hfName(weight);
      let data: Float32Array | Int32Array;
      if (ckpt.has(name)) {
        const {t, used: parts} = readTensor(ckpt, name);
        expectShape(ckpt, name, t.shape, weight.shape as number[]);
        data = t.data;
        parts.forEach(n => used.add(n));
      } else {
        const fused = fusedExperts(ckpt, name, weight.shape as number[]);
        if (!fused) throw new Error(`${ckpt.dir}: no tensor for ${name} [${weight.shape}]`);
        data = fused.data;
        fused.used.forEach(n => used.add(n));
      }
      weight.write(tf.tensor(data, weight.shape as number[], 'float32'));
    }
    return {unused: ckpt.names().filter(n => !used.has(n))};
  } finally {
    if (typeof checkpoint === 'string') ckpt.close();
  }
}

/** `<mlp>` and the projection of an NF4 layer named `<mlp>.<proj>_proj`. */
function nf4Projection(layer: MoeFusedLinearNf4Layer, where: string): {mlp: string; proj: 'gate' | 'up' | 'down'} {
  const [, mlp, proj] = /^(.+\.mlp)\.(gate|up|down)_proj$/.exec(layer.name) ?? [];
  if (!mlp) throw new Error(`${where}: cannot tell which experts ${layer.name} holds`);
  return {mlp, proj: proj as 'gate' | 'up' | 'down'};
}

/**
 * The experts of an NF4 layer: read as bitsandbytes stored them (per expert, or one fused tensor),
 * or quantised here from float weights of any layout, expert by expert as bitsandbytes' Params4bit
 * does (one projection of one layer in float32 at a time). Returns the tensors it consumed.
 */
function loadNf4Experts(ckpt: HfCheckpoint, layer: MoeFusedLinearNf4Layer): string[] {
  const {mlp, proj} = nf4Projection(layer, ckpt.dir);
  const {shape, blocksize} = layer.nf4;
  const [E, out, inFeatures] = shape;
  const fused = `${mlp}.${proj}_proj.weight`, perExpert = (e: number) => `${mlp}.experts.${e}.${proj}_proj.weight`;
  if (isBnb4bit(ckpt, fused) || isBnb4bit(ckpt, perExpert(0))) {
    layer.setNf4Weights(readBnbExperts(ckpt, mlp, proj, E));
    return isBnb4bit(ckpt, fused) ? bnbTensorNames(ckpt, fused) : Array.from({length: E}, (_, e) => bnbTensorNames(ckpt, perExpert(e))).flat();
  }
  const found = fusedExperts(ckpt, fused, shape);
  if (!found) throw new Error(`${ckpt.dir}: no tensor for the experts ${fused} [${shape}]`);
  const {data, used} = found;
  const per = out * inFeatures;
  layer.setNf4Weights(stackNf4(Array.from({length: E}, (_, e) =>
      quantiseNf4(data.subarray(e * per, (e + 1) * per), {blocksize, shape: [out, inFeatures]}))));
  return used;
}

export interface SaveOptions {
  /** fused: experts as [E, out, in] (this package, the seed project); unfused: one matrix per expert (the Hub). */
  layout?: 'fused' | 'unfused';
  /** Of the float tensors; NF4 experts record it as the dtype bitsandbytes dequantises to. */
  dtype?: 'F32' | 'BF16';
  /** Largest shard in bytes (Transformers' default 5 GB); more than one shard writes an index. */
  maxShardBytes?: number;
}

/**
 * Writes the model's weights (not LoRA adapters) and config.json as a Hugging Face checkpoint.
 * Every file is written atomically; shards are named model-0000i-of-0000n.safetensors. NF4
 * experts are written as bitsandbytes stores 4-bit weights (bnb4bitTensors; loadHfCheckpoint
 * reads them back as they are): one tensor per expert (unfused), or one [E, out, in] tensor
 * (fused, when no block straddles two experts).
 */
export function saveHfCheckpoint(model: tfl.LayersModel, hfConfig: Record<string, unknown>, dir: string,
                                 options: SaveOptions = {}): void {
  const {layout = 'fused', dtype = 'F32', maxShardBytes = 5e9} = options;
  const nf4Layers = leafLayers(model).filter((l): l is MoeFusedLinearNf4Layer => l instanceof MoeFusedLinearNf4Layer);
  const nf4Dtype = dtype === 'F32' ? 'float32' : 'bfloat16';  // what bitsandbytes dequantises them to
  const tensors = nf4Layers.flatMap(layer => nf4ExpertTensors(layer, layout, nf4Dtype));
  const quantised = new Set(nf4Layers.flatMap(l => l.weights));
  fs.mkdirSync(dir, {recursive: true});
  for (const weight of model.weights) {
    if (quantised.has(weight)) continue;
    const name = hfName(weight);
    if (name.includes('.lora_')) continue;
    const shape = weight.shape as number[];
    const values = () => weight.read().dataSync() as Float32Array;
    if (layout === 'unfused' && EXPERT_WEIGHT.test(name)) {
      tensors.push(...perExpertTensors(name, shape, dtype, values));
    } else {
      tensors.push({name, dtype, shape, data: values});
    }
  }
  writeShards(dir, tensors, maxShardBytes);
  const config = nf4Layers.length ? {...hfConfig, quantization_config: bnbQuantizationConfig(nf4Dtype)} : hfConfig;
  writeAtomically(path.join(dir, 'config.json'), fd => fs.writeSync(fd, JSON.stringify(config, null, 2)));
}

/**
 * Transformers' BitsAndBytesConfig for checkpoints with NF4 experts: 4-bit nf4 without double
 * quantisation; attention, the routers and lm_head stay in float. Transformers 4 skips a linear
 * whose own name is listed (the router `gate`, not `gate_proj`) or whose path holds `name.`.
 */
function bnbQuantizationConfig(computeDtype: 'float32' | 'bfloat16'): Record<string, unknown> {
  return {quant_method: 'bitsandbytes', load_in_4bit: true, load_in_8bit: false, bnb_4bit_quant_type: 'nf4',
          bnb_4bit_use_double_quant: false, bnb_4bit_compute_dtype: computeDtype,
          bnb_4bit_quant_storage: 'uint8', llm_int8_skip_modules: ['self_attn', 'gate', 'lm_head']};
}

/** The bitsandbytes tensors of an NF4 layer's experts [E, out, in] (see saveHfCheckpoint). */
function nf4ExpertTensors(layer: MoeFusedLinearNf4Layer, layout: 'fused' | 'unfused',
                          dtype: 'float32' | 'bfloat16'): TensorToWrite[] {
  const {mlp, proj} = nf4Projection(layer, 'saveHfCheckpoint');
  const {shape: [E, out, inFeatures], blocksize} = layer.nf4;
  const {bytes, blocks} = nf4Sizes(out * inFeatures, blocksize);
  // The layer's bytes and absmax are read when its first tensor is written and dropped after its
  // last: each tensor written asks for its slice twice (codes, absmax), in order.
  const slices = layout === 'fused' ? 1 : E;
  let data: {packed: Uint8Array; absmax: Float32Array} | undefined, asked = 0;
  const slice = (first: number, count: number, shape: number[]): Nf4Tensor => {
    const all = data ??= {packed: int32WordsToBytes(layer.nf4.packed.dataSync() as Int32Array, E * bytes),
                          absmax: layer.nf4.absmax.dataSync() as Float32Array};
    if (++asked === 2 * slices) data = undefined, asked = 0;
    return {shape, blocksize, groups: 1, dtype, packed: all.packed.subarray(first * bytes, (first + count) * bytes),
            absmax: all.absmax.subarray(first * blocks, (first + count) * blocks)};
  };
  if (layout === 'fused') {
    if ((out * inFeatures) % blocksize !== 0) {
      throw new Error(`saveHfCheckpoint: ${layer.name}: its NF4 blocks of ${blocksize} do not tile one expert ` +
                      `(${out}·${inFeatures} values), so the experts cannot be one 4-bit tensor; save with layout 'unfused'`);
    }
    return bnb4bitTensors(`${mlp}.${proj}_proj.weight`, () => slice(0, E, [E, out, inFeatures]), [E, out, inFeatures],
                          blocksize, dtype);
  }
  return Array.from({length: E}, (_, e) => bnb4bitTensors(`${mlp}.experts.${e}.${proj}_proj.weight`,
                                                          () => slice(e, 1, [out, inFeatures]), [out, inFeatures],
                                                          blocksize, dtype)).flat();
}

/** The per-expert tensors `<mlp>.experts.e.<proj>.weight` [out, in] of fused expert weight `name` [E, out, in]. */
export function perExpertTensors(name: string, shape: number[], dtype: TensorToWrite['dtype'],
                                 values: () => Float32Array): TensorToWrite[] {
  const [E, out, inFeatures] = shape, per = out * inFeatures;
  const [, mlp, proj] = EXPERT_WEIGHT.exec(name)!;
  // The stack is produced once, when the first expert is written (in order), and dropped after the last.
  let cached: Float32Array | undefined;
  return Array.from({length: E}, (_, e) => ({
    name: `${mlp}.experts.${e}.${proj}_proj.weight`, dtype, shape: [out, inFeatures],
    data: () => {
      const all = (cached ??= values());
      if (e === E - 1) cached = undefined;
      return all.subarray(e * per, (e + 1) * per);
    },
  }));
}

/**
 * Writes tensors as model.safetensors, or as shards of at most maxShardBytes
 * (model-0000i-of-0000n.safetensors) with model.safetensors.index.json, as Transformers does.
 */
export function writeShards(dir: string, tensors: TensorToWrite[], maxShardBytes: number): void {
  const bytesOf = (t: TensorToWrite) => t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
  const shards: TensorToWrite[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    if (size > 0 && size + bytesOf(t) > maxShardBytes) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(t);
    size += bytesOf(t);
  }
  const metadata = {format: 'pt'};
  if (shards.length === 1) {
    writeSafetensors(path.join(dir, SINGLE), shards[0], metadata);
    return;
  }
  const weightMap: Record<string, string> = {};
  const pad = (i: number) => String(i).padStart(5, '0');
  shards.forEach((shard, i) => {
    const file = `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
    writeSafetensors(path.join(dir, file), shard, metadata);
    shard.forEach(t => weightMap[t.name] = file);
  });
  const index = {metadata: {total_size: tensors.reduce((a, t) => a + bytesOf(t), 0)}, weight_map: weightMap};
  writeAtomically(path.join(dir, INDEX), fd => fs.writeSync(fd, JSON.stringify(index, null, 2)));
}
