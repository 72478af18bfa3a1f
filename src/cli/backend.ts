/** Choosing the tfjs backend the CLI runs on. */
import * as tf from '@tensorflow/tfjs-core';

import {UsageError} from './errors';
import {choiceFlag, Flags, FlagSpec} from './flags';

export const BACKEND_CHOICES = ['cpu', 'tensorflow'] as const;
export type BackendChoice = typeof BACKEND_CHOICES[number];
export const BACKEND_FLAG: FlagSpec = {backend: {type: 'string'}};

/** `tensorflow` needs @tensorflow/tfjs-node (README: npm run setup:tfjs-node); `cpu` is always there. */
export async function useBackend(name: BackendChoice): Promise<void> {
  if (name === 'tensorflow') {
    process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
    try {
      require('@tensorflow/tfjs-node');
    } catch (e) {
      throw new UsageError(`--backend tensorflow needs @tensorflow/tfjs-node (see the README): ${(e as Error).message.split('\n')[0]}`);
    }
  }
  if (!(await tf.setBackend(name))) throw new UsageError(`backend ${name} failed to initialise`);
}

/** The backend of --backend (default cpu). */
export async function useBackendOf(flags: Flags): Promise<void> {
  await useBackend(choiceFlag(flags, 'backend', BACKEND_CHOICES, 'cpu'));
}
