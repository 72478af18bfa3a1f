// Tile math of the forward, dX and dW grouped GEMMs for sm_90a (H100, H200): C[i, j] = Σ_r A(i, r) · B(j, r)
// over 128 × 256 output tiles, multiplied by wgmma (warpgroup MMA) from shared memory, accumulated
// in float32 registers. Forward: A = x and B = w[e] as [N, K], both K-major. dX: B = w[e] as
// [K, N], B(j, r) = w[e, r, j], MN-major. dW: A(i, r) = dy[row0 + r, n0 + i] and B(j, r) =
// x[row0 + r, k0 + j], both MN-major, r over the expert's rows. wgmma reads both K-major.
//
// The operands are float32 in global memory (or, for the forward's B, NF4 codes that the producers
// decode: Nf4Stages in nf4_operand.cuh) and the tensor cores read tf32 or bf16 from shared memory.
// Warp-specialized: one producer thread has the tensor memory accelerator (TMA) copy each stage
// (32 deep) global → shared, 128-byte swizzled, rows past the tensors and r past the depth
// zero-filled. tf32: the TMA unit itself rounds float32 to tf32 (to nearest even) as it copies
// (wgmma would truncate), so the stage is ready where it lands: an MN-major B is read by the
// consumers into registers as it landed (the tile computed transposed, see column_of), an MN-major
// A (dW) the producer warpgroup transposes in place (load_blocks / store_blocks). bf16 and NF4: the
// producers round the float32 stage (bf16: to nearest even; NF4 in tf32: cvt.rna, ties away) into
// a second ring, transposing MN-major operands on the way. Two consumer warpgroups, 64 × 256
// outputs each (128 × 128 with B in registers), only wait for stages, run wgmma and store their
// tile. The sides meet at mbarriers. tf32's whole tiles leave by TMA stores from a staging area
// of their own (store_tile_tma), the others from registers or through a math slot. (The tf32
// forward at shallow K runs its own ping-pong tiles instead: gemm_sm90_pingpong.cuh.)
// Copies run ahead of the consumers (kAhead = 3 stages ahead of the rounding, or as far as the
// ring allows), across the tiles of a persistent block, so loads continue through the epilogues.
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
constexpr int kAcc = kBN / 2;        // accumulators per thread: 64 × 256 over 128 threads
constexpr int kOutBoxBytes = 64 * 32 * 4;                 // a box of TMA stores: 64 rows × 32 floats
static_assert(kBN <= 256, "a TMA box has at most 256 rows");
static_assert(kProducers == 128 && kBM % 64 == 0 && kBN % 64 == 0, "transpose's share of the blocks");

// Swizzle<b,4,3> of a byte offset in a 1024-byte aligned stage: bits [4, 4 + b) XOR bits [7, 7 + b),
// i.e. 16-byte chunk c of row i sits at c ^ (i % 8) for 128-byte rows (b = 3) and at c ^ (i / 2 % 4)
// for 64-byte rows (b = 2): the K-major layouts that wgmma reads with 128 B / 64 B swizzling.
template <int kPitch>
__device__ __forceinline__ uint32_t swizzle(uint32_t offset) {
  return offset ^ (((offset >> 7) & (kPitch / 16 - 1)) << 4);
}

// B's source when its weights are float32: TMA boxes, rounded by the TMA unit (tf32) or the
// producers (bf16) (NF4 weights: Nf4Stages, nf4_operand.cuh, with the same members).
struct FloatB {
  static constexpr bool kNf4 = false;
  static constexpr int kRawBytes = kBN * 128;
};

// Shared memory in precision kP with B from B: kSlots raw stages (float32, 128-byte rows: row i of
// the stage holds r = 0..31 of A row i, or of B row i − kBM; with NF4 weights, B's part is
// B::kRawBytes of codes instead, see nf4_operand.cuh), for bf16 or NF4 kSlots math stages (rows
// of 64 bytes for bf16, 128 for tf32; tf32 with float B lands rounded by the TMA unit, so its raw
// stages are its math stages), with kTmaOut the staging area of store_tile_tma (kBoxes boxes a
// consumer warpgroup), then the mbarriers of the slots: raw_full (copies landed), full (rounded),
// empty (consumers done), raw_empty (rounding done, when not in place). Stage s of a block's stream
// uses slot s % kSlots of each ring.
template <Precision kP, class B = FloatB, bool kTmaOut = false, int kBoxes = 4>
struct Layout {
  static_assert(kP == Precision::kTf32 || kP == Precision::kBf16, "wgmma path: tf32 and bf16");
  static constexpr bool kInPlace = kP == Precision::kTf32 && !B::kNf4;
  static_assert(!kTmaOut || kInPlace, "TMA stores: the tf32 float paths");
  // see run_tiles for why these suffice; NF4's small raw stages leave room for a 4th in bf16;
  // in place, a staging area of 4 boxes a warpgroup (64 KB) takes the room of the 4th, 1 box does not
  static_assert(kBoxes == 1 || kBoxes == 4, "staging of 1 or 4 boxes");
  static constexpr int kOutBoxes = kBoxes;
  static constexpr int kSlots = (kInPlace && (!kTmaOut || kBoxes == 1)) || (B::kNf4 && kP == Precision::kBf16) ? 4 : 3;
  static constexpr int kStagingBytes = kTmaOut ? kConsumers / 128 * kBoxes * kOutBoxBytes : 0;
  // stages in flight (being copied) ahead of the rounding; in place, the ring's other slots
  static constexpr int kAhead = kInPlace ? kSlots - 1 : 3;
  static constexpr int kRawPitch = 128, kRawBytes = kBM * kRawPitch + B::kRawBytes;
  static_assert(kRawBytes % 1024 == 0, "stages stay 1024-byte aligned for the swizzles");
  static constexpr int kElemBytes = kP == Precision::kTf32 ? 4 : 2;
  static constexpr int kPitch = kBK * kElemBytes;  // math rows: 128 (tf32) or 64 (bf16) bytes
  static constexpr int kBytes = kRows * kPitch;
  static constexpr int kMathOffset = kInPlace ? 0 : kSlots * kRawBytes;
  static constexpr int kStagingOffset = kMathOffset + kSlots * kBytes;
  static constexpr int kBarrierOffset = kStagingOffset + kStagingBytes;
  static constexpr int kPlanOffset = kBarrierOffset + 4 * kSlots * sizeof(uint64_t);  // a copy of the plan may follow
  static constexpr size_t kSmemBytes = kPlanOffset + 1024;  // + alignment slack
  static constexpr uint64_t kLayoutType = kPitch == 128 ? 1 : 2;     // descriptor: 128 B / 64 B swizzle
  static constexpr int kStepDepth = kP == Precision::kTf32 ? 8 : 16;              // r per wgmma: 32 bytes either way

  __device__ static uint8_t* raw(uint8_t* smem, int slot) { return smem + slot * kRawBytes; }
  __device__ static uint8_t* math(uint8_t* smem, int slot) { return smem + kMathOffset + slot * kBytes; }
  __device__ static uint64_t* barriers(uint8_t* smem) { return reinterpret_cast<uint64_t*>(smem + kBarrierOffset); }
  __device__ static uint8_t* staging(uint8_t* smem) { return smem + kStagingOffset; }
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
__device__ __forceinline__ bool mbar_test(uint64_t* bar, uint32_t parity) {  // mbar_wait without waiting
  uint32_t done;
  asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
               : "=r"(done)
               : "r"(smem_addr(bar)), "r"(parity)
               : "memory");
  return done;
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

// Shared src → the box of `map` at (c0, c1), in a bulk async group of this thread.
__device__ __forceinline__ void tma_store(const CUtensorMap* map, const uint8_t* src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(map),
               "r"(smem_addr(src)), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until this thread's bulk groups have read their shared sources.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }

// The box of a 3-d `map` at (c0, c1, c2) → shared dst, completing on bar.
__device__ __forceinline__ void tma_load_3d(uint8_t* dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          smem_addr(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
      : "memory");
}

// Moves registers between warpgroups (setmaxnreg): the launch gives each thread 168 (65536 / 384,
// rounded down to 8); kBRegs kernels need more for the consumers (accumulators and B's registers;
// at 168 ptxas serializes their wgmma) than for the producers, which only copy or transpose A:
// 128 · 88 + 256 · 208 = 384 · 168 (at 56 or 72 the producers of dW spill).
constexpr int kProducerRegs = 88, kConsumerRegs = 208;
static_assert(kProducers * kProducerRegs + kConsumers * kConsumerRegs <= kThreads * 168, "the launch's registers");
template <bool kIncrease, int kCount>
__device__ __forceinline__ void set_max_registers() {
  if constexpr (kIncrease)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kCount));
  else
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kCount));
}

// Barrier 1 of the block, for the producer warpgroup alone (barrier 0 is __syncthreads).
__device__ __forceinline__ void producer_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kProducers) : "memory"); }

// Keeps the compiler from moving accesses of acc across the asynchronous wgmma that writes it.
__device__ __forceinline__ void fence_acc(float (&acc)[kAcc]) {
#pragma unroll
  for (int i = 0; i < kAcc; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}

#define MOE_ACC8(i)                                                                                          \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define MOE_ACC64(o)                                                                                          \
  MOE_ACC8(o), MOE_ACC8(o + 8), MOE_ACC8(o + 16), MOE_ACC8(o + 24), MOE_ACC8(o + 32), MOE_ACC8(o + 40),         \
      MOE_ACC8(o + 48), MOE_ACC8(o + 56)
#define MOE_ACC128 MOE_ACC64(0), MOE_ACC64(64)
#define MOE_D64                                                                                               \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "  \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "   \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
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

// acc[64h ..] (+)= A · Bᵀ, tf32, for A 64 × 8 in registers (a: rows l/4, l/4 + 8 of the warp's
// 16 at r = l%4, then at r = l%4 + 4) and B 128 × 8 at descriptor b; accumulator layout as
// wgmma's above with 8q < 128.
template <int kHalf>
__device__ __forceinline__ void wgmma_rs(float (&acc)[kAcc], const uint32_t (&a)[4], uint64_t b, int accumulate) {
  float* const d = acc + 64 * kHalf;
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " MOE_D64
               ", {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
               : MOE_ACC64(0)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}
// acc[64h ..] (+)= A · Bᵀ, tf32, for A 64 × 8 and B 128 × 8 at descriptors a, b (the ping-pong
// forward's halves of a 128 × 128 tile, gemm_sm90_pingpong.cuh); layout as wgmma_rs's.
template <int kHalf>
__device__ __forceinline__ void wgmma_ss(float (&acc)[kAcc], uint64_t a, uint64_t b, int accumulate) {
  float* const d = acc + 64 * kHalf;
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " MOE_D64 ", %64, %65, p, 1, 1;\n}\n"
               : MOE_ACC64(0)
               : "l"(a), "l"(b), "r"(accumulate));
}
#undef MOE_D64
#undef MOE_D128
#undef MOE_ACC128
#undef MOE_ACC64
#undef MOE_ACC8

// ---------------------------------------------------------------------------------------------
// One tile's work: C = A · Bᵀ over r < depth (may be 0: C = 0) into c[i·ldc + j] for i < rows,
// j < cols. A K-major operand is rows a_row.. (b_row..) of a [rows, depth] TMA tensor at r (boxes
// 32 × kBM or 32 × kBN); rows past the tile (another expert's, or past the tensor: zeros) only
// reach outputs that are not stored, r past the depth reads zeros. An MN-major operand is columns
// a_row.. (b_row..) of rows r0 + r of slice `expert` of a [experts, rows, columns] tensor (boxes
// 32 columns × 32 r × 1); rows past r0 + depth are zeros (dX: past K) or another expert's (dW:
// the producers zero them).
// Boxes are float32, 128-byte swizzled.
struct TileJob {
  int a_row, b_row, expert, r0, depth;
  float* c;
  int64_t ldc;
  int rows, cols;
  int c_row = 0, c_col = 0;  // the tile's first row and column in map_c, for TMA stores
};

// Producer p's 16-byte pieces of the first kCount · kRowStep rows of a landed raw stage, row
// for row: load_rows reads them, store_rows writes them rounded into the math stage; convert_rows
// does both, kBatch loads in flight at a time.
template <int kCount>
__device__ __forceinline__ void load_rows(const uint8_t* raw, int p, uint4 (&v)[kCount]) {
  const uint32_t offset = swizzle<128>(p / 8 * 128 + p % 8 * 16);
#pragma unroll
  for (int q = 0; q < kCount; ++q) v[q] = *reinterpret_cast<const uint4*>(raw + offset + q * kRowStep * 128);
}

template <Precision kP, int kCount>
__device__ __forceinline__ void store_rows(uint8_t* math, int p, const uint4 (&v)[kCount]) {
  using L = Layout<kP>;
  const uint32_t offset = swizzle<L::kPitch>(p / 8 * L::kPitch + p % 8 * 4 * L::kElemBytes);
#pragma unroll
  for (int q = 0; q < kCount; ++q) {
    uint8_t* dst = math + offset + q * kRowStep * L::kPitch;
    if constexpr (kP == Precision::kTf32)
      *reinterpret_cast<uint4*>(dst) = make_uint4(to_tf32(v[q].x), to_tf32(v[q].y), to_tf32(v[q].z), to_tf32(v[q].w));
    else
      *reinterpret_cast<uint2*>(dst) = make_uint2(to_bf16x2(v[q].x, v[q].y), to_bf16x2(v[q].z, v[q].w));
  }
}

template <Precision kP, int kCount>
__device__ __forceinline__ void convert_rows(const uint8_t* raw, uint8_t* math, int p) {
  constexpr int kBatch = kCount < 8 ? kCount : 8;
  static_assert(kCount % kBatch == 0, "whole batches");
#pragma unroll
  for (int q0 = 0; q0 < kCount; q0 += kBatch) {
    uint4 v[kBatch];
    load_rows(raw + q0 * kRowStep * 128, p, v);
    store_rows<kP>(math + q0 * kRowStep * Layout<kP>::kPitch, p, v);
  }
}

__device__ __forceinline__ uint32_t lane_of(const uint4& v, int q) { return q == 0 ? v.x : q == 1 ? v.y : q == 2 ? v.z : v.w; }

// An MN-major operand → K-major. The raw stage holds it as kBoxes boxes of 32 r-rows × 32 j (box
// b: j in [32b, 32b + 32), r-row i at byte 128·i, 16-byte chunk c at c ^ (i % 8)); the math stage
// wants row j with its r contiguous. Producer p moves kBoxes / 2 blocks of 4 r × 4 j, transposing
// them in registers: block (b, rb, jc) is r in [4rb, 4rb + 4), j in 32b + [4jc, 4jc + 4), with
// jc = p % 8, rb = (jc + p / 8) % 8, b = p / 64 + 2i. Then a quarter-warp's 8 loads and 8 stores
// each hit 8 distinct 16-byte bank groups of both swizzled layouts (checked by enumeration; bf16:
// lanes of odd p / 8 store their 4 rows in the order 1, 0, 3, 2, so that the two quarter-warps of
// a half-warp's 8-byte stores use different halves of the 128 bytes). tf32 (dW's A) transposes in place:
// box b's 4 KB become exactly the 32 K-major rows of its columns, so the producers load all their
// blocks, meet at a barrier, then store (convert).
template <int kBoxes>
using Blocks = uint4[kBoxes / 2][4];  // [i][q]: r = 4rb + q, j = 32b + 4jc + (x, y, z, w)

// Loads producer p's blocks; kMask: r ≥ valid becomes 0.
template <int kBoxes, bool kMask>
__device__ __forceinline__ void load_blocks(const uint8_t* raw, int p, int valid, Blocks<kBoxes>& v) {
  const int jc = p % 8, rb = (jc + p / 8) % 8;
#pragma unroll
  for (int i = 0; i < kBoxes / 2; ++i)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      v[i][q] = *reinterpret_cast<const uint4*>(raw + (p / 64 + 2 * i) * 4096 + swizzle<128>((4 * rb + q) * 128 + jc * 16));
      if (kMask && 4 * rb + q >= valid) v[i][q] = make_uint4(0, 0, 0, 0);
    }
}

// Rounds and stores producer p's blocks, transposed, as K-major rows of the math stage.
template <Precision kP, int kBoxes>
__device__ __forceinline__ void store_blocks(uint8_t* math, int p, const Blocks<kBoxes>& v) {
  const int jc = p % 8, rb = (jc + p / 8) % 8, flip = p / 8 % 2;
#pragma unroll
  for (int i = 0; i < kBoxes / 2; ++i) {
    const int j0 = (p / 64 + 2 * i) * 32 + 4 * jc;
    uint4 t[4];  // t[q]: row j0 + q, r = 4rb .. 4rb + 3
#pragma unroll
    for (int q = 0; q < 4; ++q)
      t[q] = make_uint4(lane_of(v[i][0], q), lane_of(v[i][1], q), lane_of(v[i][2], q), lane_of(v[i][3], q));
    if constexpr (kP == Precision::kTf32) {  // rounded already, by the TMA unit (see Layout)
#pragma unroll
      for (int q = 0; q < 4; ++q) *reinterpret_cast<uint4*>(math + swizzle<128>((j0 + q) * 128 + rb * 16)) = t[q];
    } else {
      uint2 h[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) h[q] = make_uint2(to_bf16x2(t[q].x, t[q].y), to_bf16x2(t[q].z, t[q].w));
#pragma unroll
      for (int q = 0; q < 4; ++q)
        *reinterpret_cast<uint2*>(math + swizzle<64>((j0 + (q ^ flip)) * 64 + rb * 8)) = flip ? h[q ^ 1] : h[q];
    }
  }
}

// Producer p's share of a landed raw stage (A's kBM rows, then B's kBN) into its math stage:
// bf16 rounds every operand; tf32 (in place, rounded by the TMA unit) transposes those it is
// given as MN-major (dW's A) and leaves the others as they landed. valid = the depth left at this
// stage (dW: r past it is another expert's and is masked). MN-major operands: all loads, (tf32)
// one barrier of the producers, then the stores.
template <Precision kP, bool kAMN, bool kBMN>
__device__ __forceinline__ void convert(const uint8_t* raw, uint8_t* math, int p, int valid) {
  using L = Layout<kP>;
  const uint8_t* raw_b = raw + kBM * L::kRawPitch;
  uint8_t* math_b = math + kBM * L::kPitch;
  Blocks<kAMN ? kBM / 32 : 2> va;
  Blocks<kBMN ? kBN / 32 : 2> vb;
  if constexpr (kAMN)
    load_blocks<kBM / 32, true>(raw, p, valid, va);
  else if constexpr (!L::kInPlace)
    convert_rows<kP, kBM / kRowStep>(raw, math, p);
  if constexpr (kBMN)
    load_blocks<kBN / 32, kAMN>(raw_b, p, valid, vb);
  else if constexpr (!L::kInPlace)
    convert_rows<kP, kBN / kRowStep>(raw_b, math_b, p);
  if constexpr (L::kInPlace && (kAMN || kBMN)) producer_sync();
  if constexpr (kAMN) store_blocks<kP, kBM / 32>(math, p, va);
  if constexpr (kBMN) store_blocks<kP, kBN / 32>(math_b, p, vb);
}

// Bytes of one operand's part of a stage: K-major, one box of kRowsOp rows; MN-major, the boxes of
// 32 columns that reach the extent (boxes wholly past it are skipped: they reach only outputs that
// are not stored).
template <bool kMN, int kRowsOp>
__device__ __forceinline__ uint32_t operand_bytes(int extent) {
  return (kMN ? min(kRowsOp, (extent + 31) / 32 * 32) : kRowsOp) * 128;
}

// Copies one operand's part of a stage at depth r (`bytes` of it) into dst, completing on bar:
// K-major, rows from `row`; MN-major, columns from `row` at rows r0 + r of slice `expert`.
template <bool kMN>
__device__ __forceinline__ void load_operand(uint8_t* dst, const CUtensorMap* map, const TileJob& job, int row,
                                             uint32_t bytes, int r, uint64_t* bar) {
  if constexpr (kMN)
    for (uint32_t b = 0; b < bytes / 4096; ++b) tma_load_3d(dst + 4096 * b, map, row + 32 * b, job.r0 + r, job.expert, bar);
  else
    tma_load(dst, map, r, row, bar);
}

// Stores C(i, j) = acc (kZero: 0, a tile of depth 0; zeroing acc itself made ptxas spill it) for
// i < rows, j < cols at c[i·ldc + j], straight from the registers as float2 (needs cols and ldc
// even, c 8-byte aligned): a warp writes 8 rows × 32 bytes at a time. The warpgroup's part of the
// tile: rows [64g, 64g + 64) × 256 columns, or (kOwnTile, the ping-pong forward) the whole 128 ×
// 128 tile, acc[64h ..] holding rows [64h, 64h + 64).
template <bool kZero, bool kOwnTile = false>
__device__ __forceinline__ void store_tile(const float (&acc)[kAcc], const TileJob& job) {
  const int lane = threadIdx.x % 32;
  const int i = (kOwnTile ? 0 : threadIdx.x / 128 * 64) + threadIdx.x % 128 / 32 * 16 + lane / 4;
  const int j = lane % 4 * 2;
#pragma unroll
  for (int q = 0; q < kAcc / 4; ++q) {
    const int row = i + (kOwnTile ? q / 16 * 64 : 0), col = j + 8 * (kOwnTile ? q % 16 : q);
    if (col >= job.cols) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (row + 8 * h < job.rows)
        *reinterpret_cast<float2*>(job.c + (row + 8 * h) * job.ldc + col) =
            kZero ? make_float2(0.f, 0.f) : make_float2(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
  }
}

// The consumers' barrier (barrier 2; 1 is the producers'), and consumer warpgroup g's own (3 + g).
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 2, %0;\n" ::"n"(kConsumers) : "memory"); }
__device__ __forceinline__ void warpgroup_sync() {
  asm volatile("bar.sync %0, 128;\n" ::"r"(3 + threadIdx.x / 128) : "memory");
}

// Byte offset of (row i < 64, column j < 32·kBoxes) in a warpgroup's kBoxes · 8 KB of staging:
// boxes of 64 rows × 32 columns, 128-byte swizzled as the TMA map reads them (16-byte chunk c of
// row i at c ^ (i % 8)).
__device__ __forceinline__ int staged_at(int i, int j) {
  return j / 32 * kOutBoxBytes + i * 128 + ((j % 32 / 4) ^ (i % 8)) * 16 + j % 4 * 4;
}

// A tile by TMA stores into map_c, in rounds of kBoxes boxes of 64 rows × 32 columns a warpgroup
// (its 64 × 256 or 128 × 128 outputs: 8 boxes) through its kBoxes · 8 KB of staging: fill(round,
// buf) writes the round's values (staged_at), then thread 0 of the warpgroup stores the boxes that
// reach the tile's columns, at map_c's (c_col + col0 + 32·box, c_row + row0) for (row0, col0) =
// at(round). Before a round rewrites the staging, thread 0 waits until the stores before have read
// it. The consumers then go on to the next tile while the stores drain (against direct stores and
// a 4th slot: cuda/NOTES.md, tenth section).
template <int kBoxes = 4, class Fill, class At>
__device__ __forceinline__ void store_tile_tma(const TileJob& job, uint8_t* staging, const CUtensorMap* map_c,
                                               const Fill& fill, const At& at) {
  uint8_t* const buf = staging + threadIdx.x / 128 * kBoxes * kOutBoxBytes;
  const bool leader = threadIdx.x % 128 == 0;
#pragma unroll
  for (int round = 0; round < 8 / kBoxes; ++round) {
    if (leader) bulk_wait_read();
    warpgroup_sync();
    fill(round, buf);
    fence_proxy_async();
    warpgroup_sync();
    if (leader) {
      const int2 rc = at(round);
      for (int box = 0; box < kBoxes; ++box)
        if (rc.y + 32 * box < job.cols)
          tma_store(map_c, buf + box * kOutBoxBytes, job.c_col + rc.y + 32 * box, job.c_row + rc.x);
      bulk_commit();
    }
  }
}

// Round `round` over a warpgroup's own 128 × 128 outputs (the ping-pong tile, the transposed tile) in
// boxes of kBoxes: (half, col0) = rows [64·half, 64·half + 64), columns from col0.
template <int kBoxes>
__device__ __forceinline__ int2 square_round(int round) {
  constexpr int kPerHalf = 4 / kBoxes;  // rounds a 64-row half
  return make_int2(round / kPerHalf, 32 * kBoxes * (round % kPerHalf));
}

// The forward's tile (rows == kBM): warpgroup g's 64 rows, 32·kBoxes columns a round, or
// (kOwnTile) its own 128 × 128 tile, rows [64h, 64h + 64) and 32·kBoxes columns a round; either
// way acc[4q ..] holds columns 8q.. of the 64 rows (a warp's float2 writes of 8 rows meet distinct
// bank groups).
template <bool kOwnTile = false, int kBoxes = 4>
__device__ __forceinline__ void store_tile_tma(const float (&acc)[kAcc], const TileJob& job, uint8_t* staging,
                                               const CUtensorMap* map_c) {
  const int t = threadIdx.x % 128, lane = t % 32;
  const auto at = [&](int round) {
    const int2 hc = square_round<kBoxes>(round);
    return kOwnTile ? make_int2(64 * hc.x, hc.y) : make_int2(threadIdx.x / 128 * 64, 32 * kBoxes * round);
  };
  store_tile_tma<kBoxes>(job, staging, map_c, [&](int round, uint8_t* buf) {
    const int2 rc = at(round);
    const int first = (kOwnTile ? rc.x / 4 : 0) + rc.y / 8;  // acc[4·first ..]: the round's first columns
#pragma unroll
    for (int q = 0; q < 4 * kBoxes; ++q)  // columns at(round).y + 8q + 2·(l%4) + {0, 1}, as wgmma's layout
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int a = 4 * (first + q) + 2 * h;
        *reinterpret_cast<float2*>(buf + staged_at(t / 32 * 16 + lane / 4 + 8 * h, 8 * q + lane % 4 * 2)) =
            make_float2(acc[a], acc[a + 1]);
      }
  }, at);
}

// store_tile through shared memory (c 16-byte aligned, ldc and cols multiples of 4, as every
// sm_90a launch has: grouped_gemm.cu takes this path only with out_vec4): each warp writes its
// 16 rows × 32 columns at a time into its part of `staging` (rows of 144 bytes: a float2 write of
// 8 rows falls on distinct bank pairs), reads them back as 4 rows × 128 bytes per float4 load and
// stores those. A warp's store then covers 4 whole 128-byte lines instead of 8 rows × 32 bytes:
// 4× fewer line writes through the load/store pipe, which the producers' rounding shares.
constexpr int kStagePitch = 144, kStageBytes = kConsumers / 32 * 16 * kStagePitch;
__device__ __forceinline__ void store_tile_staged(const float (&acc)[kAcc], const TileJob& job, uint8_t* staging) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = warp / 4 * 64 + warp % 4 * 16;  // the warp's first row
  uint8_t* const mine = staging + warp * 16 * kStagePitch;
#pragma unroll
  for (int chunk = 0; chunk < kBN / 32; ++chunk) {
    if (32 * chunk >= job.cols) break;
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int a = 4 * (4 * chunk + q) + 2 * h;
        *reinterpret_cast<float2*>(mine + (lane / 4 + 8 * h) * kStagePitch + (8 * q + lane % 4 * 2) * 4) =
            make_float2(acc[a], acc[a + 1]);
      }
    __syncwarp();
    const int col = 32 * chunk + lane % 8 * 4;
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      const int r = step * 4 + lane / 8;
      const float4 v = *reinterpret_cast<const float4*>(mine + r * kStagePitch + lane % 8 * 16);
      if (row0 + r < job.rows && col < job.cols) *reinterpret_cast<float4*>(job.c + (row0 + r) * job.ldc + col) = v;
    }
    __syncwarp();
  }
}

// ---------------------------------------------------------------------------------------------
// tf32 with B MN-major (dX, dW): the consumers load B from the raw stage into registers, as
// wgmma's A operand, and compute the tile transposed, Cᵀ(j, i) = Σ_r B(j, r) · A(i, r), with A's
// kBM rows, K-major in shared memory (dW's once the producers transposed them in place), as
// wgmma's B (n = 128). No transpose of B is needed: warpgroup g takes B's columns [128g, 128g +
// 128) as two m64 halves. Warp w's 16 wgmma rows of a half are columns 32·(w / 2) + [0, 32) of the
// half: lane l holds rows l/4 and l/4 + 8, which are chosen as the adjacent columns 4c + 2·(l/4 %
// 2) + {0, 1} of 16-byte chunk c = 2·(w % 2) + l/16 + 4·(l/8 % 2), so that one 8-byte load fetches
// both. At r = 8s + l%4 (then + 4) the half-warp's 4 rows then meet 8 distinct chunks of the
// 128-byte swizzle: conflict-free loads.
__device__ __forceinline__ int column_of(int half) {  // the first of this thread's two columns
  const int warp = threadIdx.x % 128 / 32, g = threadIdx.x % 32 / 4;
  const int chunk = 2 * (warp % 2) + g / 4 + 4 * (g % 4 / 2);
  return threadIdx.x / 128 * 128 + half * 64 + warp / 2 * 32 + chunk * 4 + g % 2 * 2;
}

// Byte offsets in a stage's B part (boxes of 32 columns × 32 r, 128-byte swizzled) of this
// thread's two columns (column_of) at r = l%4 + 4u of half h: at[h][u]; step s adds 1024 bytes.
__device__ __forceinline__ void fragment_offsets(uint32_t (&at)[2][2]) {
  for (int h = 0; h < 2; ++h)
    for (int u = 0; u < 2; ++u) {
      const int j = column_of(h), r = threadIdx.x % 4 + 4 * u;
      at[h][u] = j / 32 * 4096 + swizzle<128>(r * 128 + j % 32 * 4);
    }
}

// This thread's registers of B for step s (r = 8s .. 8s + 7) of a landed stage's B part, at the
// offsets `at` (fragment_offsets); kMask: r ≥ valid reads 0 (dW: another expert's rows).
template <bool kMask>
__device__ __forceinline__ void load_fragment(const uint8_t* b_part, const uint32_t (&at)[2][2], int step, int valid,
                                              uint32_t (&a)[2][4]) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      uint2 v = *reinterpret_cast<const uint2*>(b_part + at[h][u] + step * 1024);
      if (kMask && 8 * step + 4 * u + t >= valid) v = make_uint2(0, 0);
      a[h][2 * u] = v.x, a[h][2 * u + 1] = v.y;
    }
}

// Stores the transposed tile: C(i, j) = acc of wgmma row j (column_of), column i, for i < rows,
// j < cols (cols a multiple of 4, so both of a thread's columns are in or out).
__device__ __forceinline__ void store_tile_transposed(const float (&acc)[kAcc], const TileJob& job) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int j = column_of(h);
    if (j >= job.cols) continue;
#pragma unroll
    for (int q = 0; q < kBM / 8; ++q)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int i = 8 * q + 2 * t + e;
        const int a = 64 * h + 4 * q + e;
        if (i < job.rows) *reinterpret_cast<float2*>(job.c + i * job.ldc + j) = make_float2(acc[a], acc[a + 2]);
      }
  }
}

// The transposed tile (rows == kBM) by TMA stores: warpgroup g's columns [128g, 128g + 128)
// (column_of), 32·kBoxes of them for 64 rows a round (with 1 box, the threads holding the round's
// columns fill it, a quarter of them).
template <int kBoxes = 4>
__device__ __forceinline__ void store_tile_tma_transposed(const float (&acc)[kAcc], const TileJob& job,
                                                          uint8_t* staging, const CUtensorMap* map_c) {
  const int t = threadIdx.x % 4;
  const auto at = [&](int round) {
    const int2 hc = square_round<kBoxes>(round);
    return make_int2(64 * hc.x, threadIdx.x / 128 * 128 + hc.y);
  };
  store_tile_tma<kBoxes>(job, staging, map_c, [&](int round, uint8_t* buf) {
    const int2 hc = square_round<kBoxes>(round);  // rows of half hc.x, columns from hc.y
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = column_of(h) % 128 - hc.y;
      if (j < 0 || j >= 32 * kBoxes) continue;
#pragma unroll
      for (int q = 0; q < 8; ++q)  // rows 64·hc.x + 8q + 2t + e
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int a = 64 * h + 4 * (8 * hc.x + q) + e;
          *reinterpret_cast<float2*>(buf + staged_at(8 * q + 2 * t + e, j)) = make_float2(acc[a], acc[a + 2]);
        }
    }
  }, at);
}

// ---------------------------------------------------------------------------------------------
// A persistent block's stream: tiles blockIdx.x, blockIdx.x + gridDim.x, … < num_tiles, job(tile)
// giving each one's operands, depth and output (TileJob; A, B MN-major when kAMN, kBMN; kTmaOut:
// tiles of kBM rows leave by TMA stores into map_c through kOutBoxes boxes a warpgroup,
// store_tile_tma: the tf32 forward, dX, dW). The stream's stages are the tiles' num_k = ⌈depth /
// 32⌉ stages in order (tiles of depth 0 have none and store zeros); stage s is in slot s % kSlots,
// on pass s / kSlots over the ring. B comes from B (FloatB: float32 boxes of map_b, rounded;
// Nf4Stages: NF4 codes of map_b and absmax of map_s, decoded).
// smem: Layout<kP, B, kTmaOut, kOutBoxes>::kSmemBytes − 1024 bytes, 1024-byte aligned.
//
// Producers, stage s: wait on raw_full; (not in place) wait on empty for stage s − kSlots, whose
// math slot it takes; round, transpose or decode, fence.proxy.async, arrive on full (and on
// raw_empty). Then the leader copies stage s + kAhead once its slot is free: (in place, kAhead =
// kSlots − 1) the consumers released stage s − 1 (empty), (else) every producer has rounded stage
// s + kAhead − kSlots (raw_empty). tf32 with A K-major (forward, dX) leaves the producers nothing to do: the leader
// copies stage s once the consumers released stage s − kSlots, and the consumers wait on raw_full
// instead of full. Consumers, stage s: wait on full; wgmma (async); wait for their wgmma of stage
// s − 1 and release it (empty); at a tile's end wait for all, release stage s, store the tile. In
// place, a slot is also the next copy's landing place, so the consumers wait for stage s's own
// wgmma and release s at once: holding a finished stage while stage s + 1 is still in flight
// would leave one of the kSlots copies unissued (1.04–1.12× for tf32 dX and dW when they ran
// here; the forward unchanged). tf32 with B MN-major (dX, dW; kBRegs) moves registers from the
// producers to the consumers and runs the transposed tile (column_of): per 8 deep, load B's
// registers, wgmma both halves, and wait for the wgmma of the step before, whose registers the
// next step reloads (H200, M = 65536, against the in-place transpose of B: dX 1.28–1.30×, dW
// 1.05×). There stage s − 1 is released once its last wgmma is done, which the wait of stage s's
// first step tells, if stage s had landed; if not, before waiting for it (dW 1.05×, dX
// unchanged). Every wait is for the phase of the slot's current pass; a pass-0 wait on a barrier
// that guards a free slot asks for parity 1 and returns at once.
template <Precision kP, bool kAMN, bool kBMN, bool kTmaOut = false, int kOutBoxes = 4, class Job, class B = FloatB>
__device__ __forceinline__ void run_tiles(uint8_t* smem, int64_t num_tiles, const Job& job, const CUtensorMap* map_a,
                                          const CUtensorMap* map_b, const B& b_source = B{},
                                          const CUtensorMap* map_s = nullptr, const CUtensorMap* map_c = nullptr) {
  using L = Layout<kP, B, kTmaOut, kOutBoxes>;
  // tf32 with B MN-major: the consumers read B into registers (load_fragment), untransposed, so
  // only bf16 and NF4 (not in place) transpose B.
  constexpr bool kBRegs = L::kInPlace && kBMN;
  // tf32 with A K-major: the stages are ready as they land, nothing for the producers to do but
  // copy; the consumers wait on raw_full.
  constexpr bool kCopyOnly = L::kInPlace && !kAMN;
  const auto num_k = [](const TileJob& t) { return (t.depth + kBK - 1) / kBK; };
  const int stride = gridDim.x;
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
    if constexpr (kBRegs) set_max_registers<false, kProducerRegs>();
    const int p = threadIdx.x - kConsumers;
    const bool leader = p == 0;
    // The copy cursor: stage copy_k of tile copy_tile, the next to copy; copy_tile ≥ num_tiles at the end.
    int64_t copy_tile = blockIdx.x;
    int copy_k = 0;
    TileJob copy_job;
    const auto seek = [&] {  // from copy_tile on, the first tile with stages left
      for (; copy_tile < num_tiles; copy_tile += stride, copy_k = 0) {
        copy_job = job(copy_tile);
        if (copy_k < num_k(copy_job)) return;
      }
    };
    const auto copy = [&](int slot) {  // the cursor's stage → raw slot (leader), then step on (all)
      if (leader) {
        uint8_t* raw = L::raw(smem, slot);
        const int r = copy_k * kBK;
        const uint32_t a_bytes = operand_bytes<kAMN, kBM>(copy_job.rows);
        const uint32_t b_bytes = B::kNf4 ? B::kRawBytes : operand_bytes<kBMN, kBN>(copy_job.cols);
        mbar_arrive_expect_tx(&raw_full[slot], a_bytes + b_bytes);
        load_operand<kAMN>(raw, map_a, copy_job, copy_job.a_row, a_bytes, r, &raw_full[slot]);
        if constexpr (B::kNf4)
          b_source.copy(raw + kBM * L::kRawPitch, map_b, map_s, copy_job, r, &raw_full[slot]);
        else
          load_operand<kBMN>(raw + kBM * L::kRawPitch, map_b, copy_job, copy_job.b_row, b_bytes, r, &raw_full[slot]);
      }
      if (++copy_k == num_k(copy_job)) copy_tile += stride, copy_k = 0, seek();
    };
    seek();
    if constexpr (kCopyOnly) {  // the leader copies stage s once the consumers released stage s − kSlots;
      if (p < 32)               // its whole warp walks the tiles with it (job's expert search is warp-wide)
        for (int slot = 0, pass = 0; copy_tile < num_tiles;) {
          mbar_wait(&empty[slot], (pass & 1) ^ 1);
          copy(slot);
          if (++slot == L::kSlots) slot = 0, ++pass;
        }
    } else {
      for (int t = 0; t < L::kAhead && copy_tile < num_tiles; ++t) copy(t);
      int slot = 0, ahead = L::kAhead % L::kSlots;  // slots of stages s and s + kAhead
      uint32_t pass = 0, ahead_pass = L::kAhead / L::kSlots;
      for (int64_t tile = blockIdx.x; tile < num_tiles; tile += stride) {
        const TileJob cur = job(tile);
        for (int k = 0; k < num_k(cur); ++k) {
          mbar_wait(&raw_full[slot], pass & 1);
          if (!L::kInPlace) mbar_wait(&empty[slot], (pass & 1) ^ 1);
          if constexpr (B::kNf4) {  // A's loads are in flight while B decodes
            uint4 a[kBM / kRowStep];
            load_rows(L::raw(smem, slot), p, a);
            b_source.template decode<kP>(L::raw(smem, slot) + kBM * L::kRawPitch, L::math(smem, slot) + kBM * L::kPitch, p,
                                         k * kBK);
            store_rows<kP>(L::math(smem, slot), p, a);
          } else {
            convert<kP, kAMN, kBMN && !kBRegs>(L::raw(smem, slot), L::math(smem, slot), p, cur.depth - k * kBK);
          }
          fence_proxy_async();
          mbar_arrive(&full[slot]);
          if (!L::kInPlace) mbar_arrive(&raw_empty[slot]);
          if (copy_tile < num_tiles) {
            if (leader) mbar_wait(L::kInPlace ? &empty[ahead] : &raw_empty[ahead], (ahead_pass & 1) ^ 1);
            copy(ahead);
          }
          if (++slot == L::kSlots) slot = 0, ++pass;
          if (++ahead == L::kSlots) ahead = 0, ++ahead_pass;
        }
      }
    }
    return;
  }

  // Consumers.
  if constexpr (kBRegs) set_max_registers<true, kConsumerRegs>();
  const int wg_rows = threadIdx.x / 128 * 64 * L::kPitch;  // this warpgroup's rows of A
  uint32_t at[2][2];  // kBRegs: where this thread's B registers lie in a stage
  if constexpr (kBRegs) fragment_offsets(at);
  float acc[kAcc];
  fence_acc(acc);
  int slot = 0, prev = 0;
  uint32_t pass = 0;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += stride) {
    const TileJob out = job(tile);
    const int nk = num_k(out);
    if (nk == 0) {  // before the loop: a path that may read acc without a wgmma makes ptxas serialize them (C7518)
      store_tile<true>(acc, out);
      continue;
    }
    if constexpr (kBRegs) {
      uint32_t a[2][2][4];  // [step % 2]: step s's registers are reloaded at s + 2
      for (int k = 0; k < nk; ++k) {
        uint64_t* const ready = kCopyOnly ? &raw_full[slot] : &full[slot];
        bool held = k > 0;  // stage k − 1, whose last wgmma may still run
        if (held && !mbar_test(ready, pass & 1)) {  // not landed: release k − 1 before waiting
          wgmma_wait<0>();
          mbar_arrive(&empty[prev]);
          held = false;
        }
        mbar_wait(ready, pass & 1);
        const uint8_t* stage = L::math(smem, slot);
        const uint64_t desc_a = make_desc<kP>(stage);
        const int valid = out.depth - k * kBK;
#pragma unroll
        for (int step = 0; step < kBK / 8; ++step) {
          load_fragment<kAMN>(stage + kBM * L::kPitch, at, step, valid, a[step % 2]);
          wgmma_fence();
          wgmma_rs<0>(acc, a[step % 2][0], desc_a + 2 * step, k > 0 || step > 0);
          wgmma_rs<1>(acc, a[step % 2][1], desc_a + 2 * step, k > 0 || step > 0);
          wgmma_commit();
          wgmma_wait<1>();
          if (step == 0 && held) mbar_arrive(&empty[prev]);
        }
        prev = slot;
        if (++slot == L::kSlots) slot = 0, ++pass;
      }
      wgmma_wait<0>();
      mbar_arrive(&empty[prev]);
      fence_acc(acc);
      if (kTmaOut && out.rows == kBM)
        store_tile_tma_transposed<kOutBoxes>(acc, out, L::staging(smem), map_c);
      else
        store_tile_transposed(acc, out);
      continue;
    }
    for (int k = 0; k < nk; ++k) {
      mbar_wait(kCopyOnly ? &raw_full[slot] : &full[slot], pass & 1);
      const uint8_t* stage = L::math(smem, slot);
      const uint64_t desc_a = make_desc<kP>(stage + wg_rows), desc_b = make_desc<kP>(stage + kBM * L::kPitch);
      wgmma_fence();
#pragma unroll
      for (int step = 0; step < kBK / L::kStepDepth; ++step)  // 32 bytes deeper each: +2 in 16-byte units
        wgmma<kP>(acc, desc_a + 2 * step, desc_b + 2 * step, k > 0 || step > 0);
      wgmma_commit();
      if constexpr (L::kInPlace) {
        wgmma_wait<0>();
        mbar_arrive(&empty[slot]);
      } else {
        wgmma_wait<1>();
        if (k > 0) mbar_arrive(&empty[prev]);
      }
      prev = slot;
      if (++slot == L::kSlots) slot = 0, ++pass;
    }
    wgmma_wait<0>();
    fence_acc(acc);
    // Stage s's math slot stages the tile once both warpgroups' wgmma are done with it; not in
    // place, where that slot is also the raw slot the next copies wait for (measured: −15 % tf32).
    if constexpr (!L::kInPlace) {
      static_assert(kStageBytes <= L::kBytes, "the staging fits a math slot");
      consumer_sync();
      store_tile_staged(acc, out, L::math(smem, prev));
      mbar_arrive(&empty[prev]);
    } else if (kTmaOut && out.rows == kBM) {  // every stage released already
      store_tile_tma<false, kOutBoxes>(acc, out, L::staging(smem), map_c);
    } else {
      store_tile<false>(acc, out);
    }
  }
  if (kTmaOut && threadIdx.x % 128 == 0) bulk_wait_read();  // the staging must outlive the stores' reads
}

}  // namespace moe::cuda::gemm::sm90
