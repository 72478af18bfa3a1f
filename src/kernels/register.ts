/**
 * Registers every kernel of this package: native ones for `cpu` and `tensorflow` (tfjs-node),
 * pure-tfjs ones for any other backend. Kernels may be registered before their backend exists,
 * so the `tensorflow` kernels are in place whether tfjs-node is imported before or after us.
 */
import {engine, KernelConfig, KernelFunc, registerKernel} from '@tensorflow/tfjs-core';

import {MoeFusedLinear, MoeFusedLinearGradWeight, MoeFusedLinearNf4, MoeGatherRows, MoeScatterAddRows, MoeSortByExpert} from '../kernel_names';
import {moeSortByExpert} from './any/MoeSortByExpert';
import {moeFusedLinearCpuConfig} from './cpu/MoeFusedLinear';
import {moeFusedLinearGradWeightCpuConfig} from './cpu/MoeFusedLinearGradWeight';
import {moeFusedLinearNf4CpuConfig} from './cpu/MoeFusedLinearNf4';
import {moeGatherRowsCpuConfig} from './cpu/MoeGatherRows';
import {moeScatterAddRowsCpuConfig} from './cpu/MoeScatterAddRows';
import {gatherRowsVia, scatterAddRowsVia} from './delegating/rows';
import {moeFusedLinearFallback} from './fallback/MoeFusedLinear';
import {moeFusedLinearGradWeightFallback} from './fallback/MoeFusedLinearGradWeight';
import {moeFusedLinearNf4Fallback} from './fallback/MoeFusedLinearNf4';
import {moeFusedLinearTensorflowConfig} from './tensorflow/MoeFusedLinear';
import {moeFusedLinearGradWeightTensorflowConfig} from './tensorflow/MoeFusedLinearGradWeight';
import {moeFusedLinearNf4TensorflowConfig} from './tensorflow/MoeFusedLinearNf4';

const NATIVE_BACKENDS = ['cpu', 'tensorflow'];
/** Backends that get the pure-tfjs kernels even when registered after this package loads. */
const KNOWN_BACKENDS = ['webgl', 'wasm', 'webgpu'];

const config = (kernelName: string, backendName: string, kernelFunc: KernelFunc): KernelConfig =>
    ({kernelName, backendName, kernelFunc});

/**
 * Registers the pure-tfjs kernels (one tf.matMul per expert) for a backend, e.g. a custom one
 * registered after this package was imported.
 */
export function registerFallbackKernels(backendName: string): void {
  for (const c of [
         config(MoeFusedLinear, backendName, moeFusedLinearFallback),
         config(MoeFusedLinearGradWeight, backendName, moeFusedLinearGradWeightFallback),
         config(MoeFusedLinearNf4, backendName, moeFusedLinearNf4Fallback),
         config(MoeGatherRows, backendName, gatherRowsVia(backendName)),
         config(MoeScatterAddRows, backendName, scatterAddRowsVia(backendName)),
         config(MoeSortByExpert, backendName, moeSortByExpert),
       ]) {
    registerKernel(c);
  }
}

for (const c of [
       moeFusedLinearCpuConfig, moeFusedLinearGradWeightCpuConfig, moeFusedLinearNf4CpuConfig, moeGatherRowsCpuConfig,
       moeScatterAddRowsCpuConfig, config(MoeSortByExpert, 'cpu', moeSortByExpert),
       moeFusedLinearTensorflowConfig, moeFusedLinearGradWeightTensorflowConfig, moeFusedLinearNf4TensorflowConfig,
       config(MoeGatherRows, 'tensorflow', gatherRowsVia('tensorflow')),
       config(MoeScatterAddRows, 'tensorflow', scatterAddRowsVia('tensorflow')),
       config(MoeSortByExpert, 'tensorflow', moeSortByExpert),
     ]) {
  registerKernel(c);
}
const others = new Set([...KNOWN_BACKENDS, ...Object.keys(engine().registryFactory)]);
for (const name of others) {
  if (!NATIVE_BACKENDS.includes(name)) registerFallbackKernels(name);
}
