/**
 * Reads a Hugging Face tokenizer folder as Transformers does: tokenizer.json, tokenizer_config.json
 * and the chat template, which chat_template.jinja (and additional_chat_templates/NAME.jinja), where
 * present, take over from tokenizer_config.json's `chat_template`.
 */
import * as fs from 'fs';
import * as path from 'path';

import {ChatTemplates} from './chat_template';
import {HfTokenizer} from './tokenizer';

const TOKENIZER_FILE = 'tokenizer.json';
const CONFIG_FILE = 'tokenizer_config.json';
const TEMPLATE_FILE = 'chat_template.jinja';
const TEMPLATE_DIR = 'additional_chat_templates';

export function loadTokenizer(dir: string): HfTokenizer {
  if (typeof dir !== 'string') throw new TypeError('loadTokenizer: dir must be a path');
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new Error(`${dir}: no such tokenizer folder`);
  const tokenizerFile = path.join(dir, TOKENIZER_FILE);
  const configFile = path.join(dir, CONFIG_FILE);
  const tokenizerJson = readJsonObject(tokenizerFile);
  if (typeof tokenizerJson.model !== 'object' || tokenizerJson.model === null) {
    throw new Error(`${tokenizerFile}: no "model" object, this is not a tokenizers tokenizer.json`);
  }
  const config = readJsonObject(configFile);
  const templates = readChatTemplates(dir, config, configFile);
  try {
    return new HfTokenizer(tokenizerJson, config, templates);
  } catch (e) {
    throw new Error(`${dir}: ${(e as Error).message}`);
  }
}

function readJsonObject(file: string): Record<string, unknown> {
  if (!fs.existsSync(file)) throw new Error(`${file}: missing (a tokenizer folder needs ${TOKENIZER_FILE} and ${CONFIG_FILE})`);
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new SyntaxError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TypeError(`${file}: expected a JSON object`);
  }
  return value as Record<string, unknown>;
}

function readChatTemplates(dir: string, config: Record<string, unknown>, configFile: string): ChatTemplates {
  const files = new Map<string, string>();
  const single = path.join(dir, TEMPLATE_FILE);
  if (fs.existsSync(single)) files.set('default', fs.readFileSync(single, 'utf8'));
  const extraDir = path.join(dir, TEMPLATE_DIR);
  if (fs.existsSync(extraDir)) {
    for (const name of fs.readdirSync(extraDir).sort()) {
      if (name.endsWith('.jinja')) files.set(name.slice(0, -'.jinja'.length), fs.readFileSync(path.join(extraDir, name), 'utf8'));
    }
  }
  if (files.size > 0) return files.size === 1 && files.has('default') ? files.get('default')! : files;

  const value = config.chat_template;
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  // Several templates are stored as [{name, template}, ...].
  if (Array.isArray(value) && value.every(t => typeof t?.name === 'string' && typeof t?.template === 'string')) {
    return new Map(value.map(t => [t.name as string, t.template as string]));
  }
  throw new TypeError(`${configFile}: chat_template must be a string or a list of {name, template}`);
}
