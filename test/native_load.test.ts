/** A missing native addon fails with one error that says how to build it. */
import {loadAddon, packageRoot} from '../src/native/load';

test('a missing addon names the file and the build command', () => {
  expect(() => loadAddon('no_such_addon', 'the cpu backend'))
      .toThrow(/native addon for the cpu backend is missing \(.*no_such_addon\.node\)\. Build it with `npm run build:native`/);
});

test('the cpu addon was built from this version of the package', () => {
  const version = require(`${packageRoot}/package.json`).version;
  expect(loadAddon<{version: string}>('moe_fused', 'the cpu backend').version).toBe(version);
});
