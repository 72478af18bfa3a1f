/** Tests run against the TypeScript sources through ts-jest; native addons come from build/. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  transform: {
    '^.+\\.ts$': ['ts-jest', {
      tsconfig: 'tsconfig.json',
      // Tests are type-checked, except on the GPU machine, whose packed node_modules has no type
      // declarations (../shared/device/pack.sh): TFJS_MOE_UNTYPED_TESTS=1 there.
      diagnostics: process.env.TFJS_MOE_UNTYPED_TESTS === '1' ? false : {warnOnly: false},
    }],
  },
  testTimeout: 120000,
};
