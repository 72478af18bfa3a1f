// Tile schedules of the grouped GEMMs, kept apart from the tile math (gemm_sm80.cuh) so that
// another mainloop (wgmma on sm_90a) can run on the same schedule.
//
// A plan turns group_sizes (on the device) into per-expert row ranges and tile prefix sums; a
// persistent GEMM kernel then walks tile ids blockIdx.x, blockIdx.x + gridDim.x, … and maps each id
// to its expert and block coordinates here. Tiles never straddle experts.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda::gemm {

// Built by build_plan (grouped_gemm.cu) in each block's shared memory, or by the plan kernel in
// stream-ordered workspace; E + 1 entries each:
//   row_start[e]  = min(Σ_{j<e} max(group_sizes[j], 0), M): expert e owns rows [row_start[e], row_start[e+1]),
//                   so negative sizes count as 0 and no expert reaches past row M;
//   tile_start[e] = Σ_{j<e} ceil(rows_j / bm) · tiles_n: the first tile of expert e; tile_start[E] = all tiles.
struct Plan {
  const int64_t* row_start;
  const int64_t* tile_start;
  int64_t num_experts;
};

// Inclusive prefix sum over the block; *total gets the block's sum. scratch: 32 values.
__device__ inline int64_t block_inclusive_scan(int64_t v, int64_t* scratch, int64_t* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int d = 1; d < 32; d *= 2) {
    const int64_t up = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += up;
  }
  if (lane == 31) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0;
    for (int d = 1; d < 32; d *= 2) {
      const int64_t up = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += up;
    }
    scratch[lane] = w;  // inclusive sums of the warp totals
  }
  __syncthreads();
  if (warp > 0) v += scratch[warp - 1];
  *total = scratch[blockDim.x / 32 - 1];
  __syncthreads();  // scratch is reused by the next call
  return v;
}

// Forward and dX: a tile is rows [row0, row0 + rows) of one expert (rows ≤ bm) times columns
// [col0, col0 + bn) of the output.
struct RowTile {
  int64_t expert, row0, col0;
  int rows;
};

// Tiles of an expert are numbered in groups of kGroupM row blocks, column blocks outer within a
// group, so that tiles running together share the expert's weight columns and a few row blocks
// of x in L2.
constexpr int64_t kGroupM = 8;

// The last e < E with tile_start[e] ≤ tile (experts without tiles share the next one's start), found
// by the calling warp in rounds of 32 probes (2 rounds up to E = 1024); every lane gets it.
__device__ inline int64_t find_expert(const Plan& plan, int64_t tile) {
  const int lane = threadIdx.x % 32;
  int64_t lo = 0, count = plan.num_experts;  // the answer is in [lo, lo + count); tile_start[lo] ≤ tile
  while (true) {
    const int64_t step = count > 32 ? (count + 31) / 32 : 1;
    const int64_t e = lo + lane * step;
    const bool below = e < lo + count && plan.tile_start[e] <= tile;
    const int last = 31 - __clz(__ballot_sync(0xffffffffu, below));  // tile_start is non-decreasing
    if (step == 1) return lo + last;
    lo += last * step;
    count = min(step, count - last * step);
  }
}

__device__ inline RowTile row_tile(const Plan& plan, int64_t tile, int bm, int bn, int64_t tiles_n) {
  const int64_t lo = find_expert(plan, tile);
  const int64_t row_begin = plan.row_start[lo], row_end = plan.row_start[lo + 1];
  const int64_t blocks_m = (row_end - row_begin + bm - 1) / bm;
  const int64_t local = tile - plan.tile_start[lo];
  const int64_t group = local / (kGroupM * tiles_n), first_m = group * kGroupM;
  const int64_t group_m = min(blocks_m - first_m, kGroupM);
  const int64_t in_group = local - group * kGroupM * tiles_n;
  const int64_t block_m = first_m + in_group % group_m, block_n = in_group / group_m;
  RowTile t;
  t.expert = lo;
  t.row0 = row_begin + block_m * bm;
  t.col0 = block_n * bn;
  t.rows = static_cast<int>(min(row_end - t.row0, static_cast<int64_t>(bm)));
  return t;
}

// dW: a tile is rows [n0, n0 + bm) × columns [k0, k0 + bn) of dw[expert]; it reduces over all the
// expert's rows [row0, row0 + rows). Every expert has tiles_n · tiles_k tiles, even without rows.
struct ExpertTile {
  int64_t expert, row0, rows, n0, k0;
};

__device__ inline ExpertTile expert_tile(const Plan& plan, int64_t tile, int bm, int bn, int64_t tiles_n,
                                         int64_t tiles_k) {
  ExpertTile t;
  t.expert = tile / (tiles_n * tiles_k);
  const int64_t local = tile - t.expert * tiles_n * tiles_k;
  t.n0 = local / tiles_k * bm;
  t.k0 = local % tiles_k * bn;
  t.row0 = plan.row_start[t.expert];
  t.rows = plan.row_start[t.expert + 1] - t.row0;
  return t;
}

}  // namespace moe::cuda::gemm
