/** `generate`: continues a prompt (optionally as a chat) with a KV cache, streaming the text. */
import * as fs from 'fs';
import * as path from 'path';

import {generate} from '../../generation/generate';
import {BACKEND_FLAG, useBackendOf} from '../backend';
import {UsageError} from '../errors';
import {FlagSpec, numberFlag, parseFlags, requiredFlag, stringFlag} from '../flags';
import {MODEL_FLAGS, openFolderOf, requireTokenizer} from '../model_folder';

export const GENERATE_USAGE = `generate --model DIR [--adapter DIR] --prompt TEXT [options]
  --chat               render the prompt with the tokenizer's chat template (as a user turn)
  --system TEXT        a system turn before it (with --chat)
  --max-new-tokens N   (128)
  --temperature X      0 = greedy; sampling otherwise (defaults from generation_config.json, else greedy)
  --top-p X  --top-k N  --seed N  --backend cpu|tensorflow (cpu)
  --load-in-4bit       experts in NF4 (quantised on load, or a bitsandbytes checkpoint)`;

const FLAGS: FlagSpec = {
  ...MODEL_FLAGS, ...BACKEND_FLAG, prompt: {type: 'string'}, chat: {type: 'boolean'},
  system: {type: 'string'}, 'max-new-tokens': {type: 'string'}, temperature: {type: 'string'}, 'top-p': {type: 'string'},
  'top-k': {type: 'string'}, seed: {type: 'string'},
};

/** generation_config.json of a model folder (Transformers' sampling defaults), {} when absent. */
function generationConfig(dir: string): Record<string, unknown> {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return {};
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

export async function generateText(argv: string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS);
  const prompt = requiredFlag(flags, 'prompt');
  const maxNewTokens = numberFlag(flags, 'max-new-tokens', 128, {min: 0, integer: true});
  await useBackendOf(flags);
  const folder = openFolderOf(flags);
  const tokenizer = requireTokenizer(folder, 'generate');
  const defaults = generationConfig(folder.dir);

  // Flags override generation_config.json; do_sample there (or a temperature > 0 here) turns sampling on.
  const temperature = numberFlag(flags, 'temperature', Number(defaults.temperature ?? 1), {min: 0});
  const doSample = flags.temperature !== undefined ? temperature > 0 : defaults.do_sample === true;
  const eos = new Set<number>([defaults.eos_token_id ?? []].flat().map(Number));
  if (tokenizer.eosTokenId !== null) eos.add(tokenizer.eosTokenId);
  const messages = [...(flags.system ? [{role: 'system', content: stringFlag(flags, 'system')!}] : []), {role: 'user', content: prompt}];
  if (flags.system && !flags.chat) throw new UsageError('--system needs --chat');
  const ids = flags.chat ? tokenizer.encodeChat(messages, {addGenerationPrompt: true}) : tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError('the prompt encodes to no tokens');

  const made: number[] = [];
  let shown = '';
  await generate(folder.model, [ids], {
    maxNewTokens, doSample, temperature: doSample ? temperature : 1, eosTokenIds: [...eos],
    topP: numberFlag(flags, 'top-p', Number(defaults.top_p ?? 1), {min: Number.MIN_VALUE, max: 1}),
    topK: numberFlag(flags, 'top-k', Number(defaults.top_k ?? 50), {min: 0, integer: true}),
    seed: flags.seed !== undefined ? numberFlag(flags, 'seed', 0, {min: 0, integer: true}) : undefined,
    padTokenId: tokenizer.padTokenId ?? undefined,
    onStep: ([token]) => {  // print what the new token adds to the decoded text (a character may span tokens)
      if (eos.has(token)) return;
      made.push(token);
      const text = tokenizer.decode(made, {skipSpecialTokens: true});
      if (text.startsWith(shown) && !text.endsWith('\ufffd')) {
        process.stdout.write(text.slice(shown.length));
        shown = text;
      }
    },
  });
  const text = tokenizer.decode(made, {skipSpecialTokens: true});
  process.stdout.write(text.slice(text.startsWith(shown) ? shown.length : 0) + '\n');
}
