/**
 * `train`: LoRA (or, with --lora-r 0, full) fine-tuning of a Qwen3-MoE on a text file, with a
 * progress bar, a JSON-lines log, resumable checkpoints, and a PEFT adapter at the end.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import {SingleBar} from 'cli-progress';

import {registerFileHandlers} from '../../io/file_handler';
import {writeAtomically} from '../../io/safetensors';
import {applyLora} from '../../lora/apply_lora';
import {savePeftAdapter} from '../../lora/save_peft_adapter';
import {AdamW} from '../../train/adamw';
import {compileCausalLm} from '../../train/causal_lm';
import {BACKEND_FLAG, useBackendOf} from '../backend';
import {Batches, tokenWindows} from '../data';
import {UsageError} from '../errors';
import {choiceFlag, FlagSpec, numberFlag, parseFlags, stringFlag} from '../flags';
import {defaultFolder, openModelFolder, requireTokenizer, saveModelFolder} from '../model_folder';

export const TRAIN_USAGE = `train [--model DIR] [--data FILE.txt|FILE.jsonl] [options]
  Fine-tunes a Qwen3-MoE (default: a tiny built-in model and corpus) and saves a PEFT adapter.
  --model DIR          Hugging Face model folder (config.json, safetensors, tokenizer)
  --data FILE          .txt (one document) or .jsonl ({"text"} or {"messages"} per line)
  --lora-r N           LoRA rank (default 8; 0 trains every weight and saves the whole model)
  --lora-alpha A       LoRA alpha (default 2·r)    --rslora   scale by alpha/√r
  --targets LIST       modules to adapt (default q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)
  --seq-len N (128)  --batch N (4)  --lr X (2e-4)  --steps N (100)  --warmup-steps N (steps/10)
  --schedule linear|constant   the learning rate after warm-up (linear: down to 0 at --steps)
  --weight-decay X (0)  --seed N (0)  --backend cpu|tensorflow (cpu)
  --load-in-4bit       hold the experts frozen in NF4 (QLoRA): quantised on load, or read from a bitsandbytes checkpoint
  --out DIR            output folder (default ./tfjs-moe-out)
  --save-every N       save a resumable checkpoint every N steps   --resume   continue from --out
  --log FILE           one JSON object per step (step, loss, tokensPerSecond, learningRate, seconds)`;

const FLAGS: FlagSpec = {
  ...BACKEND_FLAG, model: {type: 'string'}, data: {type: 'string'}, 'lora-r': {type: 'string'}, 'lora-alpha': {type: 'string'},
  targets: {type: 'string'}, rslora: {type: 'boolean'}, 'seq-len': {type: 'string'}, batch: {type: 'string'},
  lr: {type: 'string'}, steps: {type: 'string'}, 'warmup-steps': {type: 'string'}, 'weight-decay': {type: 'string'},
  seed: {type: 'string'}, schedule: {type: 'string'}, 'load-in-4bit': {type: 'boolean'}, out: {type: 'string'}, 'save-every': {type: 'string'},
  resume: {type: 'boolean'}, log: {type: 'string'},
};

const DEFAULT_TARGETS = 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj';

/** What a resumable checkpoint records besides the weights: where to go on, and the settings that must match. */
interface TrainerState {
  step: number;
  settings: Record<string, unknown>;
}

export async function train(argv: string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS);
  const r = numberFlag(flags, 'lora-r', 8, {min: 0, integer: true});
  const settings = {
    model: stringFlag(flags, 'model') ?? null, data: stringFlag(flags, 'data') ?? null, loraR: r,
    loraAlpha: numberFlag(flags, 'lora-alpha', 2 * r, {min: Number.MIN_VALUE}), rslora: flags.rslora === true,
    targets: (stringFlag(flags, 'targets') ?? DEFAULT_TARGETS).split(',').map(t => t.trim()).filter(Boolean),
    seqLen: numberFlag(flags, 'seq-len', 128, {min: 2, integer: true}), batch: numberFlag(flags, 'batch', 4, {min: 1, integer: true}),
    lr: numberFlag(flags, 'lr', 2e-4, {min: 0}), weightDecay: numberFlag(flags, 'weight-decay', 0, {min: 0}),
    seed: numberFlag(flags, 'seed', 0, {integer: true, min: 0}), loadIn4bit: flags['load-in-4bit'] === true,
  };
  const steps = numberFlag(flags, 'steps', 100, {min: 1, integer: true});
  const warmupSteps = numberFlag(flags, 'warmup-steps', Math.floor(steps / 10), {min: 0, integer: true});
  const schedule = choiceFlag(flags, 'schedule', ['linear', 'constant'] as const, 'linear');
  const saveEvery = numberFlag(flags, 'save-every', 0, {min: 0, integer: true});
  const out = path.resolve(stringFlag(flags, 'out') ?? 'tfjs-moe-out');
  const checkpointDir = path.join(out, 'checkpoint');
  await useBackendOf(flags);

  if (settings.loadIn4bit && r === 0) throw new UsageError('--load-in-4bit freezes the experts in NF4: train adapters (--lora-r > 0)');
  const folder = openModelFolder(settings.model ?? undefined, {loadIn4bit: settings.loadIn4bit});
  const tokenizer = requireTokenizer(folder, 'train');
  const data = settings.data ?? path.join(defaultFolder(), 'corpus.txt');
  const batches = new Batches(tokenWindows(data, tokenizer, settings.seqLen), settings.batch, settings.seed);
  const {model} = folder;
  if (r > 0) {
    applyLora(model, {r, alpha: settings.loraAlpha, useRslora: settings.rslora, targets: settings.targets});
  }
  const optimizer = new AdamW({learningRate: settings.lr, weightDecay: settings.weightDecay, maxGradNorm: 1,
                               warmupSteps, totalSteps: schedule === 'linear' ? steps : undefined});
  compileCausalLm(model, optimizer);
  registerFileHandlers();

  let start = 0;
  if (flags.resume) start = await resume(model, optimizer, checkpointDir, settings);
  if (start >= steps) throw new UsageError(`${checkpointDir}: already at step ${start} of --steps ${steps}`);
  fs.mkdirSync(out, {recursive: true});
  const log = stringFlag(flags, 'log');
  if (log && start === 0) fs.writeFileSync(log, '');

  const tokensPerStep = settings.batch * settings.seqLen;
  const bar = new SingleBar({
    format: 'train |{bar}| {value}/{total} steps | loss {loss} | {speed} tok/s | ETA {eta_formatted}',
    noTTYOutput: true, notTTYSchedule: 5000, hideCursor: true,
  });
  bar.start(steps, start, {loss: '-', speed: '-'});
  const began = performance.now();
  let lastLoss = NaN;
  try {
    for (let step = start; step < steps; ++step) {
      const ids = batches.batch(step);
      const learningRate = optimizer.rateAt(optimizer.iterations);
      const result = await model.trainOnBatch(ids, ids);
      ids.dispose();
      lastLoss = Array.isArray(result) ? result[0] : result;
      if (!Number.isFinite(lastLoss)) throw new Error(`the loss is ${lastLoss} at step ${step + 1}; try a lower --lr`);
      const seconds = (performance.now() - began) / 1000;
      const tokensPerSecond = (step + 1 - start) * tokensPerStep / seconds;
      if (log) fs.appendFileSync(log, JSON.stringify({step: step + 1, loss: lastLoss, tokensPerSecond, learningRate, seconds}) + '\n');
      bar.update(step + 1, {loss: lastLoss.toFixed(4), speed: tokensPerSecond.toFixed(0)});
      if (saveEvery > 0 && (step + 1) % saveEvery === 0 && step + 1 < steps) {
        await saveCheckpoint(model, checkpointDir, {step: step + 1, settings});
      }
    }
  } finally {
    bar.stop();
  }
  await saveCheckpoint(model, checkpointDir, {step: steps, settings});

  // The result: a PEFT adapter (and, for the default model, the random base it was trained on), or the whole model.
  let base = folder.dir;
  if (folder.isDefault) {
    base = path.join(out, 'base');
    saveModelFolder(folder, base);
  }
  if (r > 0) {
    savePeftAdapter(model, path.join(out, 'adapter'), {baseModel: base});
    console.log(`loss ${lastLoss.toFixed(4)} after ${steps} steps; adapter: ${path.join(out, 'adapter')} (base model ${base})`);
  } else {
    saveModelFolder(folder, path.join(out, 'model'));
    console.log(`loss ${lastLoss.toFixed(4)} after ${steps} steps; model: ${path.join(out, 'model')}`);
  }
}

async function saveCheckpoint(model: tfl.LayersModel, dir: string, state: TrainerState): Promise<void> {
  await model.save(`file://${dir}`, {includeOptimizer: true});
  writeAtomically(path.join(dir, 'trainer_state.json'), fd => fs.writeSync(fd, JSON.stringify(state, null, 2)));
}

/** Loads weights and optimizer state of the checkpoint in `dir`; returns the step to continue from. */
async function resume(model: tfl.LayersModel, optimizer: AdamW, dir: string, settings: Record<string, unknown>): Promise<number> {
  const stateFile = path.join(dir, 'trainer_state.json');
  if (!fs.existsSync(stateFile)) throw new UsageError(`--resume: no checkpoint in ${dir} (trainer_state.json is missing)`);
  const state: TrainerState = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  for (const [key, value] of Object.entries(settings)) {
    if (JSON.stringify(state.settings[key]) !== JSON.stringify(value)) {
      throw new UsageError(`--resume: the checkpoint was made with ${key} = ${JSON.stringify(state.settings[key])}, not ${JSON.stringify(value)}`);
    }
  }
  // The weights are decoded straight into this model and optimizer (no second model in memory),
  // in the order they were saved: the model's weights, then the optimizer's.
  const artifacts = await tf.io.getLoadHandlers(`file://${dir}/model.json`)[0].load!();
  const specs = artifacts.weightSpecs ?? [];
  const tensors = tf.io.decodeWeights(artifacts.weightData!, specs);
  try {
    const optimizerWeights = specs.filter(w => w.group === 'optimizer').map(w => ({name: w.name, tensor: tensors[w.name]}));
    if (optimizerWeights.length === 0) throw new UsageError(`--resume: ${dir} holds no optimizer state`);
    model.setWeights(specs.filter(w => w.group !== 'optimizer').map(w => tensors[w.name]));
    await optimizer.setWeights(optimizerWeights);
  } finally {
    tf.dispose(Object.values(tensors));
  }
  return state.step;
}
