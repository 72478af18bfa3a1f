#!/usr/bin/env node
/**
 * The tfjs-moe-fused command line: train, eval, generate, convert. Errors are one line with a
 * non-zero exit code; --verbose adds the stack trace.
 */
import * as tf from '@tensorflow/tfjs-core';

import '../index';  // registers the kernels and gradients

import {convert, CONVERT_USAGE} from './commands/convert';
import {EVAL_USAGE, evaluate} from './commands/eval';
import {GENERATE_USAGE, generateText} from './commands/generate';
import {train, TRAIN_USAGE} from './commands/train';
import {UsageError} from './errors';

const COMMANDS: Record<string, [(argv: string[]) => Promise<void>, string]> = {
  train: [train, TRAIN_USAGE], eval: [evaluate, EVAL_USAGE], generate: [generateText, GENERATE_USAGE],
  convert: [convert, CONVERT_USAGE],
};

const USAGE = `usage: tfjs-moe-fused <command> [flags]   (--help after a command for its flags)\n\n` +
    Object.values(COMMANDS).map(([, usage]) => usage).join('\n\n');

/** Runs one command; returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  tf.env().set('PROD', true);  // no debug checks, no "install tfjs-node" banner
  const [command, ...rest] = argv;
  const verbose = rest.includes('--verbose');
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(USAGE);
    return command === undefined ? 1 : 0;
  }
  const entry = COMMANDS[command];
  if (!entry) {
    console.error(`tfjs-moe-fused: unknown command ${JSON.stringify(command)} (commands: ${Object.keys(COMMANDS).join(', ')})`);
    return 1;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(entry[1]);
    return 0;
  }
  try {
    await entry[0](rest);
    return 0;
  } catch (e) {
    const error = e as Error;
    console.error(`tfjs-moe-fused ${command}: ${verbose ? error.stack : error.message.split('\n')[0]}`);
    if (!verbose && !(error instanceof UsageError)) console.error('(run with --verbose for the stack trace)');
    return 1;
  }
}

if (require.main === module) main(process.argv.slice(2)).then(code => process.exit(code));
