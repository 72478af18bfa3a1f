/**
 * Qwen3MoeForCausalLM from tfjs layers: ids [B, S] (and optionally attentionMask [B, S]) →
 * logits [B, S, V]. Layer names are Transformers' module paths (model.embed_tokens,
 * model.layers.L.self_attn.q_proj, model.norm, lm_head), so weights map one to one onto a
 * Hugging Face checkpoint with fused experts (mlp.{gate,up,down}_proj [E, out, in]).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {DecoderLayer} from '../../src/layers/decoder_layer';
import {Linear} from '../../src/layers/linear';
import {RMSNorm} from '../../src/layers/rms_norm';
import {SparseMoe} from '../../src/layers/sparse_moe';
import {TokenEmbedding} from '../../src/layers/token_embedding';
import {routerAuxLoss} from '../../src/train/router_aux_loss';
import {isSparseLayer, Qwen3MoeConfig} from './config';

export interface BuildOptions {
  /** Add a second input, attentionMask [B, S] (1 = token, 0 = padding). */
  attentionMask?: boolean;
  /**
   * Hold the experts frozen in NF4 (QLoRA; loadHfCheckpoint quantises float checkpoints on load or
   * reads bitsandbytes 4-bit ones). Blocksize 64 unless given.
   */
  expertsIn4bit?: boolean | {blocksize?: number};
}

export function buildQwen3MoeForCausalLM(config: Qwen3MoeConfig, options: BuildOptions = {}): tfl.LayersModel {
  const ids = tfl.input({shape: [null], dtype: 'int32', name: 'input_ids'});
  const mask = options.attentionMask ? tfl.input({shape: [null], dtype: 'int32', name: 'attention_mask'}) : undefined;
  const embed = new TokenEmbedding({
    name: 'model.embed_tokens', vocabSize: config.vocabSize, hiddenSize: config.hiddenSize, initStd: config.initializerRange,
  });
  let h = embed.apply(ids) as tfl.SymbolicTensor;
  const nf4 = options.expertsIn4bit === true ? {} : options.expertsIn4bit || undefined;
  for (let i = 0; i < config.numHiddenLayers; ++i) {
    const layer = new DecoderLayer({
      name: `model.layers.${i}`,
      hiddenSize: config.hiddenSize,
      numHeads: config.numAttentionHeads,
      numKvHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      ropeTheta: config.ropeTheta,
      rmsNormEps: config.rmsNormEps,
      intermediateSize: config.intermediateSize,
      moe: isSparseLayer(config, i) ? {
        moeIntermediateSize: config.moeIntermediateSize,
        numExperts: config.numExperts,
        topK: config.numExpertsPerTok,
        normTopKProb: config.normTopKProb,
        nf4: nf4 && {blocksize: nf4.blocksize ?? 64},
      } : undefined,
    });
    h = layer.apply(mask ? [h, mask] : h) as tfl.SymbolicTensor;
  }
  const norm = new RMSNorm({name: 'model.norm', eps: config.rmsNormEps});
  h = norm.apply(h) as tfl.SymbolicTensor;
  const head = config.tieWordEmbeddings ? embed : new Linear({name: 'lm_head', units: config.vocabSize});
  const logits = head.apply(h) as tfl.SymbolicTensor;
  const model = tfl.model({inputs: mask ? [ids, mask] : ids, outputs: logits, name: 'Qwen3MoeForCausalLM'});
  if (config.outputRouterLogits && config.routerAuxLossCoef > 0) {
    // Transformers adds coef · aux to the loss; a layer loss is what model.fit adds to ours.
    const blocks = sparseBlocks(model);
    blocks.forEach(b => b.recordRouterLogits = true);
    norm.addLoss(() => tf.mul(routerAuxLoss(blocks), config.routerAuxLossCoef) as tf.Scalar);
  }
  return model;
}

/** The sparse MoE blocks of a model, in layer order. */
export function sparseBlocks(model: tfl.LayersModel): SparseMoe[] {
  return model.layers.flatMap(l => l instanceof DecoderLayer && l.mlp instanceof SparseMoe ? [l.mlp] : []);
}

/** The layers of a model from buildQwen3MoeForCausalLM, in the order the forward pass runs them. */
export interface CausalLmParts {
  embed: TokenEmbedding;
  layers: DecoderLayer[];
  norm: RMSNorm;
  /** lm_head, or the embedding itself when the embeddings are tied. */
  head: Linear | TokenEmbedding;
}

export function causalLmParts(model: tfl.LayersModel): CausalLmParts {
  const named = (name: string) => model.layers.find(l => l.name === name);
  const embed = named('model.embed_tokens'), norm = named('model.norm'), head = named('lm_head') ?? embed;
  const layers = model.layers.filter((l): l is DecoderLayer => l instanceof DecoderLayer);
  if (!(embed instanceof TokenEmbedding) || !(norm instanceof RMSNorm) || !(head instanceof Linear || head instanceof TokenEmbedding)
      || layers.length === 0) {
    throw new Error(`${model.name}: not a model of buildQwen3MoeForCausalLM (model.embed_tokens, decoder layers, model.norm)`);
  }
  return {embed, layers, norm, head};
}
