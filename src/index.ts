/**
 * tfjs-moe-fused: fused Mixture-of-Experts kernels for TensorFlow.js.
 *
 * Importing this module registers the kernels (native on `cpu` and `tensorflow`, pure tfjs
 * elsewhere) and their gradients.
 */
import '@tensorflow/tfjs-backend-cpu';
// tfjs-core's CommonJS entry registers no gradients (tf.grads would fail on Softmax, Sum, ...);
// the tfjs-layers bundle registers all of them.
import '@tensorflow/tfjs-layers';
import './kernels/register';
import './gradients/register';

export * from './kernel_names';
export {registerFallbackKernels} from './kernels/register';
export {moeFusedLinear, MoeFusedLinearOptions} from './ops/moe_fused_linear';
export {moeRoute, MoeRouteOptions, MoeRouting} from './ops/moe_route';
export {moeSortByExpert, ExpertOrder} from './ops/moe_sort_by_expert';
export {moeCombineRows, moeGatherRows} from './ops/moe_rows';
export {cpuAddon} from './native/cpu_addon';
export {cudaAddon, cudaAddonBuilt, CudaAddon, CudaEvent, DeviceBuffer, Precision} from './native/cuda_addon';

// Layers and the Qwen3-MoE model (models/qwen3_moe).
export {Linear} from './layers/linear';
export {MoeFusedLinearLayer} from './layers/moe_fused_linear';
export {RMSNorm} from './layers/rms_norm';
export {TokenEmbedding} from './layers/token_embedding';
export {Qwen3Attention} from './layers/attention';
export {DenseMlp} from './layers/mlp';
export {SparseMoe} from './layers/sparse_moe';
export {DecoderLayer} from './layers/decoder_layer';
export {LoraOptions} from './layers/lora';
export {applyLora, freezeAllBut, LoraConfig, mergeLora, unmergeLora} from './lora/apply_lora';
export {fromHfConfig, isSparseLayer, Qwen3MoeConfig} from '../models/qwen3_moe/config';
export {buildQwen3MoeForCausalLM, BuildOptions, causalLmParts, CausalLmParts, sparseBlocks} from '../models/qwen3_moe/model';
// Training.
export {causalLmLoss, IGNORE_INDEX} from './train/causal_lm_loss';
export {routerAuxLoss} from './train/router_aux_loss';
export {AdamW, AdamWConfig} from './train/adamw';
export {compileCausalLm, setGradientCheckpointing} from './train/causal_lm';
export {Progress, TrainingProgress} from './train/progress';
// Tokenizer: tokenizer.json + tokenizer_config.json, chat templates rendered as Transformers renders them.
export {loadTokenizer} from './tokenizer/load_tokenizer';
export {DecodeOptions, EncodeOptions, HfTokenizer} from './tokenizer/tokenizer';
export {ChatMessage, ChatTemplateOptions, ChatTemplates} from './tokenizer/chat_template';
// Generation.
export {generate, GenerateOptions, GenerateOutput} from './generation/generate';
export {forwardCached} from './generation/cached_forward';
export {CacheStep, KvCache} from './generation/kv_cache';
export {checkSamplingOptions, SAMPLING_DEFAULTS, SamplingOptions, warpLogits} from './generation/logits_warpers';
export {argmax, sampleIndex} from './generation/sampling';
export {Rng} from './generation/rng';
// Weights and checkpoints.
export {HostTensor, readSafetensors, SafetensorsFile, TensorToWrite, writeSafetensors} from './io/safetensors';
export {hfName, loadHfWeights} from './io/hf_weights';
export {HfCheckpoint, loadHfCheckpoint, saveHfCheckpoint, SaveOptions} from './io/hf_checkpoint';
export {registerFileHandlers} from './io/file_handler';
export {convertHfCheckpoint, ConvertOptions} from './io/convert_checkpoint';
export {loadPeftAdapter} from './lora/load_peft_adapter';
export {modelAdapters, savePeftAdapter, SavePeftOptions, writePeftAdapter} from './lora/save_peft_adapter';
export {readPeftAdapter} from './lora/read_peft_adapter';
export {convertPeftAdapter} from './lora/convert_peft_adapter';
export {ModuleAdapter} from './lora/peft_format';
// NF4 (bitsandbytes 4-bit) weights.
export {NF4_CODE} from './quant/nf4_code';
export {createDynamicMap} from './quant/dynamic_code';
export {bytesToInt32Words, int32WordsToBytes} from './quant/int32_words';
export {decodeNf4Absmax, dequantiseNf4, NF4_BLOCKSIZES, Nf4DoubleQuant, nf4GroupSizes, Nf4Tensor, quantiseNf4,
        QuantiseNf4Options, stackNf4, validateNf4} from './quant/nf4';
export {moeFusedLinearNf4, Nf4Weights, nf4Weights} from './ops/moe_fused_linear_nf4';
export {MoeFusedLinearNf4Layer, MoeFusedLinearNf4LayerArgs} from './layers/moe_fused_linear_nf4';
export {bnb4bitTensors, BnbQuantState, bnbTensorNames, isBnb4bit, mapSource, parseBnbQuantState, readBnb4bit, readBnbExperts, TensorSource} from './io/bnb_4bit';
