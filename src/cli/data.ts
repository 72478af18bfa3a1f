/**
 * Training and evaluation text: a .txt file (one document) or .jsonl (one document per line:
 * {"text": ...} or {"messages": [...]} rendered by the chat template), tokenised, each document
 * followed by the EOS token, concatenated and cut into windows of seqLen tokens (the remainder is
 * dropped), as Transformers' run_clm groups texts.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';

import {Rng} from '../generation/rng';
import {ChatMessage} from '../tokenizer/chat_template';
import {HfTokenizer} from '../tokenizer/tokenizer';
import {UsageError} from './errors';

/** The documents of a .txt or .jsonl file, as text. */
export function readDocuments(file: string, tokenizer: HfTokenizer): string[] {
  if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file`);
  const text = fs.readFileSync(file, 'utf8');
  if (path.extname(file) === '.txt') return [text];
  if (path.extname(file) !== '.jsonl') throw new UsageError(`${file}: expected a .txt or .jsonl file`);
  return text.split('\n').flatMap((line, i) => {
    if (line.trim() === '') return [];
    let row: {text?: unknown; messages?: unknown};
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new UsageError(`${file}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    if (typeof row.text === 'string') return [row.text];
    if (Array.isArray(row.messages)) return [tokenizer.applyChatTemplate(row.messages as ChatMessage[])];
    throw new UsageError(`${file}:${i + 1}: expected {"text": string} or {"messages": [...]}`);
  });
}

/** Token windows [n][seqLen] of the file's documents. */
export function tokenWindows(file: string, tokenizer: HfTokenizer, seqLen: number): Int32Array[] {
  const ids: number[] = [];
  for (const doc of readDocuments(file, tokenizer)) {
    for (const id of tokenizer.encode(doc, {addSpecialTokens: false})) ids.push(id);
    if (tokenizer.eosTokenId !== null) ids.push(tokenizer.eosTokenId);
  }
  const n = Math.floor(ids.length / seqLen);
  if (n === 0) throw new UsageError(`${file}: ${ids.length} tokens, fewer than one window of --seq-len ${seqLen}`);
  return Array.from({length: n}, (_, i) => Int32Array.from(ids.slice(i * seqLen, (i + 1) * seqLen)));
}

/** Batches of windows in a seeded order, reshuffled every pass over the data. */
export class Batches {
  private order: number[] = [];
  private passOf = -1;

  constructor(private readonly windows: Int32Array[], readonly batchSize: number, private readonly seed: number) {}

  /** The ids [batchSize, seqLen] of training step `step` (0-based); the same step always gives the same batch. */
  batch(step: number): tf.Tensor2D {
    const seqLen = this.windows[0].length;
    const data = new Int32Array(this.batchSize * seqLen);
    for (let b = 0; b < this.batchSize; ++b) data.set(this.windows[this.index(step * this.batchSize + b)], b * seqLen);
    return tf.tensor2d(data, [this.batchSize, seqLen], 'int32');
  }

  private index(k: number): number {
    const n = this.windows.length, pass = Math.floor(k / n);
    if (this.order.length === 0 || this.passOf !== pass) {
      const rng = new Rng(this.seed + pass);
      this.order = Array.from({length: n}, (_, i) => i);
      for (let i = n - 1; i > 0; --i) {  // Fisher–Yates
        const j = Math.floor(rng.next() * (i + 1));
        [this.order[i], this.order[j]] = [this.order[j], this.order[i]];
      }
      this.passOf = pass;
    }
    return this.order[k % n];
  }
}
