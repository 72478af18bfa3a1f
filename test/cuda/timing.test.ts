/** The addon's timing tools: events on the stream, and busyWait keeping the stream busy. */
import {describeGpu, gpu} from './device';

describeGpu('CUDA timing', () => {
  test('busyWait holds the stream for the time asked, and events measure it', () => {
    gpu.synchronize();
    for (const us of [0, 2000]) {
      const start = gpu.newEvent();
      gpu.busyWait(us);
      const ms = gpu.newEvent().elapsedMs(start);
      expect(ms).toBeGreaterThanOrEqual(us / 1000);
      expect(ms).toBeLessThan(us / 1000 + 50);
    }
  });

  test('busyWait rejects bad durations before any launch', () => {
    expect(() => gpu.busyWait(-1)).toThrow(/microseconds must be a non-negative integer/);
    expect(() => gpu.busyWait(2.5)).toThrow(/microseconds must be a non-negative integer/);
    expect(() => gpu.busyWait(10_000_001)).toThrow(/microseconds must be at most 10000000/);
    gpu.synchronize();
  });
});
