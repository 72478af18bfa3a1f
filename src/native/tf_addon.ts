/** The TensorFlow op bridge (cc/tf), loaded when a `tensorflow` kernel first runs. */
import {loadAddon} from './load';

export interface TfAddon {
  version: string;
}

let cached: TfAddon | undefined;

/** Loads build/Release/moe_fused_tf.node, which registers our ops in tfjs-node's libtensorflow. */
export function ensureTfOps(): void {
  cached ??= loadAddon<TfAddon>('moe_fused_tf', 'the tensorflow backend (tfjs-node)');
}
