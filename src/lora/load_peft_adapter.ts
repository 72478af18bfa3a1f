/** Loading a PEFT LoRA adapter onto a model of this package's layers. */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

import {leafLayers} from '../layers/composite';
import {LoraLinearBase} from '../layers/lora_linear_base';
import {MoeFusedLinearLayer} from '../layers/moe_fused_linear';
import {freezeAllBut} from './apply_lora';
import {readPeftAdapter} from './read_peft_adapter';

/**
 * Adds the adapter in `dir` to the model, as PEFT applies it (every other weight frozen).
 * Recompile a model afterwards to train the adapters.
 */
export function loadPeftAdapter(model: tfl.LayersModel, dir: string): void {
  const layers = new Map(leafLayers(model).map(l => [l.name, l]));
  const adapters = readPeftAdapter(dir, mlp => {
    const gate = layers.get(`${mlp}.gate_proj`);
    if (!(gate instanceof MoeFusedLinearLayer)) return undefined;
    const [E, I, H] = gate.baseShape;
    return {E, I, H};
  });
  // Every adapter is checked before the model changes: W [..., out, in] takes A [..., r, in], B [..., out, r].
  const targets = [...adapters].map(([module, adapter]) => {
    const layer = layers.get(module);
    if (!(layer instanceof LoraLinearBase)) throw new Error(`${dir}: the model has no linear layer ${module} for the adapter`);
    const w = layer.baseShape, lead = w.slice(0, -2), [out, inFeatures] = w.slice(-2), r = adapter.options.r;
    for (const [which, actual, expected] of [['A', adapter.shapeA, [...lead, r, inFeatures]], ['B', adapter.shapeB, [...lead, out, r]]] as const) {
      if (actual.join() !== expected.join()) {
        throw new Error(`${dir}: lora_${which} of ${module} is [${actual}], the layer expects [${expected}]`);
      }
    }
    return {layer, adapter};
  });
  for (const {layer, adapter: {A, B, shapeA, shapeB, options}} of targets) {
    layer.enableLora(options);
    layer.adapter!.A.write(tf.tensor(A, shapeA, 'float32'));
    layer.adapter!.B.write(tf.tensor(B, shapeB, 'float32'));
  }
  freezeAllBut(model, targets.map(t => t.layer));
}
