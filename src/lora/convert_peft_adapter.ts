/**
 * Converting a PEFT adapter between expert layouts (per expert ↔ peft's fused target_parameters)
 * without building the model: only the base model's config.json is read, for the experts' sizes.
 */
import * as fs from 'fs';
import * as path from 'path';

import {fromHfConfig, isSparseLayer} from '../../models/qwen3_moe/config';
import {readAdapterConfig, readPeftAdapter} from './read_peft_adapter';
import {SavePeftOptions, writePeftAdapter} from './save_peft_adapter';

/** Reads the adapter in `from` (for the model in `modelDir`) and writes it to `to` in options.expertLayout. */
export function convertPeftAdapter(from: string, to: string, modelDir: string, options: SavePeftOptions): void {
  if (path.resolve(from) === path.resolve(to)) throw new Error('convert: the output folder must differ from the input');
  const configFile = path.join(modelDir, 'config.json');
  let hf: Record<string, unknown>;
  try {
    hf = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  } catch (e) {
    throw new Error(`${configFile}: ${(e as Error).message}`);
  }
  const config = fromHfConfig(hf);
  const adapters = readPeftAdapter(from, mlp => {
    const layer = /^model\.layers\.(\d+)\.mlp$/.exec(mlp);
    if (!layer || !isSparseLayer(config, Number(layer[1]))) return undefined;
    return {E: config.numExperts, I: config.moeIntermediateSize, H: config.hiddenSize};
  });
  const baseModel = options.baseModel ?? readAdapterConfig(from).base_model_name_or_path ?? undefined;
  writePeftAdapter(adapters, to, {...options, baseModel});
}
