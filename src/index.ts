/**
 * tfjs-moe-fused: fused Mixture-of-Experts kernels for TensorFlow.js.
 *
 * Importing this module registers the kernels (native on `cpu` and `tensorflow`, pure tfjs
 * elsewhere) and their gradients.
 */
import '@tensorflow/tfjs-backend-cpu';
// tfjs-core's CommonJS entry registers no gradients (tf.grads would fail on Softmax, Sum, ...);
// the tfjs-layers bundle registers all of them.
import '@tensorflow/tfjs-layers';
import './kernels/register';
import './gradients/register';

export * from './kernel_names';
export {registerFallbackKernels} from './kernels/register';
export {moeFusedLinear, MoeFusedLinearOptions} from './ops/moe_fused_linear';
export {moeRoute, MoeRouteOptions, MoeRouting} from './ops/moe_route';
export {moeSortByExpert, ExpertOrder} from './ops/moe_sort_by_expert';
export {moeCombineRows, moeGatherRows} from './ops/moe_rows';
export {cpuAddon} from './native/cpu_addon';
export {cudaAddon, cudaAddonBuilt, CudaAddon, CudaEvent, DeviceBuffer, Precision} from './native/cuda_addon';
