/**
 * Converting a Hugging Face Qwen3-MoE checkpoint between expert layouts without building a model:
 * tensors stream from the input shards to the output shards, one at a time (one layer's stacked
 * experts at most), so a 60 GB checkpoint converts in a few GB of memory.
 */
import * as fs from 'fs';
import * as path from 'path';

import {isBnb4bit} from './bnb_4bit';
import {fusedExperts, HfCheckpoint, perExpertTensors, writeShards} from './hf_checkpoint';
import {TensorToWrite, writeAtomically} from './safetensors';

export interface ConvertOptions {
  /** fused: experts as [E, out, in] per projection; unfused: one matrix per expert (Transformers 4, the Hub). */
  layout: 'fused' | 'unfused';
  /** Output dtype of floating tensors; by default each keeps its stored dtype (F64 becomes F32). */
  dtype?: 'F32' | 'BF16' | 'F16';
  maxShardBytes?: number;
}

/** Any layout's expert tensor: per expert, Transformers 5's gate_up_proj / down_proj, or ours. */
const ANY_EXPERT = /^(model\.layers\.\d+\.mlp)\.(?:experts\.\d+\.(?:gate|up|down)_proj\.weight|experts\.(?:gate_up|down)_proj|(?:gate|up|down)_proj\.weight)$/;

/** [E, out, in] of each projection of the experts at `mlp`, from whichever layout holds them. */
function expertShapes(ckpt: HfCheckpoint, mlp: string): Record<'gate' | 'up' | 'down', number[]> | undefined {
  const own = (p: string) => ckpt.shape(`${mlp}.${p}_proj.weight`);
  if (own('gate')?.length === 3) return {gate: own('gate')!, up: own('up')!, down: own('down')!};
  const gateUp = ckpt.shape(`${mlp}.experts.gate_up_proj`), down = ckpt.shape(`${mlp}.experts.down_proj`);
  if (gateUp && down) return {gate: [gateUp[0], gateUp[1] / 2, gateUp[2]], up: [gateUp[0], gateUp[1] / 2, gateUp[2]], down};
  let E = 0;
  while (ckpt.has(`${mlp}.experts.${E}.gate_proj.weight`)) E++;
  if (E === 0) return undefined;
  const per = (p: string) => [E, ...ckpt.shape(`${mlp}.experts.0.${p}_proj.weight`)!];
  return {gate: per('gate'), up: per('up'), down: per('down')};
}

/** Writes the checkpoint in `from` to `to` in the requested layout; other files (config, tokenizer) are copied. */
export function convertHfCheckpoint(from: string, to: string, options: ConvertOptions): {tensors: number} {
  if (options.layout !== 'fused' && options.layout !== 'unfused') {
    throw new RangeError(`convert: layout must be 'fused' or 'unfused', got ${JSON.stringify(options.layout)}`);
  }
  if (path.resolve(from) === path.resolve(to)) throw new Error('convert: the output folder must differ from the input');
  const ckpt = HfCheckpoint.open(from);
  try {
    const quantised = ckpt.names().find(name => isBnb4bit(ckpt, name));
    if (quantised) {
      throw new Error(`convert: ${from} holds bitsandbytes 4-bit weights (${quantised}); converting 4-bit checkpoints ` +
                      'is not supported tensor by tensor: convert the float checkpoint, or go through a model with NF4 experts ' +
                      '(loadHfCheckpoint into expertsIn4bit, then saveHfCheckpoint; CLI: convert --load-in-4bit)');
    }
    const tensors: TensorToWrite[] = [];
    const done = new Set<string>();
    // Integer tensors (e.g. bitsandbytes' packed U8 weights) keep their dtype; floats take options.dtype.
    const outDtype = (name: string): TensorToWrite['dtype'] => {
      const stored = ckpt.dtype(name)!;
      if (stored === 'I32' || stored === 'I64' || stored === 'U8' || stored === 'BOOL') return stored;
      return options.dtype ?? (stored === 'F64' ? 'F32' : stored);
    };
    for (const name of ckpt.names()) {
      const expert = ANY_EXPERT.exec(name);
      const shapes = expert && expertShapes(ckpt, expert[1]);
      if (!expert || !shapes) {
        tensors.push({name, dtype: outDtype(name), shape: ckpt.shape(name)!, data: () => ckpt.read(name).data});
        continue;
      }
      if (done.has(expert[1])) continue;
      done.add(expert[1]);
      for (const proj of ['gate', 'up', 'down'] as const) {
        const fusedName = `${expert[1]}.${proj}_proj.weight`, shape = shapes[proj];
        const values = () => {
          const fused = fusedExperts(ckpt, fusedName, shape);
          if (!fused) throw new Error(`${from}: the experts of ${expert[1]} are incomplete`);
          return fused.data;
        };
        const dtype = outDtype(name);
        if (options.layout === 'fused') tensors.push({name: fusedName, dtype, shape, data: values});
        else tensors.push(...perExpertTensors(fusedName, shape, dtype, values));
      }
    }
    fs.mkdirSync(to, {recursive: true});
    writeShards(to, tensors, options.maxShardBytes ?? 5e9);
    for (const file of fs.readdirSync(from)) {  // config.json, generation_config.json, tokenizer files, ...
      if (/\.safetensors(\.index\.json)?$/.test(file) || !fs.statSync(path.join(from, file)).isFile()) continue;
      const bytes = fs.readFileSync(path.join(from, file));
      writeAtomically(path.join(to, file), fd => fs.writeSync(fd, bytes));
    }
    return {tensors: tensors.length};
  } finally {
    ckpt.close();
  }
}
