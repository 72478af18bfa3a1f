// NF4 weights (bitsandbytes' 4-bit format, src/quant/nf4.ts) as the B operand of the sm_80 tile
// math (gemm_sm80.cuh) and of the sm_90a forward (gemm_sm90.cuh): copied raw through the
// pipeline and decoded in shared memory one k-step at a time, so the grouped GEMM never holds a
// float copy of the weight.
//
// One expert's weight W[e] [rows_w, ld] (row-major, flat index f = row · ld + col) is stored as
//   packed  ⌈n/2⌉ bytes: value f in byte f/2, high nibble for even f
//   absmax  one float32 per block of 2^log2_block values
//   W(f)  = code[nibble(f)] · absmax[f >> log2_block]      (float32, as bitsandbytes dequantises)
// and the operand reads it K-major (forward: OP(j, r) = W[col0 + j][r]) or MN-major (dX:
// OP(j, r) = W[r][col0 + j]).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gemm_sm80.cuh"
#include "gemm_sm90.cuh"

namespace moe::cuda::gemm {

// The 16 NF4 values (bitsandbytes' NF4 code table).
__device__ __constant__ const float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

// Copies kNf4Code into a block's shared table (threads 0..15), then waits for the block.
__device__ __forceinline__ void stage_nf4_code(float (&table)[16]) {
  if (threadIdx.x < 16) table[threadIdx.x] = kNf4Code[threadIdx.x];
  __syncthreads();
}

struct Nf4Operand {
  const uint8_t* packed;  // the expert's bytes
  const float* absmax;    // the expert's blocks
  const float* code;      // kNf4Code, staged in shared memory by the kernel (16 banks: no conflicts)
  int64_t ld;             // row length of W[e]
  int64_t col0;           // first column (K-major: row) of W[e] this tile reads
  int rows;               // OP(j, ·) for j ≥ rows reads zeros
  int log2_block;
  bool aligned;  // packed is 4-byte aligned and ld % 8 == 0: 8-value chunks are single 32-bit words
};

// The NF4 operand in the pipeline (CopyB::kDecoded, gemm_sm80.cuh). A stage's slot holds it raw:
// for each chunk c of 8 values along the contiguous dimension, one 32-bit word of codes at
// slot[c] and its absmax at slot[kChunkCount + c] (8 | block size: one absmax per chunk), copied by
// cp.async with the rest of the stage. decode() then writes the k-step's float32 tile, OP(i, r) for
// i < kRows, r < kBK (zeros outside), in the layout of a float operand. Chunks at the operand's
// edges, or off 8-code boundaries, are not copied but read value by value by decode().
template <int kRows, bool kKMajor, int kThreads>
struct Nf4Copier {
  using Source = Nf4Operand;
  using Tile = OperandTile<kRows, kKMajor>;
  static constexpr bool kDecoded = true;
  static constexpr int kLines = kKMajor ? kRows : kBK;
  static constexpr int kPerLine = (kKMajor ? kBK : kRows) / 8;
  static constexpr int kLineStep = kThreads / kPerLine;
  static constexpr int kChunks = kLines / kLineStep;  // per thread and stage
  static constexpr int kChunkCount = kLines * kPerLine;
  static constexpr int kSlotFloats = 2 * kChunkCount;
  static_assert(kThreads % kPerLine == 0 && kLines % kLineStep == 0, "threads tile the stage");

  Nf4Operand op;
  int64_t depth, next_r0 = 0;  // r of the stage copied next
  int line0, along;

  __device__ __forceinline__ Nf4Copier(const Nf4Operand& o, int64_t d) : op(o), depth(d) {
    line0 = threadIdx.x / kPerLine;
    along = threadIdx.x % kPerLine * 8;
  }

  // Chunk q of this thread in the stage at r0: OP(i + t, r) (MN-major) or OP(i, r + t) (K-major),
  // t < 8, at flat index f0 + t; c is its place in the slot; whole tells whether it is copied.
  struct Chunk {
    int i, c;
    int64_t r, f0;
    bool whole;
  };

  __device__ __forceinline__ Chunk chunk(int q, int64_t r0) const {
    const int line = line0 + q * kLineStep;
    Chunk k;
    k.i = kKMajor ? line : along;
    k.r = r0 + (kKMajor ? along : line);
    k.c = line * kPerLine + along / 8;
    k.f0 = kKMajor ? (op.col0 + k.i) * op.ld + k.r : k.r * op.ld + op.col0 + k.i;
    const bool full = kKMajor ? k.i < op.rows && k.r + 8 <= depth : k.i + 8 <= op.rows && k.r < depth;
    k.whole = full && op.aligned && k.f0 % 8 == 0;
    return k;
  }

  __device__ __forceinline__ void copy(float* slot) {
#pragma unroll
    for (int q = 0; q < kChunks; ++q) {
      const Chunk k = chunk(q, next_r0);
      cp_async<4>(slot + k.c, reinterpret_cast<const float*>(op.packed + (k.f0 >> 1)), k.whole);
      cp_async<4>(slot + kChunkCount + k.c, op.absmax + (k.f0 >> op.log2_block), k.whole);
    }
    next_r0 += kBK;
  }

  // Decodes k-step kt's slot into tile: value t of a chunk is code[nibble] · absmax (as bitsandbytes).
  __device__ __forceinline__ void decode(const float* slot, float* tile, int64_t kt) const {
    const int64_t r0 = kt * kBK;
#pragma unroll
    for (int q = 0; q < kChunks; ++q) {
      const Chunk k = chunk(q, r0);
      float v[8];
      if (k.whole) {
        const uint32_t word = __float_as_uint(slot[k.c]);
        const float scale = slot[kChunkCount + k.c];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const uint32_t byte = word >> (8 * (t >> 1)) & 0xff;
          v[t] = op.code[t & 1 ? byte & 15 : byte >> 4] * scale;
        }
      } else {
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const bool valid = kKMajor ? k.i < op.rows && k.r + t < depth : k.i + t < op.rows && k.r < depth;
          const int64_t f = k.f0 + t;
          const uint8_t byte = valid ? op.packed[f >> 1] : 0;
          v[t] = valid ? op.code[f & 1 ? byte & 15 : byte >> 4] * op.absmax[f >> op.log2_block] : 0.f;
        }
      }
      // values 0..3 and 4..7 are two 16-byte chunks of the tile (the swizzle moves whole chunks)
      const int rs = static_cast<int>(k.r - r0);
      *reinterpret_cast<float4*>(tile + Tile::offset(k.i, rs)) = make_float4(v[0], v[1], v[2], v[3]);
      *reinterpret_cast<float4*>(tile + (kKMajor ? Tile::offset(k.i, rs + 4) : Tile::offset(k.i + 4, rs))) =
          make_float4(v[4], v[5], v[6], v[7]);
    }
  }
};

// The NF4 weight as B of the sm_90a forward (sm90::run_tiles): B(j, r) = W[e][col0 + j][r], W[e]
// [N, K] with K a multiple of 4 blocks of ≥ 32 codes, so that a stage's 32 codes of a row lie in one
// block. The leader's TMA brings a stage's raw part: the kBN rows' 32 codes (16 bytes a row, packed
// viewed as [E·N, K/2] bytes), then their absmax (16 bytes a row: the aligned group of 4 blocks that
// holds the stage's, absmax viewed as [E·N, K/blocksize] float32; a TMA box starts on 16 bytes).
// Rows past the expert are another expert's or zeros: they reach only outputs that are not stored.
// The producers decode code · absmax (float32, as bitsandbytes) rounded to the math stage's
// precision, K-major, kRowsEach rows each.
struct Nf4Stages {
  static constexpr bool kNf4 = true;
  static constexpr int kCodeBytes = sm90::kBN * 16;
  static constexpr int kRawBytes = 2 * kCodeBytes;
  static constexpr int kRowsEach = sm90::kBN / sm90::kProducers;  // rows per producer
  static_assert(kRowsEach * sm90::kProducers == sm90::kBN, "producers share B's rows evenly");

  const float* code;  // kNf4Code in shared memory
  int log2_block;

  // Stage r (its first k) of rows job.b_row = e·N + col0, … → raw, completing on bar (leader);
  // codes: boxes of 16 bytes × kBN rows, absmax: boxes of 4 blocks × kBN rows.
  __device__ __forceinline__ void copy(uint8_t* raw, const CUtensorMap* codes, const CUtensorMap* absmax,
                                       const sm90::TileJob& job, int r, uint64_t* bar) const {
    sm90::tma_load(raw, codes, r / 2, job.b_row, bar);
    sm90::tma_load(raw + kCodeBytes, absmax, (r >> log2_block) & ~3, job.b_row, bar);
  }

  // raw → math stage: row j's values 8q .. 8q + 7 are code word q (byte t/2, high nibble first).
  // Every load comes before the first store: stores to math may alias the table for the compiler,
  // which would otherwise serialize each word's lookups behind the previous word's stores.
  template <Precision kP>
  __device__ __forceinline__ void decode(const uint8_t* raw, uint8_t* math, int p, int r) const {
    const int block = (r >> log2_block) & 3;  // the stage's absmax in its row's group of 4
    constexpr bool kTf32 = kP == Precision::kTf32;
    constexpr int kOut = kTf32 ? 8 : 4;  // 32-bit words of rounded values per code word
    uint32_t out[kRowsEach][4][kOut];
#pragma unroll
    for (int h = 0; h < kRowsEach; ++h) {
      const int j = p + h * sm90::kProducers;
      const uint4 words = *reinterpret_cast<const uint4*>(raw + 16 * j);
      const float scale = *reinterpret_cast<const float*>(raw + kCodeBytes + 16 * j + 4 * block);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        // byte b of hi4 / lo4: 4 × the code of value 2b / 2b + 1, i.e. its byte offset in the table
        const uint32_t word = sm90::lane_of(words, q), hi4 = word >> 2 & 0x3C3C3C3C, lo4 = word << 2 & 0x3C3C3C3C;
        uint32_t v[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const uint32_t offset = __byte_perm(t & 1 ? lo4 : hi4, 0, 0x4440 | (t >> 1));  // byte t/2, zero-extended
          v[t] = __float_as_uint(*reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(code) + offset) * scale);
        }
#pragma unroll
        for (int i = 0; i < kOut; ++i) {
          if constexpr (kTf32)
            out[h][q][i] = to_tf32(v[i]);
          else
            out[h][q][i] = to_bf16x2(v[2 * i], v[2 * i + 1]);
        }
      }
    }
#pragma unroll
    for (int h = 0; h < kRowsEach; ++h) {
      const int j = p + h * sm90::kProducers;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint32_t* o = out[h][q];
        if constexpr (kTf32) {  // 128-byte rows: two 16-byte chunks
          *reinterpret_cast<uint4*>(math + sm90::swizzle<128>(j * 128 + q * 32)) = make_uint4(o[0], o[1], o[2], o[3]);
          *reinterpret_cast<uint4*>(math + sm90::swizzle<128>(j * 128 + q * 32 + 16)) = make_uint4(o[4], o[5], o[6], o[7]);
        } else {  // 64-byte rows: one chunk
          *reinterpret_cast<uint4*>(math + sm90::swizzle<64>(j * 64 + q * 16)) = make_uint4(o[0], o[1], o[2], o[3]);
        }
      }
    }
  }
};

}  // namespace moe::cuda::gemm
