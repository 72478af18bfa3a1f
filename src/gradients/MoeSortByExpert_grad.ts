import {GradConfig, zeros} from '@tensorflow/tfjs-core';

import {MoeSortByExpert} from '../kernel_names';

/** Integer outputs: expert ids computed on the tape (by TopK) get a zeros gradient. */
export const moeSortByExpertGradConfig: GradConfig = {
  kernelName: MoeSortByExpert,
  inputsToSave: ['expertIds'],
  gradFunc: (_dys, [expertIds]) => ({expertIds: () => zeros(expertIds.shape, 'float32')}),
};
