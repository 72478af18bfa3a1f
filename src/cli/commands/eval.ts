/**
 * `eval`: logits of given token rows (dumped to safetensors), or the loss and perplexity of a
 * text file, for a model folder with an optional PEFT adapter.
 */
import * as fs from 'fs';

import * as tf from '@tensorflow/tfjs-core';

import {writeSafetensors} from '../../io/safetensors';
import {causalLmLoss} from '../../train/causal_lm_loss';
import {BACKEND_FLAG, useBackendOf} from '../backend';
import {tokenWindows} from '../data';
import {UsageError} from '../errors';
import {FlagSpec, numberFlag, parseFlags, stringFlag} from '../flags';
import {MODEL_FLAGS, openFolderOf, requireTokenizer} from '../model_folder';

export const EVAL_USAGE = `eval --model DIR [--adapter DIR] (--tokens FILE.json [--dump-logits OUT.safetensors] | --data FILE)
  --tokens FILE.json   an array of equally long arrays of token ids
  --dump-logits OUT    write float32 logits [B, S, V] of those rows
  --data FILE          .txt or .jsonl: prints loss and perplexity over --seq-len windows (128)
  --batch N (4)  --backend cpu|tensorflow (cpu)
  --load-in-4bit       experts in NF4 (quantised on load, or a bitsandbytes checkpoint)`;

const FLAGS: FlagSpec = {
  ...MODEL_FLAGS, ...BACKEND_FLAG, tokens: {type: 'string'}, 'dump-logits': {type: 'string'},
  data: {type: 'string'}, 'seq-len': {type: 'string'}, batch: {type: 'string'},
};

/** The rows of a --tokens file, checked: equal lengths, integer ids in [0, V). */
export function readTokenRows(file: string, vocabSize: number): number[][] {
  if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file`);
  let rows: unknown;
  try {
    rows = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(rows) || rows.length === 0 || !rows.every(Array.isArray)) {
    throw new UsageError(`${file}: expected a non-empty array of arrays of token ids`);
  }
  const length = (rows[0] as unknown[]).length;
  (rows as unknown[][]).forEach((row, b) => {
    if (row.length !== length || length === 0) throw new UsageError(`${file}: row ${b} has ${row.length} ids, row 0 has ${length}; rows must be equally long and not empty`);
    row.forEach((id, i) => {
      if (!(Number.isInteger(id) && (id as number) >= 0 && (id as number) < vocabSize)) {
        throw new UsageError(`${file}: [${b}][${i}] = ${JSON.stringify(id)} is not a token id in [0, ${vocabSize})`);
      }
    });
  });
  return rows as number[][];
}

export async function evaluate(argv: string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS);
  const tokens = stringFlag(flags, 'tokens'), data = stringFlag(flags, 'data'), dump = stringFlag(flags, 'dump-logits');
  if ((tokens === undefined) === (data === undefined)) throw new UsageError('give either --tokens or --data');
  if (dump && !tokens) throw new UsageError('--dump-logits needs --tokens');
  const batch = numberFlag(flags, 'batch', 4, {min: 1, integer: true});
  await useBackendOf(flags);
  const folder = openFolderOf(flags);
  const {model, config} = folder;

  let rows: Int32Array[];
  if (tokens) {
    rows = readTokenRows(tokens, config.vocabSize).map(r => Int32Array.from(r));
  } else {
    rows = tokenWindows(data!, requireTokenizer(folder, 'eval --data'), numberFlag(flags, 'seq-len', 128, {min: 2, integer: true}));
  }
  const S = rows[0].length, V = config.vocabSize;
  const logits = dump ? new Float32Array(rows.length * S * V) : undefined;
  let lossSum = 0;
  for (let start = 0; start < rows.length; start += batch) {
    const part = rows.slice(start, start + batch);
    const batchIds = new Int32Array(part.length * S);
    part.forEach((r, i) => batchIds.set(r, i * S));
    const [values, loss] = tf.tidy(() => {
      const ids = tf.tensor2d(batchIds, [part.length, S], 'int32');
      const out = model.predict(ids) as tf.Tensor3D;
      return [logits ? out.dataSync() : undefined, causalLmLoss(ids, out).dataSync()[0]] as const;
    });
    if (logits) logits.set(values!, start * S * V);
    lossSum += loss * part.length;  // every row counts S − 1 predictions
  }
  const loss = lossSum / rows.length;
  if (logits) {
    writeSafetensors(dump!, [{name: 'logits', dtype: 'F32', shape: [rows.length, S, V], data: () => logits}], {format: 'pt'});
  }
  console.log(JSON.stringify({loss, perplexity: Math.exp(loss), sequences: rows.length, tokens: rows.length * (S - 1)}));
}
