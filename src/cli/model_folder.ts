/**
 * A model folder as the CLI uses it: a Hugging Face checkpoint (config.json, model.safetensors or
 * shards, any expert layout) with its tokenizer, or the embedded default (a tiny Qwen3-MoE with
 * random weights, a small tokenizer and corpus in models/qwen3_moe/default).
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tfl from '@tensorflow/tfjs-layers';

import {fromHfConfig, Qwen3MoeConfig} from '../../models/qwen3_moe/config';
import {buildQwen3MoeForCausalLM} from '../../models/qwen3_moe/model';
import {loadHfCheckpoint, saveHfCheckpoint, SaveOptions} from '../io/hf_checkpoint';
import {loadPeftAdapter} from '../lora/load_peft_adapter';
import {loadTokenizer} from '../tokenizer/load_tokenizer';
import {HfTokenizer} from '../tokenizer/tokenizer';
import {UsageError} from './errors';
import {Flags, FlagSpec, requiredFlag, stringFlag} from './flags';

export interface ModelFolder {
  model: tfl.LayersModel;
  hfConfig: Record<string, unknown>;
  config: Qwen3MoeConfig;
  /** The folder's tokenizer (tokenizer.json + tokenizer_config.json), when it has one. */
  tokenizer?: HfTokenizer;
  /** The folder; for the embedded default, models/qwen3_moe/default. */
  dir: string;
  /** Whether the weights are the default's random ones (nothing was loaded). */
  isDefault: boolean;
}

/** models/qwen3_moe/default, from src/cli (ts) or dist/src/cli (js). */
export function defaultFolder(): string {
  for (const up of ['../..', '../../..']) {
    const dir = path.resolve(__dirname, up, 'models', 'qwen3_moe', 'default');
    if (fs.existsSync(path.join(dir, 'config.json'))) return dir;
  }
  throw new Error('the embedded default model (models/qwen3_moe/default) is missing from this installation');
}

function readConfig(dir: string): Record<string, unknown> {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(dir)) throw new UsageError(`${dir}: no such folder`);
  if (!fs.existsSync(file)) throw new UsageError(`${dir}: no config.json (expected a Hugging Face model folder)`);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

/**
 * Opens `dir` (undefined: the embedded default), with a PEFT adapter on top when given; with
 * loadIn4bit the experts are held in NF4 (quantised on load, or read from a bitsandbytes checkpoint).
 */
export function openModelFolder(dir: string | undefined, options: {adapter?: string; loadIn4bit?: boolean} = {}): ModelFolder {
  const isDefault = dir === undefined;
  if (isDefault && options.loadIn4bit) throw new UsageError('--load-in-4bit needs --model (the built-in model has no weights to quantise)');
  const folder = dir ?? defaultFolder();
  const hfConfig = readConfig(folder);
  let config: Qwen3MoeConfig;
  try {
    config = fromHfConfig(hfConfig);
  } catch (e) {
    throw new UsageError(`${path.join(folder, 'config.json')}: ${(e as Error).message}`);
  }
  const model = buildQwen3MoeForCausalLM(config, {expertsIn4bit: options.loadIn4bit});
  if (!isDefault) loadHfCheckpoint(model, folder);
  if (options.adapter) {
    if (!fs.existsSync(path.join(options.adapter, 'adapter_config.json'))) {
      throw new UsageError(`${options.adapter}: no adapter_config.json (expected a PEFT adapter folder)`);
    }
    loadPeftAdapter(model, options.adapter);
  }
  const tokenizer = fs.existsSync(path.join(folder, 'tokenizer.json')) ? loadTokenizer(folder) : undefined;
  return {model, hfConfig, config, tokenizer, dir: folder, isDefault};
}

/** The flags that open a model folder for eval and generate. */
export const MODEL_FLAGS: FlagSpec = {model: {type: 'string'}, adapter: {type: 'string'}, 'load-in-4bit': {type: 'boolean'}};

/** The folder of --model, with the PEFT adapter of --adapter, experts in NF4 with --load-in-4bit. */
export function openFolderOf(flags: Flags): ModelFolder {
  return openModelFolder(requiredFlag(flags, 'model'), {adapter: stringFlag(flags, 'adapter'), loadIn4bit: flags['load-in-4bit'] === true});
}

/** The folder's tokenizer, or an error saying why `what` needs one. */
export function requireTokenizer(folder: ModelFolder, what: string): HfTokenizer {
  if (!folder.tokenizer) throw new UsageError(`${folder.dir}: no tokenizer.json; ${what} needs the model's tokenizer`);
  return folder.tokenizer;
}

/** Saves the folder's model (its weights, not LoRA adapters) as a checkpoint in `to`, with the tokenizer files. */
export function saveModelFolder(folder: ModelFolder, to: string, options: SaveOptions = {}): void {
  saveHfCheckpoint(folder.model, folder.hfConfig, to, options);
  for (const file of fs.readdirSync(folder.dir)) {
    if (/^(tokenizer.*\.json|special_tokens_map\.json|chat_template\.jinja|vocab\.json|merges\.txt|generation_config\.json)$/.test(file)) {
      fs.copyFileSync(path.join(folder.dir, file), path.join(to, file));
    }
  }
}
