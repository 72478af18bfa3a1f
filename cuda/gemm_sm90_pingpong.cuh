// Ping-pong tile math of the sm_90a tf32 forward with float32 weights, y = x · w[e]ᵀ, after the
// kernel cuBLAS runs on these shapes (cuda/NOTES.md, tenth and eleventh sections): 128 × 128
// output tiles, each computed by one consumer warpgroup alone (two m64n128 wgmma a step; acc[64h
// ..] holds rows [64h, 64h + 64)), the two warpgroups taking the block's tiles in turn. The stage
// stream is still the tiles' stages in order, one producer thread copying them by TMA (rounded to
// tf32 by the TMA unit, so a stage is ready as it lands). While one warpgroup stores its tile
// (store_tile_tma) the other multiplies the next, so the tensor cores do not wait for the
// epilogues, which the cooperative 128 × 256 tiles of run_tiles run in both warpgroups at once;
// the price is 4/3 the operand bytes a flop. Hence the forward takes it for shallow K only, where
// the epilogue weighs most (grouped_gemm.cu).
#pragma once

#include "gemm_sm90.cuh"

namespace moe::cuda::gemm::sm90 {

// Shared memory: kSlots stages of A's kBM rows then B's kBN rows (32 deep, 128-byte swizzled
// rows: 32 KB), the two warpgroups' staging areas of kBoxes boxes for TMA stores (store_tile_tma),
// the mbarriers full (copies landed) and empty (the warpgroup is done with the stage) of each slot
// and order of each warpgroup (run_tiles_pingpong), then the plan where it fits. H100, M = 65536,
// K = 768 → N = 2048 (ms, against 0.734–0.745 for run_tiles): 5 slots of 4 boxes 0.733–0.737, 5 of
// 2 0.716–0.733, 6 of 2 0.693–0.716, 6 of 1 0.677–0.711; 6 or 7 slots with direct stores
// (store_tile) 0.77–0.85: the stores have to leave by TMA even when another warpgroup computes.
struct PingPongLayout {
  static constexpr int kBN = 128, kSlots = 6, kBoxes = 1;
  static constexpr int kStageBytes = (kBM + kBN) * 128;
  static constexpr int kStagingOffset = kSlots * kStageBytes;
  static constexpr int kBarrierOffset = kStagingOffset + kConsumers / 128 * kBoxes * kOutBoxBytes;
  static constexpr int kPlanOffset = kBarrierOffset + (2 * kSlots + 2) * sizeof(uint64_t);
  static constexpr size_t kSmemBytes = kPlanOffset + 1024;  // + alignment slack

  __device__ static uint8_t* stage(uint8_t* smem, int slot) { return smem + slot * kStageBytes; }
};

// A persistent block's tiles blockIdx.x, blockIdx.x + gridDim.x, … < num_tiles (job(tile): A's
// rows a_row.. of map_a, B's rows b_row.. of map_b, both K-major, boxes of 32 × 128; the output in
// map_c at c_row, c_col), the i-th of them computed by warpgroup i % 2. Stage s of the stream (the
// tiles' ⌈depth / 32⌉ stages in order) is in slot s % kSlots. The producer leader copies stage s
// once stage s − kSlots was released (empty); the warpgroup whose tile it is waits for it (full),
// runs its wgmma and releases it once the wgmma of the next stage were issued (releasing each
// stage as soon as its own wgmma were done: 0.82–0.85 ms at the shape above). A wait is for the
// phase of the slot's current pass, which a parity tells only if the phase before it has
// completed: so a warpgroup starts waiting for its tile's stages only once the other has waited
// for all of its own (warpgroup g waits on order[g], and arrives on order[1 − g] once its last
// stage's wgmma were issued), which also keeps the two mainloops in turn.
template <class Job>
__device__ __forceinline__ void run_tiles_pingpong(uint8_t* smem, int64_t num_tiles, const Job& job,
                                                   const CUtensorMap* map_a, const CUtensorMap* map_b,
                                                   const CUtensorMap* map_c) {
  using L = PingPongLayout;
  constexpr int kSlots = L::kSlots;
  const auto num_k = [](const TileJob& t) { return (t.depth + kBK - 1) / kBK; };
  const int stride = gridDim.x;
  uint64_t* const full = reinterpret_cast<uint64_t*>(smem + L::kBarrierOffset);
  uint64_t* const empty = full + kSlots;
  uint64_t* const order = empty + kSlots;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kSlots; ++i) {
      mbar_init(&full[i], 1);
      mbar_init(&empty[i], 128);
    }
    mbar_init(&order[0], 128);
    mbar_init(&order[1], 128);
  }
  __syncthreads();

  if (threadIdx.x >= kConsumers) {  // the producer warpgroup's first warp walks the tiles, its lane 0 copies
    if (threadIdx.x >= kConsumers + 32) return;
    int slot = 0;
    uint32_t pass = 0;
    for (int64_t tile = blockIdx.x; tile < num_tiles; tile += stride) {
      const TileJob t = job(tile);
      for (int k = 0; k < num_k(t); ++k) {
        mbar_wait(&empty[slot], (pass & 1) ^ 1);
        if (threadIdx.x == kConsumers) {
          uint8_t* stage = L::stage(smem, slot);
          mbar_arrive_expect_tx(&full[slot], L::kStageBytes);
          tma_load(stage, map_a, k * kBK, t.a_row, &full[slot]);
          tma_load(stage + kBM * 128, map_b, k * kBK, t.b_row, &full[slot]);
        }
        if (++slot == kSlots) slot = 0, ++pass;
      }
    }
    return;
  }

  // Consumer warpgroup g.
  const int g = threadIdx.x / 128;
  float acc[kAcc];
  fence_acc(acc);
  int slot = 0;
  uint32_t pass = 0;
  int turn = 0;       // which warpgroup's tile this is
  uint32_t mine = 0;  // tiles of this warpgroup so far
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += stride, turn ^= 1) {
    const TileJob out = job(tile);
    const int nk = num_k(out);
    if (turn != g) {  // the other warpgroup's stages
      slot += nk;
      pass += slot / kSlots;
      slot %= kSlots;
      continue;
    }
    // warpgroup 1's n-th tile waits for phase n of order[1] (0's n-th tile), warpgroup 0's for phase
    // n − 1 of order[0] (its first: a fresh barrier's phase of parity 1 counts as complete)
    mbar_wait(&order[g], (mine + 1 - g) & 1);
    ++mine;
    if (nk == 0) {
      mbar_arrive(&order[1 - g]);
      store_tile<true, true>(acc, out);
      continue;
    }
    int prev = slot;
    for (int k = 0; k < nk; ++k) {
      mbar_wait(&full[slot], pass & 1);
      const uint8_t* stage = L::stage(smem, slot);
      // A's rows 64..127 start 8 KB (512 units of 16 bytes) after its rows 0..63
      const uint64_t desc_a = make_desc<Precision::kTf32>(stage), desc_b = make_desc<Precision::kTf32>(stage + kBM * 128);
      wgmma_fence();
#pragma unroll
      for (int step = 0; step < kBK / 8; ++step) {  // 32 bytes deeper each: +2 in 16-byte units
        wgmma_ss<0>(acc, desc_a + 2 * step, desc_b + 2 * step, k > 0 || step > 0);
        wgmma_ss<1>(acc, desc_a + 512 + 2 * step, desc_b + 2 * step, k > 0 || step > 0);
      }
      wgmma_commit();
      wgmma_wait<1>();
      if (k > 0) mbar_arrive(&empty[prev]);
      prev = slot;
      if (++slot == kSlots) slot = 0, ++pass;
    }
    mbar_arrive(&order[1 - g]);
    wgmma_wait<0>();
    mbar_arrive(&empty[prev]);
    fence_acc(acc);
    if (out.rows == kBM)
      store_tile_tma<true, L::kBoxes>(acc, out, smem + L::kStagingOffset, map_c);
    else
      store_tile<false, true>(acc, out);
  }
  if (threadIdx.x % 128 == 0) bulk_wait_read();  // the staging must outlive the stores' reads
}

}  // namespace moe::cuda::gemm::sm90
