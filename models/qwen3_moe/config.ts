/** Qwen3-MoE hyper-parameters, and reading them from a Hugging Face config.json. */

export interface Qwen3MoeConfig {
  vocabSize: number;
  hiddenSize: number;
  /** The dense MLP's width (layers in mlpOnlyLayers, or off the sparse step). */
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  moeIntermediateSize: number;
  numExperts: number;
  numExpertsPerTok: number;
  normTopKProb: boolean;
  decoderSparseStep: number;
  mlpOnlyLayers: number[];
  rmsNormEps: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  routerAuxLossCoef: number;
  outputRouterLogits: boolean;
  initializerRange: number;
}

/** Whether decoder layer i has a sparse MoE block (Transformers' rule). */
export function isSparseLayer(config: Qwen3MoeConfig, i: number): boolean {
  return !config.mlpOnlyLayers.includes(i) && config.numExperts > 0 && (i + 1) % config.decoderSparseStep === 0;
}

type HfConfig = Record<string, unknown>;

function field<T>(hf: HfConfig, names: string[], fallback?: T): T {
  for (const name of names) if (hf[name] !== undefined && hf[name] !== null) return hf[name] as T;
  if (fallback !== undefined) return fallback;
  throw new Error(`config.json: missing ${names.join(' / ')}`);
}

/**
 * Reads a Qwen3-MoE config.json of Transformers 4 (num_experts, rope_theta) or 5
 * (num_local_experts, rope_parameters). Settings this model does not implement are reported.
 */
export function fromHfConfig(hf: HfConfig): Qwen3MoeConfig {
  if (hf.model_type !== undefined && hf.model_type !== 'qwen3_moe') {
    throw new Error(`config.json: model_type ${JSON.stringify(hf.model_type)} is not qwen3_moe`);
  }
  const rope = (hf.rope_parameters ?? hf.rope_scaling ?? {}) as Record<string, unknown>;
  const ropeType = rope.rope_type ?? rope.type ?? 'default';
  if (ropeType !== 'default') throw new Error(`config.json: rope type ${JSON.stringify(ropeType)} is not supported`);
  if (hf.attention_bias === true) throw new Error('config.json: attention_bias = true is not supported');
  if (hf.hidden_act !== undefined && hf.hidden_act !== 'silu') {
    throw new Error(`config.json: hidden_act ${JSON.stringify(hf.hidden_act)} is not supported (only silu)`);
  }
  if (hf.use_sliding_window === true) throw new Error('config.json: use_sliding_window = true is not supported');
  const hiddenSize = field<number>(hf, ['hidden_size']);
  const numAttentionHeads = field<number>(hf, ['num_attention_heads']);
  return {
    vocabSize: field(hf, ['vocab_size']),
    hiddenSize,
    intermediateSize: field(hf, ['intermediate_size']),
    numHiddenLayers: field(hf, ['num_hidden_layers']),
    numAttentionHeads,
    numKeyValueHeads: field(hf, ['num_key_value_heads'], numAttentionHeads),
    headDim: field(hf, ['head_dim'], hiddenSize / numAttentionHeads),
    moeIntermediateSize: field(hf, ['moe_intermediate_size']),
    numExperts: field(hf, ['num_experts', 'num_local_experts']),
    numExpertsPerTok: field(hf, ['num_experts_per_tok']),
    normTopKProb: field(hf, ['norm_topk_prob'], false),
    decoderSparseStep: field(hf, ['decoder_sparse_step'], 1),
    mlpOnlyLayers: field(hf, ['mlp_only_layers'], []),
    rmsNormEps: field(hf, ['rms_norm_eps'], 1e-6),
    ropeTheta: (rope.rope_theta as number | undefined) ?? field(hf, ['rope_theta'], 10000),
    tieWordEmbeddings: field(hf, ['tie_word_embeddings'], false),
    routerAuxLossCoef: field(hf, ['router_aux_loss_coef'], 0.001),
    outputRouterLogits: field(hf, ['output_router_logits'], false),
    initializerRange: field(hf, ['initializer_range'], 0.02),
  };
}
