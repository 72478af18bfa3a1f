#!/usr/bin/env node
// Makes @tensorflow/tfjs-node usable when its own install script could not run (npm blocks
// dependency install scripts, and its libtensorflow download host is unreachable offline):
// libtensorflow and its C headers come from the tensorflow-cpu wheel on PyPI, and the binding
// is built here with node-gyp. Idempotent: a run that finds a working tfjs-node does nothing,
// and every step writes to a temporary name first, so a rerun repairs an interrupted one.
import {spawnSync} from 'node:child_process';
import fs from 'node:fs';
import {createRequire} from 'node:module';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const WHEEL = {name: 'tensorflow-cpu', version: '2.21.0'};
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(root, 'package.json'));
const started = Date.now();

const log = msg => console.log(`setup-tfjs-node: ${msg}`);
function fail(msg, output = '') {
  const tail = String(output).trim().split('\n').slice(-15).join('\n');
  if (tail) console.error(tail);
  console.error(`setup-tfjs-node: error: ${msg}`);
  process.exit(1);
}

// Runs a command quietly; its output is shown only when it fails.
function run(cmd, args, cwd, what) {
  const r = spawnSync(cmd, args, {cwd, encoding: 'utf8', maxBuffer: 1 << 28});
  if (r.error) fail(`${what}: ${r.error.message}`);
  if (r.status !== 0) fail(`${what} failed (exit ${r.status ?? r.signal})`, r.stdout + r.stderr);
  return r;
}

// Loads tfjs-node in a child (a failed native load can't be retried in this process) and
// checks that it runs an op on the `tensorflow` backend.
const SMOKE_TEST = `
  const tf = require('@tensorflow/tfjs-node');
  if (tf.getBackend() !== 'tensorflow') throw new Error('backend is ' + tf.getBackend());
  const y = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5], [6]])).dataSync();
  if (y[0] !== 17 || y[1] !== 39) throw new Error('matMul gave ' + Array.from(y));`;
const smokeTest = () => spawnSync(process.execPath, ['-e', SMOKE_TEST], {cwd: root, encoding: 'utf8'});

// 1. Find tfjs-node, installing the pinned version without its install script if it is missing.
function tfjsNodeDir() {
  try {
    return path.dirname(require.resolve('@tensorflow/tfjs-node/package.json'));
  } catch {
    return null;
  }
}
let tfDir = tfjsNodeDir();
if (!tfDir) {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  const spec = `@tensorflow/tfjs-node@${pkg.devDependencies?.['@tensorflow/tfjs-node'] ?? '4.22.0'}`;
  log(`installing ${spec} (--no-save --ignore-scripts)`);
  // Under `npm run`, npm_execpath is the running npm's CLI script; otherwise use npm from PATH.
  const npm = process.env.npm_execpath ? [process.execPath, process.env.npm_execpath] : ['npm'];
  run(npm[0], [...npm.slice(1), 'install', '--no-save', '--ignore-scripts', spec], root, 'npm install');
  tfDir = tfjsNodeDir();
  if (!tfDir) fail(`${spec} was installed but cannot be resolved from ${root}`);
}

// 2. Nothing to do when tfjs-node's own install worked (or an earlier run of this script did).
if (smokeTest().status === 0) {
  log(`tfjs-node in ${path.relative(root, tfDir)} already works; nothing to do`);
  process.exit(0);
}

// 3. libtensorflow + headers from the wheel into deps/. deps/ only ever appears by a rename
//    of a complete deps.partial/, so its existence means it is complete.
const deps = path.join(tfDir, 'deps');
if (fs.existsSync(path.join(deps, 'lib/libtensorflow_framework.so.2'))) {
  log('deps/ already holds libtensorflow');
} else {
  const cache = path.join(root, 'node_modules/.cache/tfjs-moe-fused');
  const isWheel = f => f.startsWith(`${WHEEL.name.replace('-', '_')}-${WHEEL.version}-`) && f.endsWith('.whl');
  const findWheel = dir => fs.existsSync(dir) && fs.readdirSync(dir).find(isWheel);
  let wheel = findWheel(cache);
  if (!wheel) {
    log(`downloading ${WHEEL.name}==${WHEEL.version} with pip`);
    const tmp = path.join(cache, `.download-${process.pid}`);
    fs.mkdirSync(tmp, {recursive: true});
    run('python3', ['-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '-d', tmp,
      `${WHEEL.name}==${WHEEL.version}`], root, 'pip download');
    wheel = findWheel(tmp);
    if (!wheel) fail(`pip download left no ${WHEEL.name} ${WHEEL.version} wheel in ${tmp}`);
    fs.renameSync(path.join(tmp, wheel), path.join(cache, wheel));
    fs.rmSync(tmp, {recursive: true, force: true});
  }
  log(`extracting libtensorflow and headers from ${wheel}`);
  const partial = `${deps}.partial`;
  fs.rmSync(partial, {recursive: true, force: true});
  // python3 is there whenever pip is; its zipfile streams the 1 GB of members without a new dependency.
  run('python3', ['-c', `
import os, shutil, sys, zipfile
wheel, out = sys.argv[1:]
libs = {'tensorflow/libtensorflow_cc.so.2', 'tensorflow/libtensorflow_framework.so.2'}
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if name in libs:
            dest = os.path.join(out, 'lib', os.path.basename(name))
        elif name.startswith('tensorflow/include/') and not name.endswith('/'):
            dest = os.path.join(out, 'include', name[len('tensorflow/include/'):])
        else:
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if name in libs:
            os.chmod(dest, 0o755)
missing = [l for l in libs if not os.path.exists(os.path.join(out, 'lib', os.path.basename(l)))]
if missing: sys.exit('the wheel lacks ' + ', '.join(missing))
`, path.join(cache, wheel), partial], root, 'extracting the wheel');
  // binding.gyp links -ltensorflow -ltensorflow_framework; the C and eager APIs live in _cc.
  const links = {'libtensorflow.so': 'libtensorflow_cc.so.2', 'libtensorflow.so.2': 'libtensorflow_cc.so.2',
    'libtensorflow_framework.so': 'libtensorflow_framework.so.2'};
  for (const [link, target] of Object.entries(links)) fs.symlinkSync(target, path.join(partial, 'lib', link));
  fs.rmSync(deps, {recursive: true, force: true});  // a stale deps/ from tfjs-node's own install
  fs.renameSync(partial, deps);
}

// 4. Build the binding where tfjs-node's loader (node-pre-gyp's find, driven by the "binary"
//    field of its package.json) looks for it: lib/napi-v<N>/tfjs_binding.node.
let target = path.join(tfDir, 'lib/napi-v8/tfjs_binding.node');
try {
  target = createRequire(path.join(tfDir, 'package.json'))('@mapbox/node-pre-gyp')
    .find(path.join(tfDir, 'package.json'));
} catch { /* node-pre-gyp missing: tfjs-node won't load anyway; keep the default */ }
const napi = /napi-v(\d+)/.exec(target)?.[1] ?? '8';
const gypArgs = [require.resolve('node-gyp/bin/node-gyp.js'), 'rebuild', '--jobs=max',
  '--module_name=tfjs_binding', `--module_path=${path.relative(tfDir, path.dirname(target))}`,
  `--napi_build_version=${napi}`];
// Offline, node-gyp can't download Node's headers; a standard install has them under <prefix>/include/node.
const prefix = path.resolve(process.execPath, '../..');
if (!process.env.npm_config_nodedir && fs.existsSync(path.join(prefix, 'include/node/node_api.h')))
  gypArgs.push(`--nodedir=${prefix}`);
log(`building tfjs_binding (N-API ${napi}) with node-gyp`);
run(process.execPath, gypArgs, tfDir, 'node-gyp rebuild of tfjs-node');
fs.mkdirSync(path.dirname(target), {recursive: true});
fs.copyFileSync(path.join(tfDir, 'build/Release/tfjs_binding.node'), `${target}.tmp`);
fs.renameSync(`${target}.tmp`, target);

// 5. Verify.
const check = smokeTest();
if (check.status !== 0) fail('tfjs-node still does not load or run an op', check.stderr);
log(`tfjs-node works (backend 'tensorflow', TF ${WHEEL.version}) after ${((Date.now() - started) / 1000).toFixed(0)} s`);
