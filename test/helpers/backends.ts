/**
 * The three implementations every test runs on:
 *   cpu         the native addon on tfjs's cpu backend
 *   tensorflow  the TensorFlow ops on tfjs-node (never skipped: CI must exercise it)
 *   fallback    the pure-tfjs kernels, on a second MathBackendCPU registered as "fallback"
 *               before this package loads, so it gets them like any other backend would
 */
import * as tf from '@tensorflow/tfjs-core';
import {MathBackendCPU} from '@tensorflow/tfjs-backend-cpu';

tf.registerBackend('fallback', () => new MathBackendCPU(), 0);
tf.copyRegisteredKernels('cpu', 'fallback');
// tfjs-node registers the `tensorflow` backend; loaded here so that it sits beside cpu.
process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';  // keep libtensorflow's start-up notes out of the test log
require('@tensorflow/tfjs-node');

export const BACKENDS = ['cpu', 'tensorflow', 'fallback'] as const;
export type BackendName = typeof BACKENDS[number];

export async function useBackend(name: BackendName): Promise<void> {
  if (!(await tf.setBackend(name))) throw new Error(`backend ${name} failed to initialise`);
}
