// Tile math of the forward grouped GEMM for sm_90a (H100, H200): C[i, j] = Σ_r A(i, r) · B(j, r)
// over 128 × 256 output tiles, both operands K-major (x and w in the forward pass), multiplied by
// wgmma (warpgroup MMA) from shared memory, accumulated in float32 registers.
//
// The operands are float32 in global memory and the tensor cores read tf32 or bf16 from shared
// memory. Warp-specialized: one producer thread has the tensor memory accelerator (TMA) copy each
// stage (32 deep) global → shared as float32, 128-byte swizzled, rows past the tensors and r past
// the depth zero-filled; the producer warpgroup then rounds it (tf32: round to nearest, ties
// away, as cvt.rna; bf16: round to nearest even) into the layout that wgmma reads: 128-byte (tf32,
// in place) or 64-byte (bf16, a second ring) swizzled rows. Two consumer warpgroups, 64 × 256
// outputs each, only wait for stages, run wgmma and store their tile. The sides meet at mbarriers.
// Copies run kAhead = 3 stages ahead of the rounding, across the tiles of a persistent block, so
// loads continue through the consumers' epilogues.
//
// wgmma exists on sm_90a only: the kernel that uses this file compiles its body for sm_90a alone
// (__CUDA_ARCH_FEAT_SM90_ALL), and the host launches it only on devices of compute capability 9.0.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gemm_sm80.cuh"
#include "moe_cuda.h"

namespace moe::cuda::gemm::sm90 {

constexpr int kBM = 128, kBN = 256;  // outputs per block
constexpr int kBK = 32;              // depth of a stage (r values)
constexpr int kConsumers = 256;      // warpgroups 0 and 1; warpgroup g owns rows [64g, 64g + 64)
constexpr int kProducers = 128;      // warpgroup 2
constexpr int kThreads = kConsumers + kProducers;
constexpr int kRows = kBM + kBN;     // a stage is A's kBM rows, then B's kBN rows
constexpr int kRowStep = kProducers / 8;             // rows rounded at once: 8 threads a row
constexpr int kChunks = kRows / kRowStep;            // 16-byte pieces per producer and stage: 24
constexpr int kAcc = kBN / 2;        // accumulators per thread: 64 × 256 over 128 threads
constexpr int kAhead = 3;            // stages in flight (being copied) ahead of the rounding
static_assert(kBN <= 256, "a TMA box has at most 256 rows");

// Swizzle<b,4,3> of a byte offset in a 1024-byte aligned stage: bits [4, 4 + b) XOR bits [7, 7 + b),
// i.e. 16-byte chunk c of row i sits at c ^ (i % 8) for 128-byte rows (b = 3) and at c ^ (i / 2 % 4)
// for 64-byte rows (b = 2): the K-major layouts that wgmma reads with 128 B / 64 B swizzling.
template <int kPitch>
__device__ __forceinline__ uint32_t swizzle(uint32_t offset) {
  return offset ^ (((offset >> 7) & (kPitch / 16 - 1)) << 4);
}

// Shared memory in precision kP: kSlots raw stages (float32, 128-byte rows: row i of the stage
// holds r = 0..31 of A row i, or of B row i − kBM), for bf16 kSlots math stages (64-byte rows;
// tf32 rounds in place, so its raw stages are its math stages), then the mbarriers of the slots:
// raw_full (TMA landed), full (rounded), empty (consumers done), raw_empty (bf16: rounding done).
// Stage s of a block's stream uses slot s % kSlots of each ring.
template <Precision kP>
struct Layout {
  static_assert(kP == Precision::kTf32 || kP == Precision::kBf16, "wgmma path: tf32 and bf16");
  static constexpr bool kInPlace = kP == Precision::kTf32;
  static constexpr int kSlots = kInPlace ? 4 : 3;  // see run_tiles for why these suffice
  static constexpr int kRawPitch = 128, kRawBytes = kRows * kRawPitch;
  static constexpr int kElemBytes = kInPlace ? 4 : 2;
  static constexpr int kPitch = kBK * kElemBytes;  // math rows: 128 (tf32) or 64 (bf16) bytes
  static constexpr int kBytes = kRows * kPitch;
  static constexpr int kMathOffset = kInPlace ? 0 : kSlots * kRawBytes;
  static constexpr int kBarrierOffset = kMathOffset + kSlots * kBytes;
  static constexpr size_t kSmemBytes = kBarrierOffset + 4 * kSlots * sizeof(uint64_t) + 1024;  // + alignment slack
  static constexpr uint64_t kLayoutType = kPitch == 128 ? 1 : 2;     // descriptor: 128 B / 64 B swizzle
  static constexpr int kStepDepth = kInPlace ? 8 : 16;               // r per wgmma: 32 bytes either way

  __device__ static uint8_t* raw(uint8_t* smem, int slot) { return smem + slot * kRawBytes; }
  __device__ static uint8_t* math(uint8_t* smem, int slot) { return smem + kMathOffset + slot * kBytes; }
  __device__ static uint64_t* barriers(uint8_t* smem) { return reinterpret_cast<uint64_t*>(smem + kBarrierOffset); }
};

// ---------------------------------------------------------------------------------------------
// PTX wrappers (sm_90a)

// wgmma matrix descriptor of a K-major swizzled operand at p (shared memory): start address
// (bits 0-13), leading byte offset (16-29; unused by swizzled K-major layouts, 1 by convention),
// stride byte offset between groups of 8 rows (32-45), layout type (62-63). All in 16-byte units.
template <Precision kP>
__device__ __forceinline__ uint64_t make_desc(const uint8_t* p) {
  const uint32_t addr = smem_addr(p);
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (static_cast<uint64_t>(8 * Layout<kP>::kPitch >> 4) << 32) | (Layout<kP>::kLayoutType << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Orders this thread's ordinary shared-memory stores before later accesses by the async proxy
// (wgmma reads, TMA writes).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// mbarriers: init with the number of arrivals that completes a phase; wait for the completion of
// the phase of parity `parity` (a fresh barrier counts its phase of parity 1 as complete).
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Arrives and makes the phase also wait for `bytes` of asynchronous copies (TMA) to land.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(smem_addr(bar)), "r"(parity)
                 : "memory");
  } while (!done);
}

// TMA: the box of `map` at (inner coordinate c0, row c1) → shared dst, completing on bar.
__device__ __forceinline__ void tma_load(uint8_t* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_addr(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(smem_addr(bar))
      : "memory");
}

// Keeps the compiler from moving accesses of acc across the asynchronous wgmma that writes it.
__device__ __forceinline__ void fence_acc(float (&acc)[kAcc]) {
#pragma unroll
  for (int i = 0; i < kAcc; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}

#define MOE_ACC8(i)                                                                                          \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define MOE_ACC128                                                                                            \
  MOE_ACC8(0), MOE_ACC8(8), MOE_ACC8(16), MOE_ACC8(24), MOE_ACC8(32), MOE_ACC8(40), MOE_ACC8(48), MOE_ACC8(56), \
      MOE_ACC8(64), MOE_ACC8(72), MOE_ACC8(80), MOE_ACC8(88), MOE_ACC8(96), MOE_ACC8(104), MOE_ACC8(112),     \
      MOE_ACC8(120)
#define MOE_D128                                                                                              \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "  \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "   \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, "   \
  "%65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, "   \
  "%86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, " \
  "%106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, "      \
  "%123, %124, %125, %126, %127}"

// d (+)= A · Bᵀ for A 64 × depth and B 256 × depth at descriptors a, b (one step: 8 deep for tf32,
// 16 for bf16); d = A · Bᵀ when accumulate == 0. Accumulator layout (warp w of the warpgroup,
// lane l): d[4q + h] = C(16w + l/4 + 8·(h/2), 8q + 2·(l%4) + h%2).
template <Precision kP>
__device__ __forceinline__ void wgmma(float (&d)[kAcc], uint64_t a, uint64_t b, int accumulate) {
  if constexpr (kP == Precision::kTf32)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32 " MOE_D128 ", %128, %129, p, 1, 1;\n}\n"
                 : MOE_ACC128
                 : "l"(a), "l"(b), "r"(accumulate));
  else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " MOE_D128 ", %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : MOE_ACC128
                 : "l"(a), "l"(b), "r"(accumulate));
}
#undef MOE_D128
#undef MOE_ACC128
#undef MOE_ACC8

// ---------------------------------------------------------------------------------------------
// One tile's work: C = A · Bᵀ over the full depth into c[i·ldc + j] for i < rows, j < cols, A at
// rows a_row.. of the TMA tensor of A, B at rows b_row.. of that of B. Both tensors are
// [rows, depth] float32 with boxes of 32 × kBM (A) and 32 × kBN (B), 128-byte swizzled; rows past
// the tile (another expert's, or past the tensor: zeros) only reach outputs that are not stored.
struct TileJob {
  int a_row, b_row;
  float* c;
  int64_t ldc;
  int rows, cols;
};

// Rounds producer p's pieces of a landed raw stage into its math stage (tf32: the same place).
template <Precision kP>
__device__ __forceinline__ void convert(const uint8_t* raw, uint8_t* math, int p) {
  using L = Layout<kP>;
  const int row = p / 8, c = p % 8;
  const uint32_t raw_offset = swizzle<L::kRawPitch>(row * L::kRawPitch + c * 16);
  const uint32_t math_offset = swizzle<L::kPitch>(row * L::kPitch + c * 4 * L::kElemBytes);
  constexpr int kBatch = 8;  // loads in flight at a time
#pragma unroll
  for (int q0 = 0; q0 < kChunks; q0 += kBatch) {
    uint4 v[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q)
      v[q] = *reinterpret_cast<const uint4*>(raw + raw_offset + (q0 + q) * kRowStep * L::kRawPitch);
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      uint8_t* dst = math + math_offset + (q0 + q) * kRowStep * L::kPitch;
      if constexpr (L::kInPlace)
        *reinterpret_cast<uint4*>(dst) = make_uint4(to_tf32(v[q].x), to_tf32(v[q].y), to_tf32(v[q].z), to_tf32(v[q].w));
      else
        *reinterpret_cast<uint2*>(dst) = make_uint2(to_bf16x2(v[q].x, v[q].y), to_bf16x2(v[q].z, v[q].w));
    }
  }
}

// Stores C(i, j) = acc for i < rows, j < cols at c[i·ldc + j], straight from the registers as
// float2 (needs cols and ldc even, c 8-byte aligned): a warp writes 8 rows × 32 bytes at a time.
__device__ __forceinline__ void store_tile(const float (&acc)[kAcc], const TileJob& job) {
  const int lane = threadIdx.x % 32;
  const int i = threadIdx.x / 128 * 64 + threadIdx.x % 128 / 32 * 16 + lane / 4;
  const int j = lane % 4 * 2;
#pragma unroll
  for (int q = 0; q < kBN / 8; ++q) {
    if (j + 8 * q >= job.cols) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (i + 8 * h < job.rows)
        *reinterpret_cast<float2*>(job.c + (i + 8 * h) * job.ldc + j + 8 * q) =
            make_float2(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
  }
}

// ---------------------------------------------------------------------------------------------
// A persistent block's stream: tiles blockIdx.x, blockIdx.x + gridDim.x, … < num_tiles, job(tile)
// giving each one's rows and output, all of the same depth (> 0); stage s of the stream is stage
// s % num_k of its tile s / num_k, in slot s % kSlots, on pass s / kSlots over the ring.
// smem: Layout<kP>::kSmemBytes − 1024 bytes, 1024-byte aligned.
//
// Producers, stage s: wait on raw_full; (bf16) wait on empty for stage s − 3, whose math slot it
// takes; round, fence.proxy.async, arrive on full (and on raw_empty). Then the leader copies stage
// s + 3 once its slot is free: (tf32) the consumers released stage s − 1 (empty), (bf16) every
// producer has rounded stage s (raw_empty). Consumers, stage s: wait on full; wgmma (async); wait
// for their wgmma of stage s − 1 and release it (empty); at a tile's end wait for all, release
// stage s, store the tile. Every wait is for the phase of the slot's current pass; a pass-0 wait
// on a barrier that guards a free slot asks for parity 1 and returns at once.
template <Precision kP, class Job>
__device__ __forceinline__ void run_tiles(uint8_t* smem, int64_t num_tiles, int64_t depth, const Job& job,
                                          const CUtensorMap* map_a, const CUtensorMap* map_b) {
  using L = Layout<kP>;
  if (static_cast<int64_t>(blockIdx.x) >= num_tiles) return;
  const int64_t num_k = (depth + kBK - 1) / kBK;
  const int64_t stride = gridDim.x;
  const int64_t stages = (num_tiles - blockIdx.x + stride - 1) / stride * num_k;
  uint64_t* const raw_full = L::barriers(smem);
  uint64_t* const full = raw_full + L::kSlots;
  uint64_t* const empty = full + L::kSlots;
  uint64_t* const raw_empty = empty + L::kSlots;
  if (threadIdx.x == 0)
    for (int i = 0; i < L::kSlots; ++i) {
      mbar_init(&raw_full[i], 1);
      mbar_init(&full[i], kProducers);
      mbar_init(&empty[i], kConsumers);
      mbar_init(&raw_empty[i], kProducers);
    }
  __syncthreads();

  if (threadIdx.x >= kConsumers) {
    const int p = threadIdx.x - kConsumers;
    const bool leader = p == 0;
    int64_t copy_tile = blockIdx.x, copy_k = 0;
    TileJob copy_job = job(copy_tile);
    auto copy = [&](int slot) {  // the next stage of the stream → raw slot (leader), then step on (all)
      if (leader) {
        uint8_t* raw = L::raw(smem, slot);
        const int r = static_cast<int>(copy_k * kBK);
        mbar_arrive_expect_tx(&raw_full[slot], L::kRawBytes);
        tma_load(raw, map_a, r, copy_job.a_row, &raw_full[slot]);
        tma_load(raw + kBM * L::kRawPitch, map_b, r, copy_job.b_row, &raw_full[slot]);
      }
      if (++copy_k == num_k) {
        copy_k = 0, copy_tile += stride;
        if (copy_tile < num_tiles) copy_job = job(copy_tile);
      }
    };
    for (int t = 0; t < kAhead && t < stages; ++t) copy(t);
    int slot = 0, ahead = kAhead % L::kSlots;  // slots of stages s and s + kAhead
    uint32_t pass = 0, ahead_pass = kAhead / L::kSlots;
    for (int64_t s = 0; s < stages; ++s) {
      mbar_wait(&raw_full[slot], pass & 1);
      if (!L::kInPlace) mbar_wait(&empty[slot], (pass & 1) ^ 1);
      convert<kP>(L::raw(smem, slot), L::math(smem, slot), p);
      fence_proxy_async();
      mbar_arrive(&full[slot]);
      if (!L::kInPlace) mbar_arrive(&raw_empty[slot]);
      if (s + kAhead < stages) {
        if (leader) mbar_wait(L::kInPlace ? &empty[ahead] : &raw_empty[ahead], (ahead_pass & 1) ^ 1);
        copy(ahead);
      }
      if (++slot == L::kSlots) slot = 0, ++pass;
      if (++ahead == L::kSlots) ahead = 0, ++ahead_pass;
    }
    return;
  }

  // Consumers.
  const int wg_rows = threadIdx.x / 128 * 64 * L::kPitch;  // this warpgroup's rows of A
  float acc[kAcc];
  fence_acc(acc);
  int slot = 0, prev = 0;
  uint32_t pass = 0;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += stride) {
    const TileJob out = job(tile);
    for (int64_t k = 0; k < num_k; ++k) {
      mbar_wait(&full[slot], pass & 1);
      const uint8_t* stage = L::math(smem, slot);
      const uint64_t desc_a = make_desc<kP>(stage + wg_rows), desc_b = make_desc<kP>(stage + kBM * L::kPitch);
      wgmma_fence();
#pragma unroll
      for (int step = 0; step < kBK / L::kStepDepth; ++step)  // 32 bytes deeper each: +2 in 16-byte units
        wgmma<kP>(acc, desc_a + 2 * step, desc_b + 2 * step, k > 0 || step > 0);
      wgmma_commit();
      wgmma_wait<1>();
      if (k > 0) mbar_arrive(&empty[prev]);
      prev = slot;
      if (++slot == L::kSlots) slot = 0, ++pass;
    }
    wgmma_wait<0>();
    fence_acc(acc);
    mbar_arrive(&empty[prev]);
    store_tile(acc, out);
  }
}

}  // namespace moe::cuda::gemm::sm90
