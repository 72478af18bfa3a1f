// Tile math of the grouped GEMMs for sm_80 and later: C[i, j] = Σ_r A(i, r) · B(j, r) over one
// output tile, float32 operands staged by a multi-stage cp.async pipeline into shared memory,
// converted to tf32 or bf16 in registers, multiplied by mma.sync, accumulated in float32.
//
// Each operand is K-major (r contiguous in global memory: x and w in the forward pass) or
// MN-major (i contiguous: w in dX = dY · W, dy and x in dW = dYᵀ · X); only the shared-memory
// layout and the fragment loads differ, the pipeline and the math are shared.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moe_cuda.h"

namespace moe::cuda::gemm {

// ---------------------------------------------------------------------------------------------
// PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies kBytes (4 or 16) from global to shared memory asynchronously; zero-fills them when !valid
// (src-size 0: nothing is read).
template <int kBytes>
__device__ __forceinline__ void cp_async(float* dst, const float* src, bool valid) {
  const int src_bytes = valid ? kBytes : 0;
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src), "n"(kBytes),
                 "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8×8 matrices of 32-bit words (8 rows of 16 bytes each): lanes 8q..8q+7 give the row
// addresses of matrix q; lane l receives word l % 4 of row l / 4 of each.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const float* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ uint32_t to_tf32(uint32_t x) {
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(y) : "f"(__uint_as_float(x)));
  return y;
}

// bf16x2 of two floats: lo in bits 0..15 (the lower k index of the mma fragment), hi in 16..31.
__device__ __forceinline__ uint32_t to_bf16x2(uint32_t lo, uint32_t hi) {
  uint32_t y;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(y) : "f"(__uint_as_float(hi)), "f"(__uint_as_float(lo)));
  return y;
}

// c += a · b, m16n8k8, tf32 operands.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// c += a · b, m16n8k16, bf16 operands.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---------------------------------------------------------------------------------------------
// Tile shape: kBM × kBN outputs per block, kWarpsM × kWarpsN warps of (kBM / kWarpsM) × (kBN / kWarpsN)
// outputs each, kStages stages of depth kBK in flight.

constexpr int kBK = 32;

template <int kBM_, int kBN_, int kWarpsM_, int kWarpsN_, int kStages_>
struct TileShape {
  static constexpr int kBM = kBM_, kBN = kBN_, kWarpsM = kWarpsM_, kWarpsN = kWarpsN_, kStages = kStages_;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kWarpM = kBM / kWarpsM, kWarpN = kBN / kWarpsN;
  static constexpr int kMmaM = kWarpM / 16, kMmaN = kWarpN / 8;  // m16 and n8 tiles per warp
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are multiples of 16 × 16");
};

// ---------------------------------------------------------------------------------------------
// One operand of one pipeline stage in shared memory: OP(i, r) for i < kRows, r < kBK, in 16-byte
// chunks whose order within a line is XOR-swizzled so that the fragment loads hit all 32 banks:
//   K-major:  [kRows][kBK]; chunk c of row i sits at c ^ (i % 8): an ldmatrix reads 8 consecutive
//             rows at one chunk.
//   MN-major: [kBK][kRows]; chunk c of line r sits at c ^ 2·(r % 4): a scalar fragment load reads
//             lines r..r+3 (r % 4 = 0) at the 8 values i..i+7 (i % 8 = 0).
template <int kRows, bool kKMajor>
struct OperandTile {
  static_assert(kBK == 32 && kRows % 32 == 0, "the swizzles assume kBK = 32 and kRows % 32 = 0");
  static constexpr int kFloats = kRows * kBK;

  __device__ static int offset(int i, int r) {
    if constexpr (kKMajor) return i * kBK + ((((r >> 2) ^ (i & 7)) << 2) | (r & 3));
    else return r * kRows + ((((i >> 2) ^ ((r & 3) << 1)) << 2) | (i & 3));
  }
};

// An operand of one tile in global memory: OP(i, r) = ptr[i·ld + r] (K-major) or ptr[r·ld + i]
// (MN-major); rows i ≥ rows are outside the problem and read as zeros.
struct Operand {
  const float* ptr;
  int64_t ld;
  int rows;
};

// Copies one operand of a tile into shared memory, one stage per call: stage s holds
// OP(i, s·kBK + r) for i < kRows, r < kBK, with zeros where i ≥ op.rows or s·kBK + r ≥ depth.
// Copies are chunks of kVec floats along the contiguous dimension; kVec = 4 (16 bytes) needs
// ld % 4 == 0, a 16-byte aligned ptr and extents along it that are multiples of 4.
// Thread t copies chunk `along` of lines line0, line0 + kLineStep, …: its addresses move by fixed
// strides, so a chunk costs an add and a compare. Zero-filled chunks may address memory past the
// operand; cp.async reads none of it (src-size 0).
template <int kRows, bool kKMajor, int kVec, int kThreads>
struct OperandCopier {
  using Source = Operand;
  static constexpr bool kDecoded = false;                            // copies land in the stage as they are
  static constexpr int kSlotFloats = OperandTile<kRows, kKMajor>::kFloats;  // its part of a stage
  static constexpr int kLines = kKMajor ? kRows : kBK;
  static constexpr int kPerLine = (kKMajor ? kBK : kRows) / kVec;  // chunks along a line
  static constexpr int kLineStep = kThreads / kPerLine;
  static_assert(kThreads % kPerLine == 0 && kLines % kLineStep == 0, "threads tile the stage");
  using Tile = OperandTile<kRows, kKMajor>;

  const float* src;      // this thread's first chunk of the next stage
  int64_t line_stride;   // kLineStep lines
  int64_t stage_stride;  // kBK along r
  int64_t r_left;        // depth − (r of this thread's first chunk of the next stage)
  int line0, along;
  int i_left;  // K-major: op.rows − line0, MN-major: op.rows − along

  __device__ __forceinline__ OperandCopier(const Operand& op, int64_t depth) {
    line0 = threadIdx.x / kPerLine;
    along = threadIdx.x % kPerLine * kVec;
    src = op.ptr + line0 * op.ld + along;
    line_stride = kLineStep * op.ld;
    stage_stride = kKMajor ? kBK : kBK * op.ld;
    r_left = depth - (kKMajor ? along : line0);
    i_left = op.rows - (kKMajor ? line0 : along);
  }

  __device__ __forceinline__ void copy(float* s) {
    const int r_left32 = static_cast<int>(r_left < kBK ? r_left : kBK);
    const float* p = src;
#pragma unroll
    for (int q = 0; q < kLines / kLineStep; ++q) {
      const int line = line0 + q * kLineStep;
      const bool valid = kKMajor ? q * kLineStep < i_left && r_left32 > 0 : i_left > 0 && q * kLineStep < r_left32;
      cp_async<4 * kVec>(s + (kKMajor ? Tile::offset(line, along) : Tile::offset(along, line)), p, valid);
      p += line_stride;
    }
    src += stage_stride;
    r_left -= kBK;
  }
};

// Fragments of one 8-deep slice (r in [r0, r0 + 8)) of a stage, in the tf32 m16n8k8 layouts
// (g = lane / 4, t = lane % 4), as raw float bits:
//   a[mt] = A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4)  of m16 tile mt (rows i0 + 16·mt + …)
//   b[nt] = B(g, t), B(g, t + 4)                                of n8 tile nt  (rows j0 + 8·nt + …)
template <int kRows, bool kKMajor, int kMmaM>
__device__ __forceinline__ void load_a(uint32_t (&a)[kMmaM][4], const float* s, int i0, int r0) {
  using Tile = OperandTile<kRows, kKMajor>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < kMmaM; ++mt) {
    const int i = i0 + 16 * mt;
    if constexpr (kKMajor) {
      // matrices: rows i..i+7 and i+8..i+15 at r0..r0+3, then the same at r0+4..r0+7.
      ldmatrix_x4(a[mt], s + Tile::offset(i + lane % 8 + (lane / 8) % 2 * 8, r0 + lane / 16 * 4));
    } else {
      a[mt][0] = __float_as_uint(s[Tile::offset(i + g, r0 + t)]);
      a[mt][1] = __float_as_uint(s[Tile::offset(i + g + 8, r0 + t)]);
      a[mt][2] = __float_as_uint(s[Tile::offset(i + g, r0 + t + 4)]);
      a[mt][3] = __float_as_uint(s[Tile::offset(i + g + 8, r0 + t + 4)]);
    }
  }
}

template <int kRows, bool kKMajor, int kMmaN>
__device__ __forceinline__ void load_b(uint32_t (&b)[kMmaN][2], const float* s, int j0, int r0) {
  using Tile = OperandTile<kRows, kKMajor>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nt = 0; nt < kMmaN; nt += 2) {
    const int j = j0 + 8 * nt;
    if constexpr (kKMajor) {
      // matrices: rows j..j+7 at r0..r0+3 and r0+4..r0+7, then rows j+8..j+15 likewise.
      uint32_t r[4];
      ldmatrix_x4(r, s + Tile::offset(j + lane % 8 + lane / 16 * 8, r0 + (lane / 8) % 2 * 4));
      b[nt][0] = r[0], b[nt][1] = r[1], b[nt + 1][0] = r[2], b[nt + 1][1] = r[3];
    } else {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        b[nt + h][0] = __float_as_uint(s[Tile::offset(j + 8 * h + g, r0 + t)]);
        b[nt + h][1] = __float_as_uint(s[Tile::offset(j + 8 * h + g, r0 + t + 4)]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One mma k-step: 8 deep for tf32 and 3xTF32 (m16n8k8), 16 deep for bf16 (m16n8k16). Its operands
// sit in registers in the mma fragment layouts: rounded to tf32, packed to bf16 pairs, or raw for
// 3xTF32, which splits them at the mma.

template <Precision kP>
constexpr int kStepDepth = kP == Precision::kBf16 ? 16 : 8;

template <int kMmaM, int kMmaN>
struct StepOperands {
  uint32_t a[kMmaM][4];
  uint32_t b[kMmaN][2];
};

template <Precision kP, int kRowsA, bool kAKMajor, int kRowsB, bool kBKMajor, int kMmaM, int kMmaN>
__device__ __forceinline__ void load_step(StepOperands<kMmaM, kMmaN>& o, const float* sa, const float* sb, int i0,
                                          int j0, int r0) {
  if constexpr (kP == Precision::kBf16) {
    // m16n8k16 wants k = (2t, 2t+1) and (2t+8, 2t+9) in thread t; the reduction order is free, so
    // thread t takes (t, t+4) of slice r0 as k = (2t, 2t+1) and of slice r0 + 8 as (2t+8, 2t+9), in A
    // and in B alike.
    StepOperands<kMmaM, kMmaN> f[2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      load_a<kRowsA, kAKMajor>(f[q].a, sa, i0, r0 + 8 * q);
      load_b<kRowsB, kBKMajor>(f[q].b, sb, j0, r0 + 8 * q);
    }
#pragma unroll
    for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        o.a[mt][2 * q] = to_bf16x2(f[q].a[mt][0], f[q].a[mt][2]);      // row g
        o.a[mt][2 * q + 1] = to_bf16x2(f[q].a[mt][1], f[q].a[mt][3]);  // row g + 8
      }
#pragma unroll
    for (int nt = 0; nt < kMmaN; ++nt)
#pragma unroll
      for (int q = 0; q < 2; ++q) o.b[nt][q] = to_bf16x2(f[q].b[nt][0], f[q].b[nt][1]);
  } else {
    load_a<kRowsA, kAKMajor>(o.a, sa, i0, r0);
    load_b<kRowsB, kBKMajor>(o.b, sb, j0, r0);
    if constexpr (kP == Precision::kTf32) {
#pragma unroll
      for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
        for (int q = 0; q < 4; ++q) o.a[mt][q] = to_tf32(o.a[mt][q]);
#pragma unroll
      for (int nt = 0; nt < kMmaN; ++nt)
#pragma unroll
        for (int q = 0; q < 2; ++q) o.b[nt][q] = to_tf32(o.b[nt][q]);
    }
  }
}

// 3xTF32 split: x = hi + lo, hi = tf32(x), lo = tf32(x − hi).
__device__ __forceinline__ void split_tf32(uint32_t x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(__float_as_uint(__uint_as_float(x) - __uint_as_float(hi)));
}

template <Precision kP, int kMmaM, int kMmaN>
__device__ __forceinline__ void mma_step(float (&acc)[kMmaM][kMmaN][4], const StepOperands<kMmaM, kMmaN>& o) {
  if constexpr (kP == Precision::kHighest) {
    // a·b ≈ a_lo·b_hi + a_hi·b_lo + a_hi·b_hi; a_lo·b_lo, about 2⁻²² of a·b, is dropped
    uint32_t a_hi[kMmaM][4], a_lo[kMmaM][4], b_hi[kMmaN][2], b_lo[kMmaN][2];
#pragma unroll
    for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
      for (int q = 0; q < 4; ++q) split_tf32(o.a[mt][q], a_hi[mt][q], a_lo[mt][q]);
#pragma unroll
    for (int nt = 0; nt < kMmaN; ++nt)
#pragma unroll
      for (int q = 0; q < 2; ++q) split_tf32(o.b[nt][q], b_hi[nt][q], b_lo[nt][q]);
#pragma unroll
    for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kMmaN; ++nt) {
        mma_tf32(acc[mt][nt], a_lo[mt], b_hi[nt]);
        mma_tf32(acc[mt][nt], a_hi[mt], b_lo[nt]);
        mma_tf32(acc[mt][nt], a_hi[mt], b_hi[nt]);
      }
  } else {
#pragma unroll
    for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kMmaN; ++nt) {
        if constexpr (kP == Precision::kBf16) mma_bf16(acc[mt][nt], o.a[mt], o.b[nt]);
        else mma_tf32(acc[mt][nt], o.a[mt], o.b[nt]);
      }
  }
}

// ---------------------------------------------------------------------------------------------
// The mainloop of one tile: acc[mt][nt] = the warp's C(i, j) over r < depth, in the m16n8 C layout
// (acc[mt][nt][0..3] = C(g, 2t), C(g, 2t+1), C(g+8, 2t), C(g+8, 2t+1) of the m16n8 tile).
// Shared memory holds kStages stages of A then B's slot; on return every thread is done with it.
// B is copied by CopyB: float32 by cp.async straight into the stage (OperandCopier), or, when
// CopyB::kDecoded (NF4, nf4_operand.cuh), its raw form by cp.async into the stage and decoded from
// there into one float32 tile after the stages, once per k-step.

template <class Shape, bool kAKMajor, class CopyB>
constexpr int kStageFloats = OperandTile<Shape::kBM, kAKMajor>::kFloats + CopyB::kSlotFloats;

template <class Shape, bool kAKMajor, class CopyB>
constexpr size_t kSmemBytes = sizeof(float) * (Shape::kStages * kStageFloats<Shape, kAKMajor, CopyB> +
                                               (CopyB::kDecoded ? CopyB::Tile::kFloats : 0));

template <class Shape, bool kBKMajor, int kVec>
using FloatCopier = OperandCopier<Shape::kBN, kBKMajor, kVec, Shape::kThreads>;

template <class Shape, bool kAKMajor, bool kBKMajor, Precision kP, int kVec, class CopyB = FloatCopier<Shape, kBKMajor, kVec>>
__device__ __forceinline__ void mainloop(float (&acc)[Shape::kMmaM][Shape::kMmaN][4], float* smem, const Operand& a,
                                         const typename CopyB::Source& b, int64_t depth) {
  constexpr int kAFloats = OperandTile<Shape::kBM, kAKMajor>::kFloats;
  constexpr int kStage = kStageFloats<Shape, kAKMajor, CopyB>;
  constexpr int kS = Shape::kStages;
  const int warp = threadIdx.x / 32;
  const int i0 = warp / Shape::kWarpsN * Shape::kWarpM, j0 = warp % Shape::kWarpsN * Shape::kWarpN;

#pragma unroll
  for (int mt = 0; mt < Shape::kMmaM; ++mt)
#pragma unroll
    for (int nt = 0; nt < Shape::kMmaN; ++nt)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mt][nt][q] = 0.f;

  const int64_t num_k = (depth + kBK - 1) / kBK;
  OperandCopier<Shape::kBM, kAKMajor, kVec, Shape::kThreads> copy_a(a, depth);
  CopyB copy_b(b, depth);
  auto load_stage = [&](int slot) {  // the next stage, in order
    float* s = smem + slot * kStage;
    copy_a.copy(s);
    copy_b.copy(s + kAFloats);
  };

  // Prologue: stages 0 .. kS-2 in flight (one commit group per stage, empty past the end).
#pragma unroll
  for (int s = 0; s < kS - 1; ++s) {
    if (s < num_k) load_stage(s);
    cp_async_commit();
  }
  // 3xTF32: the tensor cores truncate as they accumulate, an error that grows with the depth and
  // would swamp 3xTF32's, so each stage's products are summed apart and added in float32.
  constexpr bool kSplitStages = kP == Precision::kHighest;
  constexpr int kMmaM = Shape::kMmaM, kMmaN = Shape::kMmaN;
  float part[kSplitStages ? kMmaM : 1][kSplitStages ? kMmaN : 1][4] = {};
  int read_slot = 0, write_slot = kS - 1;
  for (int64_t kt = 0; kt < num_k; ++kt) {
    cp_async_wait<kS - 2>();  // stage kt has landed (this thread's copies) …
    __syncthreads();          // … everyone's, and everyone is done with the slot refilled below
    if (kt + kS - 1 < num_k) load_stage(write_slot);
    cp_async_commit();

    const float* sa = smem + read_slot * kStage;
    const float* sb = sa + kAFloats;
    if constexpr (CopyB::kDecoded) {
      float* tile = smem + kS * kStage;  // the previous k-step's MMAs are done with it (barrier above)
      copy_b.decode(sb, tile, kt);
      __syncthreads();
      sb = tile;
    }
#pragma unroll
    for (int r0 = 0; r0 < kBK; r0 += kStepDepth<kP>) {
      StepOperands<kMmaM, kMmaN> ops;
      load_step<kP, Shape::kBM, kAKMajor, Shape::kBN, kBKMajor>(ops, sa, sb, i0, j0, r0);
      if constexpr (kSplitStages) mma_step<kP>(part, ops);
      else mma_step<kP>(acc, ops);
    }
    if constexpr (kSplitStages) {
#pragma unroll
      for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
        for (int nt = 0; nt < kMmaN; ++nt)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[mt][nt][q] += part[mt][nt][q], part[mt][nt][q] = 0.f;
    }
    read_slot = read_slot == kS - 1 ? 0 : read_slot + 1;
    write_slot = write_slot == kS - 1 ? 0 : write_slot + 1;
  }
  cp_async_wait<0>();
  __syncthreads();
}

// Stores C(i, j) = acc for i < rows, j < cols at c[i·ldc + j], through shared memory so that rows
// leave in 16-byte pieces when vec4 (ldc % 4 == 0, c 16-byte aligned). smem holds kEpilogueFloats
// and is free (the mainloop has returned); on return every thread is done with it.
template <class Shape>
constexpr int kEpilogueLd = Shape::kBN + 8;  // ≡ 8 (mod 32): the float2 writes below hit all banks

template <class Shape>
constexpr int kEpilogueFloats = Shape::kBM * kEpilogueLd<Shape>;

template <class Shape>
__device__ __forceinline__ void store_tile(const float (&acc)[Shape::kMmaM][Shape::kMmaN][4], float* smem, float* c,
                                           int64_t ldc, int rows, int cols, bool vec4) {
  constexpr int kLd = kEpilogueLd<Shape>, kBN = Shape::kBN, kThreads = Shape::kThreads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i0 = warp / Shape::kWarpsN * Shape::kWarpM + lane / 4;
  const int j0 = warp % Shape::kWarpsN * Shape::kWarpN + lane % 4 * 2;
#pragma unroll
  for (int mt = 0; mt < Shape::kMmaM; ++mt)
#pragma unroll
    for (int nt = 0; nt < Shape::kMmaN; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<float2*>(smem + (i0 + 16 * mt + 8 * h) * kLd + j0 + 8 * nt) =
            make_float2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
  __syncthreads();
  if (vec4) {
    // thread t stores columns j..j+3 of rows i, i + kRowStep, …
    constexpr int kPerRow = kBN / 4, kRowStep = kThreads / kPerRow;
    static_assert(kThreads % kPerRow == 0 && Shape::kBM % kRowStep == 0, "threads tile the rows");
    const int i = threadIdx.x / kPerRow, j = threadIdx.x % kPerRow * 4;
    float* dst = c + i * ldc + j;
#pragma unroll
    for (int q = 0; q < Shape::kBM / kRowStep; ++q) {
      if (i + q * kRowStep < rows && j < cols)
        *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(smem + (i + q * kRowStep) * kLd + j);
      dst += kRowStep * ldc;
    }
  } else {
#pragma unroll 4
    for (int idx = threadIdx.x; idx < Shape::kBM * kBN; idx += kThreads) {
      const int i = idx / kBN, j = idx % kBN;
      if (i < rows && j < cols) c[i * ldc + j] = smem[i * kLd + j];
    }
  }
  __syncthreads();
}

}  // namespace moe::cuda::gemm
