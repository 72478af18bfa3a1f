/** Registers the gradients of this package's kernels, and TopK's where tfjs has none. */
import {getGradient, registerGradient, TopK} from '@tensorflow/tfjs-core';

import {moeFusedLinearGradConfig} from './MoeFusedLinear_grad';
import {moeFusedLinearNf4GradConfig} from './MoeFusedLinearNf4_grad';
import {moeSortByExpertGradConfig} from './MoeSortByExpert_grad';
import {moeGatherRowsGradConfig, moeScatterAddRowsGradConfig} from './rows_grad';
import {topKGradConfig} from './TopK_grad';

for (const config of [moeFusedLinearGradConfig, moeFusedLinearNf4GradConfig, moeGatherRowsGradConfig,
                      moeScatterAddRowsGradConfig, moeSortByExpertGradConfig]) {
  registerGradient(config);
}
if (getGradient(TopK) == null) registerGradient(topKGradConfig);
