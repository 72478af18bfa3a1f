/**
 * npm run bench:train: training tokens/s of a small Qwen3-MoE (4 layers, hidden 256, 16 experts,
 * top-4, sequence 128, batch 4) with AdamW, on `cpu` and `tensorflow`, for
 *   fused  this package's SparseMoe (routing, grouped GEMMs on the routed rows)
 *   loop   the same model with the MoE block written as tfjs users write it today: every expert
 *          runs on every token (tf.matMul on a slice of the stacked weights) and its output is
 *          weighted by the token's routing weight for that expert (zero when not chosen)
 * Both share all other layers and the same weights. Medians over timed trainOnBatch steps.
 */
import * as os from 'os';

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
require('@tensorflow/tfjs-node');
// After tfjs-node, so that the tensorflow backend exists when the kernels register.
const moe = require('../src') as typeof import('../src');

const CONFIG = moe.fromHfConfig({
  model_type: 'qwen3_moe', vocab_size: 1024, hidden_size: 256, intermediate_size: 512, num_hidden_layers: 4,
  num_attention_heads: 4, num_key_value_heads: 2, head_dim: 64, moe_intermediate_size: 256, num_experts: 16,
  num_experts_per_tok: 4, norm_topk_prob: true, rms_norm_eps: 1e-6, rope_theta: 10000,
});
const [BATCH, SEQ] = [4, 128];
const STEPS = Number(process.env.BENCH_STEPS ?? 5);

/** The expert loop: out = Σ_e w[t, e] · down_e(silu(gate_e(x)) · up_e(x)), w = 0 off the top-k. */
function loopCall(this: import('../src').SparseMoe, inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
  const x = Array.isArray(inputs) ? inputs[0] : inputs;
  const {hiddenSize: H, moeIntermediateSize: I, numExperts: E, topK, normTopKProb} = this.args;
  return tf.tidy(() => {
    const tokens = tf.reshape(x, [-1, H]);
    const {values, indices} = tf.topk(tf.softmax(this.gate.call(tokens, {})), topK);
    const weights = normTopKProb ? tf.div(values, tf.sum(values, -1, true)) : values;
    const perExpert = tf.sum(tf.mul(tf.oneHot(indices, E), tf.expandDims(weights, 2)), 1);  // [T, E]
    const expert = (w: tfl.LayerVariable, e: number, rows: number, cols: number) =>
        tf.reshape(tf.slice(w.read(), [e, 0, 0], [1, rows, cols]), [rows, cols]);
    let out: tf.Tensor = tf.zerosLike(tokens);
    for (let e = 0; e < E; ++e) {
      const g = tf.matMul(tokens, expert(this.gate_proj.kernel, e, I, H), false, true);
      const u = tf.matMul(tokens, expert(this.up_proj.kernel, e, I, H), false, true);
      const y = tf.matMul(tf.mul(tf.mul(g, tf.sigmoid(g)), u), expert(this.down_proj.kernel, e, H, I), false, true);
      out = tf.add(out, tf.mul(y, tf.slice(perExpert, [0, e], [-1, 1])));
    }
    return tf.reshape(out, x.shape);
  });
}

function buildModel(loop: boolean): tfl.LayersModel {
  const model = moe.buildQwen3MoeForCausalLM(CONFIG);
  if (loop) for (const block of moe.sparseBlocks(model)) block.call = loopCall.bind(block) as typeof block.call;
  moe.compileCausalLm(model, new moe.AdamW({learningRate: 1e-4}));
  return model;
}

async function tokensPerSecond(model: tfl.LayersModel, ids: tf.Tensor): Promise<number> {
  const step = async () => {
    const t0 = performance.now();
    await model.trainOnBatch(ids, ids);
    return (performance.now() - t0) / 1000;
  };
  await step();  // warm-up: kernels, optimizer state
  const times: number[] = [];
  for (let s = 0; s < STEPS; ++s) times.push(await step());
  return BATCH * SEQ / times.sort((a, b) => a - b)[Math.floor(STEPS / 2)];
}

async function main() {
  console.log(`# Qwen3-MoE training throughput, ${new Date().toISOString().slice(0, 10)}`);
  console.log(`${os.cpus()[0].model}, ${os.cpus().length} cores; 4 layers, hidden 256, 16 experts, top-4, ` +
              `seq ${SEQ}, batch ${BATCH}; median of ${STEPS} steps\n`);
  console.log('| backend | fused tokens/s | loop tokens/s | fused ÷ loop |');
  console.log('| --- | --- | --- | --- |');
  for (const backend of ['cpu', 'tensorflow']) {
    await tf.setBackend(backend);
    const ids = tf.cast(tf.randomUniform([BATCH, SEQ], 0, CONFIG.vocabSize, 'float32', 1), 'int32');
    const rates: number[] = [];
    for (const useLoop of [false, true]) {
      const model = buildModel(useLoop);
      rates.push(await tokensPerSecond(model, ids));
      model.dispose();
    }
    const [fused, loop] = rates;
    console.log(`| ${backend} | ${fused.toFixed(0)} | ${loop.toFixed(0)} | ${(fused / loop).toFixed(1)}× |`);
  }
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
