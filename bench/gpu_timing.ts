/** What the GPU benchmarks share: uploads and event-timed medians over rotated input sets. */
import {cudaAddon, DeviceBuffer} from '../src/native/cuda_addon';

export const gpu = cudaAddon();
export const REPS = 25, SETS = 3;

export function device(data: Float32Array | Int32Array | Uint8Array): DeviceBuffer {
  const b = gpu.alloc(data.byteLength);
  gpu.upload(b, data);
  return b;
}

/** Median milliseconds of REPS event-timed runs after a warm-up, rotating over SETS argument sets. */
export function medianMs(run: (set: number) => void): number {
  for (let s = 0; s < SETS; ++s) run(s);
  gpu.synchronize();
  const times: number[] = [];
  for (let r = 0; r < REPS; ++r) {
    const start = gpu.newEvent();
    run(r % SETS);
    times.push(gpu.newEvent().elapsedMs(start));
  }
  return times.sort((a, b) => a - b)[REPS >> 1];
}
