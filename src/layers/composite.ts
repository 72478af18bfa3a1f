/**
 * A layer made of named child layers. tfjs-layers tracks no sublayers, so this one reports its
 * children's weights and losses as its own. Children are named `<this name>.<child>` and built
 * when they are made (the sizes come from the configuration), each in its own name scope, so
 * that their weights are named after Hugging Face's module paths
 * (model.layers.0.self_attn.q_proj/weight ↔ model.layers.0.self_attn.q_proj.weight) rather
 * than after whichever layer happens to be building when a model is assembled.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

export abstract class CompositeLayer extends tfl.layers.Layer {
  /** The child layers, in a fixed order (the order of this layer's weights). */
  abstract children(): tfl.layers.Layer[];

  override build(): void {
    this.built = true;
  }

  override get trainableWeights(): tfl.LayerVariable[] {
    return this.trainable ? this.children().flatMap(c => c.trainableWeights) : [];
  }

  override set trainableWeights(_weights: tfl.LayerVariable[]) {
    throw new Error(`${this.name}: the weights of a composite layer are its children's`);
  }

  override get nonTrainableWeights(): tfl.LayerVariable[] {
    return this.trainable ? this.children().flatMap(c => c.nonTrainableWeights)
                          : this.children().flatMap(c => c.weights);
  }

  override set nonTrainableWeights(_weights: tfl.LayerVariable[]) {
    throw new Error(`${this.name}: the weights of a composite layer are its children's`);
  }

  override get weights(): tfl.LayerVariable[] {
    return [...this.trainableWeights, ...this.nonTrainableWeights];
  }

  override calculateLosses(): tf.Scalar[] {
    return [...super.calculateLosses(), ...this.children().flatMap(c => c.calculateLosses())];
  }
}

/**
 * Builds a child for input shapes (batch dimension included) by applying it to symbolic inputs:
 * Layer.apply builds in the layer's own name scope, so its weights carry its name.
 */
export function built<L extends tfl.layers.Layer>(child: L, inputShape: tfl.Shape | tfl.Shape[]): L {
  const shapes = (Array.isArray(inputShape[0]) ? inputShape : [inputShape]) as tfl.Shape[];
  const inputs = shapes.map((batchShape, i) => tfl.input({batchShape, dtype: i === 0 ? 'float32' : 'int32'}));
  child.apply(inputs.length === 1 ? inputs[0] : inputs);
  return child;
}

/** A plain config object (numbers, strings, nested records of them) as tfjs's ConfigDict. */
export function asConfig(config: object): tf.serialization.ConfigDict {
  return config as unknown as tf.serialization.ConfigDict;
}

/** Every leaf layer of a model, composites opened. */
export function leafLayers(model: tfl.LayersModel): tfl.layers.Layer[] {
  const open = (layer: tfl.layers.Layer): tfl.layers.Layer[] =>
      layer instanceof CompositeLayer ? layer.children().flatMap(open) : [layer];
  return model.layers.flatMap(open);
}
