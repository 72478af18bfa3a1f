/** Loads the native addons from build/Release, with one clear error when one is missing or stale. */
import * as fs from 'fs';
import * as path from 'path';

/** The package root: the nearest folder above this file with a package.json (src/ or dist/src/). */
export const packageRoot: string = (() => {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`tfjs-moe-fused: no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
})();

const packageVersion: string = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')).version;

/** Requires build/Release/<name>.node and checks that it was built from this version. */
export function loadAddon<T extends {version: string}>(name: string, purpose: string): T {
  const file = path.join(packageRoot, 'build', 'Release', `${name}.node`);
  const howToBuild = `Build it with \`npm run build:native\` in ${packageRoot} (needs cmake >= 3.18 and a C++17 compiler).`;
  if (!fs.existsSync(file)) {
    throw new Error(`tfjs-moe-fused: the native addon for ${purpose} is missing (${file}). ${howToBuild}`);
  }
  let addon: T;
  try {
    addon = require(file) as T;
  } catch (e) {
    throw new Error(`tfjs-moe-fused: the native addon ${file} failed to load: ${(e as Error).message}. ${howToBuild}`);
  }
  if (addon.version !== packageVersion) {
    throw new Error(`tfjs-moe-fused: the native addon ${file} is stale (built for version ${addon.version}, ` +
                    `the package is ${packageVersion}). ${howToBuild}`);
  }
  return addon;
}
