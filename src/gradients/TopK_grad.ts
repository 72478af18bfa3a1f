import {add, GradConfig, range, reshape, scatterND, Tensor, TopK} from '@tensorflow/tfjs-core';

/**
 * tfjs 4.22 has no TopK gradient. values[t, j] = x[t, indices[t, j]], so
 *   dx[t, indices[t, j]] = dvalues[t, j]   (indices are distinct within a row), else 0;
 * the int32 indices output has no gradient. Registered only where tfjs has none.
 */
export const topKGradConfig: GradConfig = {
  kernelName: TopK,
  inputsToSave: ['x'],
  outputsToSave: [false, true],
  gradFunc: (dys, [x, indices]) => ({
    x: () => {
      const n = x.shape[x.shape.length - 1];
      const k = indices.shape[indices.shape.length - 1];
      const rows = x.size / n;
      // Positions row·n + indices[row, j] in the flat [rows · n] view of x.
      const flat = add(reshape(indices, [rows, k]), reshape(range(0, rows * n, n, 'int32'), [rows, 1]));
      const dValues = reshape((dys as Tensor[])[0], [rows * k]);
      return reshape(scatterND(reshape(flat, [rows * k, 1]), dValues, [rows * n]), x.shape);
    },
  }),
};
