/**
 * Model weights ↔ Hugging Face tensor names. Our layers are named after Transformers' module
 * paths, so a weight `<module>/weight` is the tensor `<module>.weight`, and a LoRA weight
 * `<module>/lora_A` is `<module>.lora_A.weight` (PEFT's name without its base_model.model prefix).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import type {HostTensor} from './safetensors';

export function hfName(weight: tfl.LayerVariable): string {
  const [module, name] = weight.originalName.split('/');
  return name === 'weight' ? `${module}.weight` : `${module}.${name}.weight`;
}

/**
 * Writes tensors into the model's weights by Hugging Face name. Every weight of the model must
 * be found (with its shape) unless `optional` says it may be absent; tensors the model has no
 * weight for are returned in `unused`.
 */
export function loadHfWeights(model: tfl.LayersModel, tensors: Map<string, HostTensor>,
                              optional: (name: string) => boolean = () => false): {unused: string[]} {
  const used = new Set<string>();
  for (const weight of model.weights) {
    const name = hfName(weight);
    const t = tensors.get(name);
    if (!t) {
      if (optional(name)) continue;
      throw new Error(`weights: no tensor ${name} for ${weight.originalName} [${weight.shape}]`);
    }
    if (t.shape.length !== weight.shape.length || t.shape.some((d, i) => d !== weight.shape[i])) {
      throw new Error(`weights: ${name} has shape [${t.shape}], the model expects [${weight.shape}]`);
    }
    weight.write(tf.tensor(t.data, t.shape, 'float32'));
    used.add(name);
  }
  return {unused: [...tensors.keys()].filter(name => !used.has(name))};
}
