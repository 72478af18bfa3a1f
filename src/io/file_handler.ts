/**
 * model.save('file://dir') and tf.loadLayersModel('file://dir/model.json') without tfjs-node:
 * model.json (topology, weight manifest, training config) and weights.bin. Every file is written
 * atomically and model.json last, so a crash mid-save leaves the previous model loadable.
 * Registered only where no file:// handler exists (tfjs-node brings its own).
 */
import * as fs from 'fs';
import * as path from 'path';

import * as tf from '@tensorflow/tfjs-core';

import {writeAtomically} from './safetensors';

const PREFIX = 'file://';

function concatenated(data: tf.io.WeightData | undefined): Buffer {
  if (data === undefined) return Buffer.alloc(0);
  const parts = Array.isArray(data) ? data : [data];
  return Buffer.concat(parts.map(p => Buffer.from(p)));
}

class FileHandler implements tf.io.IOHandler {
  constructor(private readonly target: string) {}

  /** dir/ gets model.json and weights.bin; a path ending in .json names the model file itself. */
  private files(): {model: string; weights: string} {
    const model = this.target.endsWith('.json') ? this.target : path.join(this.target, 'model.json');
    return {model, weights: path.join(path.dirname(model), 'weights.bin')};
  }

  async save(artifacts: tf.io.ModelArtifacts): Promise<tf.io.SaveResult> {
    const {model, weights} = this.files();
    fs.mkdirSync(path.dirname(model), {recursive: true});
    const data = concatenated(artifacts.weightData);
    writeAtomically(weights, fd => fs.writeSync(fd, data));
    const json = {
      modelTopology: artifacts.modelTopology,
      format: artifacts.format,
      generatedBy: artifacts.generatedBy,
      convertedBy: artifacts.convertedBy,
      trainingConfig: artifacts.trainingConfig,
      userDefinedMetadata: artifacts.userDefinedMetadata,
      weightsManifest: [{paths: ['./weights.bin'], weights: artifacts.weightSpecs ?? []}],
    };
    writeAtomically(model, fd => fs.writeSync(fd, JSON.stringify(json)));
    return {modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(artifacts)};
  }

  async load(): Promise<tf.io.ModelArtifacts> {
    const {model} = this.files();
    if (!fs.existsSync(model)) throw new Error(`${model}: no such model file`);
    let json: tf.io.ModelJSON;
    try {
      json = JSON.parse(fs.readFileSync(model, 'utf8'));
    } catch (e) {
      throw new SyntaxError(`${model}: not valid JSON (${(e as Error).message})`);
    }
    return tf.io.getModelArtifactsForJSON(json, async manifest => {
      const specs = manifest.flatMap(group => group.weights);
      const buffers = manifest.flatMap(group => group.paths.map(p => {
        const file = path.resolve(path.dirname(model), p);
        if (!fs.existsSync(file)) throw new Error(`${model}: weight file ${p} is missing`);
        return fs.readFileSync(file);
      }));
      const all = Buffer.concat(buffers);
      return [specs, all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength)];
    });
  }
}

/** tfjs routers return null for URLs they do not handle (the IORouter type says otherwise). */
const router = ((url: string | string[]) => {
  const target = Array.isArray(url) ? url[0] : url;
  return target.startsWith(PREFIX) ? new FileHandler(target.slice(PREFIX.length)) : null;
}) as (url: string | string[]) => tf.io.IOHandler;

/** Registers the file:// handlers unless another package (tfjs-node) already has. */
export function registerFileHandlers(): void {
  if (tf.io.getSaveHandlers(`${PREFIX}probe`).length === 0) tf.io.registerSaveRouter(router);
  if (tf.io.getLoadHandlers(`${PREFIX}probe`).length === 0) tf.io.registerLoadRouter(router);
}
