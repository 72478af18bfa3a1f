/** Compiling a causal LM for model.fit on token ids. */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {DecoderLayer} from '../layers/decoder_layer';
import {causalLmLoss} from './causal_lm_loss';

/**
 * model.compile with the causal LM loss. model.fit then takes labels [B, S] (the input ids, with
 * IGNORE_INDEX at padding): the shift happens inside the loss, as in Transformers.
 */
export function compileCausalLm(model: tfl.LayersModel, optimizer: tf.Optimizer): void {
  model.compile({optimizer, loss: causalLmLoss});
  // tfjs checks targets against the output's shape [B, S, V]; ours are token ids [B, S].
  (model as unknown as {feedOutputShapes: tfl.Shape[]}).feedOutputShapes = [[null, null]];
}

/** Turns per-decoder-layer gradient checkpointing on or off. */
export function setGradientCheckpointing(model: tfl.LayersModel, on: boolean): void {
  for (const layer of model.layers) if (layer instanceof DecoderLayer) layer.checkpoint = on;
}
