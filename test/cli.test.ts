/** The command line (src/cli), run in-process through main(argv) on the cpu backend. */
import * as child from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';

import {relativeError} from './helpers/reference';
import {main} from '../src/cli/main';
import {openModelFolder} from '../src/cli/model_folder';
import {generate} from '../src/generation/generate';
import {HfCheckpoint} from '../src/io/hf_checkpoint';
import {readSafetensors} from '../src/io/safetensors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-'));
afterAll(() => fs.rmSync(tmp, {recursive: true, force: true}));
const HF = path.join(__dirname, 'fixtures', 'hf_checkpoints');
const BIN = path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js');  // built by npm install

/** Runs the CLI; returns its exit code and what it printed. */
async function run(...argv: string[]): Promise<{code: number; out: string; err: string}> {
  const out: string[] = [], err: string[] = [];
  const log = jest.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ') + '\n'));
  const error = jest.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ') + '\n'));
  const write = jest.spyOn(process.stdout, 'write').mockImplementation(s => (out.push(String(s)), true));
  const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);  // the progress bar
  try {
    const code = await main(argv);
    return {code, out: out.join(''), err: err.join('')};
  } finally {
    for (const spy of [log, error, write, stderr]) spy.mockRestore();
  }
}

const readLog = (file: string) => fs.readFileSync(file, 'utf8').trim().split('\n').map(l => JSON.parse(l));
const small = ['--seq-len', '32', '--batch', '2'];

test('train runs out of the box: the default model and corpus, a log per step, a PEFT adapter and its base', async () => {
  const out = path.join(tmp, 'default'), log = path.join(tmp, 'default.log');
  const result = await run('train', '--steps', '3', ...small, '--out', out, '--log', log);
  expect(result).toMatchObject({code: 0, err: ''});
  expect(result.out).toMatch(/adapter: .*adapter \(base model .*base\)/);
  const lines = readLog(log);
  expect(lines.map(l => l.step)).toEqual([1, 2, 3]);
  for (const l of lines) {
    expect(l.loss).toBeGreaterThan(0);
    expect(l.tokensPerSecond).toBeGreaterThan(0);
  }
  const config = JSON.parse(fs.readFileSync(path.join(out, 'adapter', 'adapter_config.json'), 'utf8'));
  expect(config).toMatchObject({peft_type: 'LORA', r: 8, lora_alpha: 16, base_model_name_or_path: path.join(out, 'base')});
  expect(fs.existsSync(path.join(out, 'base', 'tokenizer.json'))).toBe(true);
});

test('train reads .jsonl: {"text"} lines and {"messages"} rendered by the chat template', async () => {
  const data = path.join(tmp, 'data.jsonl');
  const lines = [{text: 'The router picks two experts for every token. '.repeat(4)},
                 {messages: [{role: 'user', content: 'What is LoRA?'}, {role: 'assistant', content: 'A low-rank update of a frozen weight.'}]}];
  fs.writeFileSync(data, lines.map(l => JSON.stringify(l)).join('\n') + '\n\n');
  expect((await run('train', '--data', data, '--steps', '1', '--seq-len', '16', '--batch', '1', '--out', path.join(tmp, 'jsonl'))).code).toBe(0);
  fs.appendFileSync(data, '{"prompt": "no text field"}\n');
  const bad = await run('train', '--data', data, '--steps', '1', '--seq-len', '16', '--out', path.join(tmp, 'jsonl'));
  expect(bad.code).toBe(1);
  expect(bad.err).toMatch(/data.jsonl:4: expected \{"text": string\} or \{"messages": \[...\]\}/);
  const tooShort = await run('train', '--data', data.replace('.jsonl', '.txt'), '--steps', '1');
  expect(tooShort.err).toMatch(/data.txt: no such file/);
});

test('--resume continues from a checkpoint exactly where an uninterrupted run would be', async () => {
  const base = path.join(tmp, 'default', 'base');  // fixed weights; --lora-r 0 adds no random adapter
  const args = ['--model', base, '--lora-r', '0', '--schedule', 'constant', '--warmup-steps', '0', '--lr', '1e-3', ...small];
  const straight = path.join(tmp, 'straight.log'), resumed = path.join(tmp, 'resumed.log');
  expect((await run('train', ...args, '--steps', '4', '--out', path.join(tmp, 'a'), '--log', straight)).code).toBe(0);
  expect((await run('train', ...args, '--steps', '2', '--out', path.join(tmp, 'b'), '--log', resumed)).code).toBe(0);
  expect((await run('train', ...args, '--steps', '4', '--out', path.join(tmp, 'b'), '--log', resumed, '--resume')).code).toBe(0);
  const [a, b] = [readLog(straight), readLog(resumed)];
  expect(b.map(l => l.step)).toEqual([1, 2, 3, 4]);
  for (let i = 0; i < 4; ++i) expect(Math.abs(b[i].loss - a[i].loss)).toBeLessThanOrEqual(1e-6 * a[i].loss);
  // Settings that differ from the checkpoint's are refused.
  const other = await run('train', ...args, '--lr', '1e-2', '--steps', '6', '--out', path.join(tmp, 'b'), '--resume');
  expect(other).toMatchObject({code: 1});
  expect(other.err).toMatch(/--resume: the checkpoint was made with lr = 0.001, not 0.01/);
  // Full fine-tuning saves the whole model, which loads back.
  expect(fs.existsSync(path.join(tmp, 'a', 'model', 'model.safetensors'))).toBe(true);
});

test('eval dumps the logits of token rows and reports loss and perplexity of a text', async () => {
  const base = path.join(tmp, 'default', 'base'), adapter = path.join(tmp, 'default', 'adapter');
  const tokens = path.join(tmp, 'tokens.json'), dump = path.join(tmp, 'logits.safetensors');
  const rows = [[1, 2, 3, 4, 5], [1002, 7, 999, 0, 42]];
  fs.writeFileSync(tokens, JSON.stringify(rows));
  const result = await run('eval', '--model', base, '--adapter', adapter, '--tokens', tokens, '--dump-logits', dump);
  expect(result.code).toBe(0);
  const {model} = openModelFolder(base, {adapter});
  const expected = tf.tidy(() => (model.predict(tf.tensor2d(rows, undefined, 'int32')) as tf.Tensor).dataSync());
  const logits = readSafetensors(dump).get('logits')!;
  expect(logits.shape).toEqual([2, 5, 1009]);
  expect(relativeError(logits.data, expected)).toBeLessThanOrEqual(1e-6);

  const text = await run('eval', '--model', base, '--data', path.join(__dirname, '..', 'models', 'qwen3_moe', 'default', 'corpus.txt'), '--seq-len', '64', '--batch', '16');
  const report = JSON.parse(text.out);
  expect(report.perplexity).toBeCloseTo(Math.exp(report.loss), 6);
  expect(report.tokens).toBe(report.sequences * 63);
});

test('generate prints what the generation API makes (greedy, KV cache), with the adapter', async () => {
  const base = path.join(tmp, 'default', 'base'), adapter = path.join(tmp, 'default', 'adapter');
  const result = await run('generate', '--model', base, '--adapter', adapter, '--prompt', 'A mixture of', '--max-new-tokens', '6');
  expect(result.code).toBe(0);
  const {model, tokenizer} = openModelFolder(base, {adapter});
  const {tokens} = await generate(model, [tokenizer!.encode('A mixture of')], {maxNewTokens: 6, eosTokenIds: [1002, 1000]});
  const made = tokens[0].filter(t => t !== 1002 && t !== 1000);
  expect(result.out).toBe(tokenizer!.decode(made, {skipSpecialTokens: true}) + '\n');
  const chat = await run('generate', '--model', base, '--prompt', 'Hi', '--chat', '--temperature', '0.7', '--top-p', '0.9', '--seed', '1', '--max-new-tokens', '4');
  expect(chat.code).toBe(0);
});

test('convert rewrites a checkpoint and an adapter in the other expert layout', async () => {
  const unfused = path.join(tmp, 'unfused');
  expect((await run('convert', '--model', path.join(HF, 'hf5_fused_saved'), '--out', unfused, '--layout', 'unfused')).code).toBe(0);
  const ckpt = HfCheckpoint.open(unfused);
  expect(ckpt.has('model.layers.1.mlp.experts.10.down_proj.weight')).toBe(true);
  ckpt.close();
  const adapter = path.join(tmp, 'adapter-fused');
  const result = await run('convert', '--adapter', path.join(HF, 'peft_experts_v4'), '--model', path.join(HF, 'hf5_saved'),
                           '--out', adapter, '--layout', 'fused');
  expect(result.code).toBe(0);
  expect(fs.readFileSync(path.join(adapter, 'adapter_model.safetensors'))
      .equals(fs.readFileSync(path.join(HF, 'export_fused', 'adapter_model.safetensors')))).toBe(true);
});

// In a separate process: under jest, tfjs-node's arrays come from another realm and tfjs's
// weight encoding (model.save) rejects them; as a command the backend saves fine.
test('train and generate run on the tensorflow backend (the installed bin)', () => {
  const out = path.join(tmp, 'tensorflow');
  const trained = child.spawnSync(process.execPath, [BIN, 'train', '--backend', 'tensorflow', '--steps', '2', ...small, '--out', out],
                                  {encoding: 'utf8'});
  expect(trained.status).toBe(0);
  expect(trained.stdout).toMatch(/loss \d+\.\d+ after 2 steps/);
  const made = child.spawnSync(process.execPath, [BIN, 'generate', '--backend', 'tensorflow', '--model', path.join(out, 'base'),
                                                  '--adapter', path.join(out, 'adapter'), '--prompt', 'The', '--max-new-tokens', '3'],
                               {encoding: 'utf8'});
  expect(made.status).toBe(0);
});

test.each([
  [['frobnicate'], /unknown command "frobnicate"/],
  [['train', '--bogus'], /Unknown option '--bogus'/],
  [['train', '--steps', '0'], /--steps must be an integer ≥ 1, got "0"/],
  [['train', '--backend', 'webgl'], /--backend must be one of cpu, tensorflow, got "webgl"/],
  [['train', '--data', '/nonexistent.txt', '--steps', '1'], /\/nonexistent.txt: no such file/],
  [['eval', '--model', '/nonexistent'], /give either --tokens or --data/],
  [['eval', '--model', '/nonexistent', '--data', 'x.txt'], /\/nonexistent: no such folder/],
  [['generate', '--model', path.join(HF, 'hf5_saved'), '--prompt', 'x'], /no tokenizer.json; generate needs the model's tokenizer/],
  [['convert', '--model', path.join(HF, 'hf5_saved'), '--out', '/tmp/x', '--layout', 'diagonal'], /--layout must be one of fused, unfused/],
])('%j fails with one clear line and exit code 1', async (argv, message) => {
  const {code, err} = await run(...argv);
  expect(code).toBe(1);
  expect(err.split('\n')[0]).toMatch(message);
  expect(err).not.toMatch(/\n\s+at /);  // no stack trace without --verbose
});

test('--verbose adds the stack trace', async () => {
  const {code, err} = await run('eval', '--model', '/nonexistent', '--data', 'x.txt', '--verbose');
  expect(code).toBe(1);
  expect(err).toMatch(/\n\s+at /);
});

test('the installed bin runs (dist, as npx runs it)', () => {
  const bin = BIN;
  expect(fs.readFileSync(bin, 'utf8').startsWith('#!/usr/bin/env node')).toBe(true);
  const help = child.spawnSync(process.execPath, [bin, '--help'], {encoding: 'utf8'});
  expect(help.status).toBe(0);
  expect(help.stdout).toMatch(/usage: tfjs-moe-fused <command>/);
  const bad = child.spawnSync(process.execPath, [bin, 'train', '--nope'], {encoding: 'utf8'});
  expect(bad.status).toBe(1);
  expect(bad.stderr.trim()).toMatch(/^tfjs-moe-fused train: Unknown option '--nope'[^\n]*$/);
});
