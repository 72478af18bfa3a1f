#!/usr/bin/env node
// Builds the native addons with cmake-js into build/Release:
//   moe_fused.node     always (the `cpu` backend's kernels);
//   moe_fused_tf.node  when @tensorflow/tfjs-node is installed with libtensorflow and its C
//                      headers in its deps/ folder (see scripts/setup-tfjs-node.mjs).
import {spawnSync} from 'node:child_process';
import {existsSync} from 'node:fs';
import {createRequire} from 'node:module';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(root, 'package.json'));

function tfjsNodeDir() {
  try {
    const dir = path.dirname(require.resolve('@tensorflow/tfjs-node/package.json'));
    return existsSync(path.join(dir, 'deps/include/tensorflow/c/kernels.h')) ? dir : null;
  } catch {
    return null;
  }
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const common = ['--directory', root, '--out', path.join(root, 'build')];
const tfDir = tfjsNodeDir();
// TFJS_NODE_DIR is passed (or cleared) on every run: `configure` updates an existing cache.
const defines = [`--CDTFJS_NODE_DIR=${tfDir ?? ''}`];
if (!tfDir) console.log('tfjs-moe-fused: no tfjs-node with libtensorflow headers found; building the cpu addon only');

for (const step of [['configure', ...defines], ['build']]) {
  const result = spawnSync(process.execPath, [cmakeJs, ...step, ...common], {stdio: 'inherit', cwd: root});
  if (result.status !== 0) {
    console.error('tfjs-moe-fused: the native build failed. It needs cmake >= 3.18 and a C++17 compiler (g++ or clang++).');
    process.exit(result.status ?? 1);
  }
}
