/** `convert`: a checkpoint or a PEFT adapter from one expert layout to the other, in safetensors. */
import * as path from 'path';

import {convertHfCheckpoint} from '../../io/convert_checkpoint';
import {UsageError} from '../errors';
import {choiceFlag, FlagSpec, parseFlags, requiredFlag, stringFlag} from '../flags';
import {openModelFolder, saveModelFolder} from '../model_folder';

export const CONVERT_USAGE = `convert --model DIR --out DIR --layout fused|unfused [--dtype F32|BF16|F16] [--max-shard-gb X]
  Rewrites a Hugging Face checkpoint with experts fused ([E, out, in] per projection) or unfused
  (one matrix per expert), tensor by tensor; other files (config, tokenizer) are copied.
  --load-in-4bit       builds the model with its experts in NF4 (quantised on load, or read as
                       stored from a bitsandbytes checkpoint) and writes them as bitsandbytes
                       4-bit weights (dtype F32 or BF16 for the rest; fused needs NF4 blocks
                       that tile each expert)
convert --adapter DIR --model DIR --out DIR --layout fused|per-expert
  Rewrites a PEFT adapter of that model with its experts in peft's fused layout (Transformers 5)
  or per expert (Transformers 4, vLLM).`;

const FLAGS: FlagSpec = {
  model: {type: 'string'}, adapter: {type: 'string'}, out: {type: 'string'}, layout: {type: 'string'},
  dtype: {type: 'string'}, 'max-shard-gb': {type: 'string'}, 'load-in-4bit': {type: 'boolean'},
};

export async function convert(argv: string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS);
  const model = requiredFlag(flags, 'model'), out = requiredFlag(flags, 'out');
  const adapter = stringFlag(flags, 'adapter');
  if (adapter) {
    const {convertPeftAdapter} = await import('../../lora/convert_peft_adapter');
    const layout = choiceFlag(flags, 'layout', ['fused', 'per-expert'] as const, 'fused');
    convertPeftAdapter(adapter, out, model, {expertLayout: layout});
    console.log(`adapter written to ${out} (${layout})`);
    return;
  }
  const layout = choiceFlag(flags, 'layout', ['fused', 'unfused'] as const, 'fused');
  const shardGb = flags['max-shard-gb'] === undefined ? 5 : Number(flags['max-shard-gb']);
  if (!(shardGb > 0)) throw new UsageError(`--max-shard-gb must be a positive number, got ${JSON.stringify(flags['max-shard-gb'])}`);
  if (flags['load-in-4bit'] === true) {
    // As convertHfCheckpoint: writing over the input would replace the float checkpoint.
    if (path.resolve(model) === path.resolve(out)) throw new UsageError('the output folder must differ from the input (--out is --model)');
    const dtype = choiceFlag(flags, 'dtype', ['F32', 'BF16'] as const, 'F32');
    saveModelFolder(openModelFolder(model, {loadIn4bit: true}), out, {layout, dtype, maxShardBytes: shardGb * 1e9});
    console.log(`model written to ${out} with its experts in NF4 (bitsandbytes 4-bit, ${layout})`);
    return;
  }
  const dtype = flags.dtype === undefined ? undefined : choiceFlag(flags, 'dtype', ['F32', 'BF16', 'F16'] as const, 'F32');
  const {tensors} = convertHfCheckpoint(model, out, {layout, dtype, maxShardBytes: shardGb * 1e9});
  console.log(`${tensors} tensors written to ${out} (${layout})`);
}
