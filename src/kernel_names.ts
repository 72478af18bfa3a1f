/** Names, inputs and attributes of the kernels this package registers. */
import type {NamedAttrMap, TensorInfo} from '@tensorflow/tfjs-core';

/** y[m, n] = Σ_k w[g(m), n, k] · x[m, k] (or w[g(m), k, n] when transposeWeight). */
export const MoeFusedLinear = 'MoeFusedLinear';
export type MoeFusedLinearInputs = {x: TensorInfo; weight: TensorInfo; groupSizes: TensorInfo};
export interface MoeFusedLinearAttrs extends NamedAttrMap {
  transposeWeight: boolean;
}

/** dw[e, n, k] = Σ_{m in e} dy[m, n] · x[m, k]. */
export const MoeFusedLinearGradWeight = 'MoeFusedLinearGradWeight';
export type MoeFusedLinearGradWeightInputs = {x: TensorInfo; dy: TensorInfo; groupSizes: TensorInfo};

/** out[j, :] = x[index[j], :]. */
export const MoeGatherRows = 'MoeGatherRows';
export type MoeGatherRowsInputs = {x: TensorInfo; index: TensorInfo};

/**
 * Stable counting sort of expert ids [T] or [T, k]: outputs [sortIndex, inverseSortIndex,
 * tokenIndex, groupSizes], the permutation that groups the rows r = t·k + s by expert.
 */
export const MoeSortByExpert = 'MoeSortByExpert';
export type MoeSortByExpertInputs = {expertIds: TensorInfo};
export interface MoeSortByExpertAttrs extends NamedAttrMap {
  numExperts: number;
}

/** out[index[j], :] += dy[j, :], out has numRows rows (the gradient of MoeGatherRows). */
export const MoeScatterAddRows = 'MoeScatterAddRows';
export type MoeScatterAddRowsInputs = {dy: TensorInfo; index: TensorInfo};
export interface MoeScatterAddRowsAttrs extends NamedAttrMap {
  numRows: number;
}

/**
 * MoeFusedLinear with NF4 weights W [E, N, K] (nn.Linear's layout per expert, src/quant/nf4.ts),
 * decoded inside the kernel: y = x · W[g]ᵀ (x [M, K] → [M, N]), or y = x · W[g] when
 * transposeWeight (x [M, N] → [M, K], how dX = dY · W runs). `packed` holds the experts' bytes as
 * int32 words [ceil(E·S/4)] (S = ceil(N·K/2) bytes per expert, src/quant/int32_words.ts), `absmax`
 * the float32 scale of every block [E·B] (B = ceil(N·K/blocksize)); E = groupSizes.shape[0].
 */
export const MoeFusedLinearNf4 = 'MoeFusedLinearNf4';
export type MoeFusedLinearNf4Inputs = {x: TensorInfo; packed: TensorInfo; absmax: TensorInfo; groupSizes: TensorInfo};
export interface MoeFusedLinearNf4Attrs extends NamedAttrMap {
  N: number;
  K: number;
  blocksize: number;
  transposeWeight: boolean;
}
