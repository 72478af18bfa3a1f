/**
 * The CUDA addon for the GPU tests, or a skip: where there is no CUDA device (or no CUDA addon,
 * built only where nvcc was found) the suites are skipped with a note saying so, unless
 * TFJS_MOE_REQUIRE_CUDA=1 (set on the GPU machine) turns that into a failure.
 */
import {CudaAddon, cudaAddon, cudaAddonBuilt, DeviceBuffer} from '../../src/native/cuda_addon';

function findDevice(): {gpu?: CudaAddon; why?: string} {
  if (!cudaAddonBuilt()) return {why: 'the CUDA addon was not built (no nvcc at install time)'};
  const gpu = cudaAddon();
  return gpu.deviceCount() > 0 ? {gpu} : {why: 'no CUDA device'};
}

const found = findDevice();
if (found.why) {
  if (process.env.TFJS_MOE_REQUIRE_CUDA === '1') throw new Error(`TFJS_MOE_REQUIRE_CUDA=1 but ${found.why}`);
  console.log(`${found.why}: skipping the CUDA tests`);
}

/** describe on a machine with a CUDA device, describe.skip elsewhere. */
export const describeGpu = found.gpu ? describe : describe.skip;
export const gpu = found.gpu as CudaAddon;

/** Uploads host data into a new device buffer. */
export function toDevice(data: Float32Array | Int32Array): DeviceBuffer {
  const b = gpu.alloc(data.byteLength);
  gpu.upload(b, data);
  return b;
}

/** A device buffer of n floats, filled with NaN so that unwritten elements show. */
export function poisoned(n: number): DeviceBuffer {
  return toDevice(new Float32Array(n).fill(NaN));
}

export function floatsOf(b: DeviceBuffer, n: number): Float32Array {
  const out = new Float32Array(n);
  gpu.download(b, out);
  return out;
}

export function intsOf(b: DeviceBuffer, n: number): Int32Array {
  const out = new Int32Array(n);
  gpu.download(b, out);
  return out;
}
