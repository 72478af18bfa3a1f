/** What the GPU benchmarks share: uploads and event-timed medians over rotated input sets. */
import {cudaAddon, DeviceBuffer} from '../src/native/cuda_addon';

export const gpu = cudaAddon();
export const REPS = 25, SETS = 3;
/** Each timed run waits behind this much GPU work, so that its events time the GPU, not the host. */
const BUSY_US = 200;

export function device(data: Float32Array | Int32Array | Uint8Array): DeviceBuffer {
  const b = gpu.alloc(data.byteLength);
  gpu.upload(b, data);
  return b;
}

/**
 * Median milliseconds of REPS event-timed runs after a warm-up, rotating over SETS argument sets.
 * Each run is queued behind a busyWait, so the host's launch latency (9–18 µs a call from Node on
 * the H100 machine) falls outside its events, as in nvbench and bench/gpu_torch.py.
 */
export function medianMs(run: (set: number) => void): number {
  for (let s = 0; s < SETS; ++s) run(s);
  gpu.synchronize();
  const times: number[] = [];
  for (let r = 0; r < REPS; ++r) {
    gpu.busyWait(BUSY_US);
    const start = gpu.newEvent();
    run(r % SETS);
    times.push(gpu.newEvent().elapsedMs(start));
  }
  return times.sort((a, b) => a - b)[REPS >> 1];
}
