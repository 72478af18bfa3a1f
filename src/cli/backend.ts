/** Choosing the tfjs backend the CLI runs on. */
import * as tf from '@tensorflow/tfjs-core';

import {UsageError} from './errors';

export const BACKEND_CHOICES = ['cpu', 'tensorflow'] as const;
export type BackendChoice = typeof BACKEND_CHOICES[number];

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
