/** Bad input gives a clear error that names the argument, on every backend, and never a crash. */
import * as tf from '@tensorflow/tfjs-core';

import {BACKENDS, useBackend} from './helpers/backends';
import {moeFusedLinear, moeGatherRows, moeRoute, moeSortByExpert} from '../src';

describe.each(BACKENDS)('bad input on %s', backend => {
  beforeAll(() => useBackend(backend));

  const x = () => tf.zeros([5, 4]);
  const w = () => tf.zeros([2, 3, 4]);
  const g = (...sizes: number[]) => tf.tensor1d(sizes, 'int32');

  test.each([
    ['x of rank 1', () => moeFusedLinear(tf.zeros([4]), w(), g(2, 3)), /x must be a rank-2 tensor \[M, K\], but has shape \[4\]/],
    ['weight of rank 2', () => moeFusedLinear(x(), tf.zeros([3, 4]), g(2, 3)), /weight must be a rank-3 tensor/],
    ['groupSizes of rank 2', () => moeFusedLinear(x(), w(), tf.tensor2d([[2, 3]], [1, 2], 'int32')), /groupSizes must be a rank-1/],
    ['K mismatch', () => moeFusedLinear(tf.zeros([5, 7]), w(), g(2, 3)), /x has 7 columns but weight \[2,3,4\] expects K = 4/],
    ['K mismatch, transposed', () => moeFusedLinear(x(), w(), g(2, 3), {transposeWeight: true}), /expects K = 3/],
    ['one group size per expert', () => moeFusedLinear(x(), w(), g(5)), /groupSizes must have one entry per expert \(E = 2\)/],
    ['sizes that do not sum to M', () => moeFusedLinear(x(), w(), g(2, 2)), /groupSizes must sum to the number of rows of x \(5\), but they sum to 4/],
    ['negative sizes', () => moeFusedLinear(x(), w(), g(-1, 6)), /groupSizes must be non-negative, but groupSizes\[0\] = -1/],
    ['float group sizes (tensor)', () => moeFusedLinear(x(), w(), tf.tensor1d([2, 3])), /groupSizes must have dtype int32, but has dtype float32/],
    ['float group sizes (array)', () => moeFusedLinear(x(), w(), [2.5, 2.5]), /groupSizes must hold int32 integers, but element 0 is 2.5/],
    ['int32 x', () => moeFusedLinear(tf.zeros([5, 4], 'int32'), w(), g(2, 3)), /x must have dtype float32, but has dtype int32/],
    ['expert ids >= E', () => moeSortByExpert(tf.tensor2d([[0, 4]], [1, 2], 'int32'), 4), /expertIds must lie in \[0, numExperts = 4\), but element 1 is 4/],
    ['negative expert ids', () => moeSortByExpert(tf.tensor1d([-1], 'int32'), 4), /expertIds must lie in \[0, numExperts = 4\)/],
    ['float expert ids', () => moeSortByExpert(tf.tensor1d([1]), 4), /expertIds must have dtype int32/],
    ['topK > E', () => moeRoute(tf.zeros([3, 4]), {topK: 5}), /topK must be an integer in \[1, E = 4\], but is 5/],
    ['logits of rank 3', () => moeRoute(tf.zeros([1, 3, 4]), {topK: 2}), /logits must be a rank-2 tensor \[T, E\]/],
    ['row index out of range', () => moeGatherRows(tf.zeros([3, 2]), tf.tensor1d([0, 5], 'int32')), /ind(ex|ices).*5/],
  ])('%s', (_name, run, message) => {
    expect(run).toThrow(message);
  });

  test('an error leaves no tensors behind', () => {
    const before = tf.memory().numTensors;
    expect(() => moeFusedLinear([[1, 2]], [[[1, 2]]], [2])).toThrow(/groupSizes must sum/);
    expect(() => moeFusedLinear([[1, 2]], [[[1, 2]]], [0.5])).toThrow(/int32 integers/);
    expect(tf.memory().numTensors).toBe(before);
  });
});
