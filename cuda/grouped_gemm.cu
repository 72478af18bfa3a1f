// Grouped GEMMs of the MoE layer on the GPU (moe_cuda.h): a persistent kernel whose blocks first
// compute the experts' row ranges and tile prefix sums from group_sizes on the device (or read them
// from a plan kernel where shared memory is short), then walk all experts' tiles
// (tile_scheduler.cuh) with the sm_80 tensor-core tile math (gemm_sm80.cuh), or on compute
// capability 9.0 the wgmma tile math (gemm_sm90.cuh) for tf32 and bf16.
//
//   forward  y[m, n]     = Σ_k x[m, k] · w[g(m), n, k]     A = x (K-major), B = w[e] (K-major)
//   dX       y[m, n]     = Σ_k x[m, k] · w[g(m), k, n]     A = x (K-major), B = w[e] (MN-major)
//   dW       dw[e, n, k] = Σ_{m in e} dy[m, n] · x[m, k]   A = dyᵀ (MN-major), B = xᵀ (MN-major)
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "gemm_sm80.cuh"
#include "gemm_sm90.cuh"
#include "gemm_sm90_pingpong.cuh"
#include "moe_cuda.h"
#include "nf4_operand.cuh"
#include "tile_scheduler.cuh"

namespace moe::cuda {
namespace {

using gemm::ExpertTile;
using gemm::Operand;
using gemm::Plan;
using gemm::RowTile;

// kForwardNf4 / kForwardTransposedNf4: the same products with w in NF4 (nf4_operand.cuh).
enum class Op { kForward, kForwardTransposed, kGradWeight, kForwardNf4, kForwardTransposedNf4 };
template <Op kOp>
constexpr bool kAKMajor = kOp != Op::kGradWeight;
template <Op kOp>
constexpr bool kBKMajor = kOp == Op::kForward || kOp == Op::kForwardNf4;
template <Op kOp>
constexpr bool kNf4 = kOp == Op::kForwardNf4 || kOp == Op::kForwardTransposedNf4;

// Tile shapes (sm_80 path), all within the 99 KB of shared memory that every sm_80+ part lets a
// block have. Wide: 128 × 128 outputs per block, 3 stages (96 KB); tf32 and bf16 take 4 warps of
// 64 × 64 (two blocks fit an SM of an H100, one of an A100); 3xTF32 keeps a second set of
// accumulators and takes 8 warps of 64 × 32. Thin, for an output side of at most kThinN (LoRA
// ranks), 4 warps of 32 × 32, 4 stages (80 KB), the wide operand streamed once instead of padding
// the thin side to 128: N ≤ 32 takes 128 × 32 (forward, dX) or 32 × 128 (dW, where N is the row
// side of dw[e]); dW with K ≤ 32 < N (dw[e] of a LoRA up-projection, r columns) takes 128 × 32
// (H200, M = 65536, r = 8..32: 1.14–1.5× faster than the wide tile, 3/4 padding there).
enum class Thin { kNo, kN, kK };  // which side of the output is thin
template <Op kOp, Precision kP, Thin kThin>
using ShapeFor = std::conditional_t<
    kThin == Thin::kNo,
    std::conditional_t<kP == Precision::kHighest, gemm::TileShape<128, 128, 2, 4, 3>,
                       gemm::TileShape<128, 128, 2, 2, 3>>,
    std::conditional_t<kOp == Op::kGradWeight && kThin == Thin::kN, gemm::TileShape<32, 128, 1, 4, 4>,
                       gemm::TileShape<128, 32, 4, 1, 4>>>;
constexpr int64_t kThinN = 32;

constexpr int kPlanThreads = 1024;

// Writes plan.row_start and plan.tile_start (tile_scheduler.cuh) for tiles of bm rows × tiles_n
// column blocks; bm = 0 leaves tile_start at zeros. The whole block calls it, experts in chunks of
// blockDim.x; scratch: 32 values.
__device__ void build_plan(const int32_t* group_sizes, int64_t E, int64_t M, int bm, int64_t tiles_n,
                           int64_t* row_start, int64_t* tile_start, int64_t* scratch) {
  if (threadIdx.x == 0) row_start[0] = tile_start[0] = 0;
  int64_t rows_before = 0, tiles_before = 0;  // of earlier chunks; rows before clamping to M
  for (int64_t base = 0; base < E; base += blockDim.x) {
    const int64_t e = base + threadIdx.x;
    const int64_t size = e < E ? max(group_sizes[e], 0) : 0;
    int64_t chunk_rows, chunk_tiles = 0;
    const int64_t end = rows_before + gemm::block_inclusive_scan(size, scratch, &chunk_rows);
    const int64_t rows = min(end, M) - min(end - size, M);
    // dW (bm = 0) has no row tiles: its blocks skip the second scan (bm is the same for the whole block)
    const int64_t tiles_end =
        bm > 0 ? tiles_before + gemm::block_inclusive_scan((rows + bm - 1) / bm * tiles_n, scratch, &chunk_tiles) : 0;
    if (e < E) {
      row_start[e + 1] = min(end, M);
      tile_start[e + 1] = tiles_end;
    }
    rows_before += chunk_rows;
    tiles_before += chunk_tiles;
  }
}

// The plan into global memory, for GEMMs whose blocks have no shared memory left for it.
__global__ void __launch_bounds__(kPlanThreads) plan_kernel(const int32_t* group_sizes, int64_t E, int64_t M, int bm,
                                                            int64_t tiles_n, int64_t* row_start, int64_t* tile_start) {
  __shared__ int64_t scratch[32];
  build_plan(group_sizes, E, M, bm, tiles_n, row_start, tile_start, scratch);
}

// How a pipeline stage gets B: float32 copies, or NF4 codes decoded in shared memory.
template <class Shape, Op kOp, int kVec>
using CopyBFor = std::conditional_t<kNf4<kOp>, gemm::Nf4Copier<Shape::kBN, kBKMajor<kOp>, Shape::kThreads>,
                                    gemm::FloatCopier<Shape, kBKMajor<kOp>, kVec>>;

struct GemmArgs {
  const float* x;  // [M, K]
  const float* w;  // w [E, N, K] (forward), w [E, K, N] (dX), or dy [M, N] (dW)
  float* out;      // y [M, N], or dw [E, N, K]
  int64_t M, K, N, E;
  int64_t tiles_n, tiles_k;  // column blocks of y (forward, dX); n and k blocks of dw[e] (dW)
  // The plan of tiles of plan_bm rows (0: dW): each block builds it in its shared memory from
  // group_sizes when plan_in_smem, which spares a call the plan kernel's launch and its workspace
  // (H100, LoRA r = 16 at M = 65536: 2–14 % of the GPU time); else plan_kernel has written `plan`
  // in global memory before the launch.
  const int32_t* group_sizes;
  int plan_bm;
  bool plan_in_smem;
  Plan plan;
  bool out_vec4;  // rows of the output take 16-byte stores
  // NF4 weights (kNf4 ops; w unused): expert e's codes at nf4 + e·nf4_bytes, absmax at absmax + e·nf4_blocks.
  const uint8_t* nf4;
  const float* absmax;
  int64_t nf4_bytes, nf4_blocks;
  int log2_block;
  bool nf4_aligned;  // 8 codes of a row chunk are one aligned 32-bit word
};

constexpr size_t plan_bytes(int64_t E) { return 2 * (E + 1) * sizeof(int64_t); }

// This GEMM's plan: built by the block at smem_plan (plan_bytes(E)) when args.plan_in_smem, else
// args.plan. The whole block calls it, before anything else uses shared memory.
__device__ Plan block_plan(const GemmArgs& args, void* smem_plan) {
  if (!args.plan_in_smem) return args.plan;
  __shared__ int64_t scratch[32];
  int64_t* p = static_cast<int64_t*>(smem_plan);
  build_plan(args.group_sizes, args.E, args.M, args.plan_bm, args.tiles_n, p, p + args.E + 1, scratch);
  __syncthreads();
  return Plan{p, p + args.E + 1, args.E};
}

// Shared memory of the sm_80 kernel's pipeline (the plan may follow it).
template <class Shape, Op kOp, int kVec>
constexpr size_t kSmem80 = std::max(gemm::kSmemBytes<Shape, kAKMajor<kOp>, CopyBFor<Shape, kOp, kVec>>,
                                    sizeof(float) * gemm::kEpilogueFloats<Shape>);

// Persistent: block b runs tiles b, b + gridDim.x, … of all experts.
template <class Shape, Op kOp, Precision kP, int kVec>
__global__ void __launch_bounds__(Shape::kThreads) grouped_gemm_kernel(const GemmArgs args) {
  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  __shared__ float nf4_code[kNf4<kOp> ? 16 : 1];
  if constexpr (kNf4<kOp>) gemm::stage_nf4_code(nf4_code);
  const Plan plan = block_plan(args, reinterpret_cast<char*>(smem_f4) + kSmem80<Shape, kOp, kVec>);
  constexpr int kBM = Shape::kBM, kBN = Shape::kBN;
  const int64_t num_tiles =
      kOp == Op::kGradWeight ? args.E * args.tiles_n * args.tiles_k : plan.tile_start[args.E];
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    float acc[Shape::kMmaM][Shape::kMmaN][4];
    if constexpr (kOp == Op::kGradWeight) {
      // dw[e, n0 + i, k0 + j] = Σ_{r < rows} dy[row0 + r, n0 + i] · x[row0 + r, k0 + j]
      const ExpertTile t = gemm::expert_tile(plan, tile, kBM, kBN, args.tiles_n, args.tiles_k);
      const int rows = static_cast<int>(min(args.N - t.n0, static_cast<int64_t>(kBM)));
      const int cols = static_cast<int>(min(args.K - t.k0, static_cast<int64_t>(kBN)));
      const Operand a{args.w + t.row0 * args.N + t.n0, args.N, rows};
      const Operand b{args.x + t.row0 * args.K + t.k0, args.K, cols};
      gemm::mainloop<Shape, kAKMajor<kOp>, kBKMajor<kOp>, kP, kVec>(acc, smem, a, b, t.rows);
      gemm::store_tile<Shape>(acc, smem, args.out + (t.expert * args.N + t.n0) * args.K + t.k0, args.K, rows, cols,
                              args.out_vec4);
    } else {
      // y[row0 + i, col0 + j] = Σ_k x[row0 + i, k] · w[e, col0 + j, k]   (or w[e, k, col0 + j])
      const RowTile t = gemm::row_tile(plan, tile, kBM, kBN, args.tiles_n);
      const int cols = static_cast<int>(min(args.N - t.col0, static_cast<int64_t>(kBN)));
      const Operand a{args.x + t.row0 * args.K, args.K, t.rows};
      if constexpr (kNf4<kOp>) {
        const gemm::Nf4Operand b{args.nf4 + t.expert * args.nf4_bytes, args.absmax + t.expert * args.nf4_blocks,
                                 nf4_code, kBKMajor<kOp> ? args.K : args.N, t.col0, cols, args.log2_block,
                                 args.nf4_aligned};
        gemm::mainloop<Shape, true, kBKMajor<kOp>, kP, kVec, CopyBFor<Shape, kOp, kVec>>(acc, smem, a, b, args.K);
      } else {
        const float* w = args.w + t.expert * args.N * args.K;
        const Operand b = kOp == Op::kForward ? Operand{w + t.col0 * args.K, args.K, cols}
                                              : Operand{w + t.col0, args.N, cols};
        gemm::mainloop<Shape, kAKMajor<kOp>, kBKMajor<kOp>, kP, kVec>(acc, smem, a, b, args.K);
      }
      gemm::store_tile<Shape>(acc, smem, args.out + t.row0 * args.N + t.col0, args.N, t.rows, cols, args.out_vec4);
    }
  }
}

// sm_90a (tf32, bf16): the same schedules over 128 × 256 tiles (the tf32 forward at K ≤ 1024: 128 × 128
// ping-pong tiles, gemm_sm90_pingpong.cuh; Sm90Tiles), wgmma tile math, operands by TMA.
// Forward: map_a over x [M, K], map_b over w as [E·N, K]. dX: map_b over w as [E, K, N]. dW
// (tiles of dw[e] [N, K], r over the expert's rows): map_a over dy as [1, M, N], map_b over x as
// [1, M, K]. NF4 forward: map_a as forward, map_b over the codes as [E·N, K/2] bytes and map_c
// over absmax as [E·N, K/blocksize] (Nf4Stages). tf32: map_c over the output for TMA stores of
// whole tiles, boxes of 32 × 64 (forward, dX: y as [M, N]; dW: dw as [E·N, K]); bf16 leaves it
// unused. Needs K, N % 4 == 0, 16-byte aligned x, w (dy), y (dw), coordinates below 2³¹.
template <Op kOp>
using Sm90B = std::conditional_t<kNf4<kOp>, gemm::Nf4Stages, gemm::sm90::FloatB>;
template <Precision kP, Op kOp>  // tf32 tiles of float weights leave by TMA stores (store_tile_tma)
constexpr bool kTmaOut = kP == Precision::kTf32 && !kNf4<kOp>;
// The sm_90a kernel's tiles: run_tiles' 128 × 256, with (tf32) 3 slots and 4 boxes a warpgroup of
// TMA-store staging (kCooperative) or 4 slots and 1 box (kDeepRing), or the tf32 forward's 128 × 128
// ping-pong tiles (kPingPong, gemm_sm90_pingpong.cuh). The host's rules pick one (grouped_gemm).
enum class Sm90Tiles { kCooperative, kDeepRing, kPingPong };
template <Precision kP, Op kOp, Sm90Tiles kTiles>
using Sm90Layout =
    std::conditional_t<kTiles == Sm90Tiles::kPingPong, gemm::sm90::PingPongLayout,
                       gemm::sm90::Layout<kP, Sm90B<kOp>, kTmaOut<kP, kOp>, kTiles == Sm90Tiles::kDeepRing ? 1 : 4>>;
template <Sm90Tiles kTiles>
constexpr int kSm90TileN = kTiles == Sm90Tiles::kPingPong ? gemm::sm90::PingPongLayout::kBN : gemm::sm90::kBN;

template <Precision kP, Op kOp, Sm90Tiles kTiles>
__global__ void __launch_bounds__(gemm::sm90::kThreads, 1)
    grouped_gemm_sm90_kernel(const GemmArgs args, const __grid_constant__ CUtensorMap map_a,
                             const __grid_constant__ CUtensorMap map_b, const __grid_constant__ CUtensorMap map_c) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  namespace g90 = gemm::sm90;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + (1024 - gemm::smem_addr(smem_raw) % 1024) % 1024;  // the swizzles need 1024
  // The plan follows the pipeline where it fits: every thread maps each of its tiles to an expert
  // through it (a search of 2–3 rounds of dependent loads), from shared memory rather than global.
  using L = Sm90Layout<kP, kOp, kTiles>;
  const gemm::Plan plan = block_plan(args, smem + L::kPlanOffset);
  if constexpr (kOp == Op::kGradWeight) {
    // dw[e, n0 + i, k0 + j] = Σ_{r < rows_e} dy[row0 + r, n0 + i] · x[row0 + r, k0 + j]
    const auto job = [&](int64_t tile) {
      const ExpertTile t = gemm::expert_tile(plan, tile, g90::kBM, g90::kBN, args.tiles_n, args.tiles_k);
      const int rows = static_cast<int>(min(args.N - t.n0, static_cast<int64_t>(g90::kBM)));
      const int cols = static_cast<int>(min(args.K - t.k0, static_cast<int64_t>(g90::kBN)));
      return g90::TileJob{static_cast<int>(t.n0), static_cast<int>(t.k0), 0, static_cast<int>(t.row0),
                          static_cast<int>(t.rows), args.out + (t.expert * args.N + t.n0) * args.K + t.k0, args.K,
                          rows, cols, static_cast<int>(t.expert * args.N + t.n0), static_cast<int>(t.k0)};
    };
    // dW keeps 3 slots and 4 boxes: with 1 box its short tiles (16 stages at 512 rows an expert) ran 0.9×
    static_assert(kTiles == Sm90Tiles::kCooperative, "dW: the cooperative tiles");
    g90::run_tiles<kP, true, true, kTmaOut<kP, kOp>, L::kOutBoxes>(smem, args.E * args.tiles_n * args.tiles_k, job,
                                                                    &map_a, &map_b, g90::FloatB{}, nullptr, &map_c);
  } else {
    // y[row0 + i, col0 + j] = Σ_k x[row0 + i, k] · w[e, col0 + j, k]   (dX: w[e, k, col0 + j])
    static_assert(kOp != Op::kForwardTransposedNf4, "NF4 dX runs the sm_80 path");
    constexpr bool kTransposed = kOp == Op::kForwardTransposed;
    constexpr int kTileN = kSm90TileN<kTiles>;
    const auto job = [&](int64_t tile) {
      const RowTile t = gemm::row_tile(plan, tile, g90::kBM, kTileN, args.tiles_n);
      const int cols = static_cast<int>(min(args.N - t.col0, static_cast<int64_t>(kTileN)));
      const int b_row = static_cast<int>(kTransposed ? t.col0 : t.expert * args.N + t.col0);
      return g90::TileJob{static_cast<int>(t.row0), b_row, static_cast<int>(t.expert), 0, static_cast<int>(args.K),
                          args.out + t.row0 * args.N + t.col0, args.N, t.rows, cols, static_cast<int>(t.row0),
                          static_cast<int>(t.col0)};
    };
    if constexpr (kTiles == Sm90Tiles::kPingPong) {
      static_assert(kP == Precision::kTf32 && kOp == Op::kForward, "ping-pong: the tf32 forward");
      g90::run_tiles_pingpong(smem, plan.tile_start[args.E], job, &map_a, &map_b, &map_c);
    } else if constexpr (kNf4<kOp>) {
      __shared__ float code[16];
      gemm::stage_nf4_code(code);
      const gemm::Nf4Stages nf4{code, args.log2_block};
      g90::run_tiles<kP, false, false>(smem, plan.tile_start[args.E], job, &map_a, &map_b, nf4, &map_c);
    } else {
      g90::run_tiles<kP, false, kTransposed, kTmaOut<kP, kOp>, L::kOutBoxes>(smem, plan.tile_start[args.E], job, &map_a,
                                                                              &map_b, g90::FloatB{}, nullptr, &map_c);
    }
  }
#else
  __trap();  // launched only on devices of compute capability 9.0, which run the sm_90a image
#endif
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

bool valid_precision(Precision p) {
  return p == Precision::kTf32 || p == Precision::kBf16 || p == Precision::kHighest;
}

// The current device: multiprocessors, compute capability (10·major + minor) and the shared
// memory a block may opt into.
struct Device {
  int sms = 0, capability = 0, max_smem = 0;
};

// Fills *d; cudaErrorNoKernelImageForDevice below sm_80.
cudaError_t current_device(Device* d) {
  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d->max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess && major < 8) err = cudaErrorNoKernelImageForDevice;
  d->capability = 10 * major + minor;
  return err;
}

// Runs launch(args with the plan): directly when args.plan_in_smem (the blocks build it), else after
// plan_kernel has written it into stream-ordered workspace, freed after the launch.
template <class Launch>
cudaError_t with_plan(GemmArgs args, cudaStream_t stream, Launch launch) {
  if (args.plan_in_smem) return launch(args);
  const int64_t E = args.E;
  int64_t* workspace = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&workspace), plan_bytes(E), stream);
  if (err != cudaSuccess) return err;
  args.plan = Plan{workspace, workspace + E + 1, E};
  plan_kernel<<<1, kPlanThreads, 0, stream>>>(args.group_sizes, E, args.M, args.plan_bm, args.tiles_n, workspace,
                                              workspace + E + 1);
  err = cudaGetLastError();
  if (err == cudaSuccess) err = launch(args);
  const cudaError_t free_err = cudaFreeAsync(workspace, stream);
  return err != cudaSuccess ? err : free_err;
}

// Sets args' tile counts for tiles of bm × bn (dW: tiles of dw[e], n × k; else row tiles × column
// blocks of y) and the plan's row-tile height (0 for dW); returns a bound on the tiles, to size the grid.
template <Op kOp>
int64_t set_tiles(GemmArgs& args, int bm, int bn) {
  if constexpr (kOp == Op::kGradWeight) {
    args.tiles_n = (args.N + bm - 1) / bm;
    args.tiles_k = (args.K + bn - 1) / bn;
    args.plan_bm = 0;
    return args.E * args.tiles_n * args.tiles_k;
  } else {
    args.tiles_n = (args.N + bn - 1) / bn;
    args.tiles_k = 0;
    args.plan_bm = bm;
    return ((args.M + bm - 1) / bm + args.E) * args.tiles_n;  // Σ_e ⌈rows_e / bm⌉ ≤ ⌈M / bm⌉ + E
  }
}

template <class Shape, Op kOp, Precision kP, int kVec>
cudaError_t launch_gemm(GemmArgs args, int64_t max_tiles, const Device& device, cudaStream_t stream) {
  const auto kernel = grouped_gemm_kernel<Shape, kOp, kP, kVec>;
  constexpr size_t kSmem = kSmem80<Shape, kOp, kVec>;
  static_assert(kSmem <= 99 * 1024, "sm_86 and sm_89 give a block at most 99 KB");
  // The plan goes into the blocks' shared memory where that costs no block an SM.
  cudaFuncAttributes attributes{};
  cudaError_t err = cudaFuncGetAttributes(&attributes, kernel);
  const size_t smem_with_plan = kSmem + plan_bytes(args.E);
  const bool plan_fits = attributes.sharedSizeBytes + smem_with_plan <= static_cast<size_t>(device.max_smem);
  const size_t most = plan_fits ? smem_with_plan : kSmem;
  if (err == cudaSuccess && most > 48 * 1024)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
  int per_sm = 0, per_sm_with_plan = 0;
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Shape::kThreads, kSmem);
  if (err == cudaSuccess && plan_fits)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_with_plan, kernel, Shape::kThreads, smem_with_plan);
  if (err != cudaSuccess) return err;
  if (per_sm == 0) return cudaErrorInvalidConfiguration;  // the device has too little shared memory
  args.plan_in_smem = per_sm_with_plan == per_sm;
  const size_t smem = args.plan_in_smem ? smem_with_plan : kSmem;
  const int64_t grid = std::min<int64_t>(max_tiles, static_cast<int64_t>(device.sms) * per_sm);
  return with_plan(args, stream, [&](const GemmArgs& planned) {
    kernel<<<static_cast<unsigned>(grid), Shape::kThreads, smem, stream>>>(planned);
    return cudaGetLastError();
  });
}

template <class Shape, Op kOp, Precision kP>
cudaError_t run(GemmArgs args, bool vec4, const Device& device, cudaStream_t stream) {
  const int64_t max_tiles = set_tiles<kOp>(args, Shape::kBM, Shape::kBN);
  return vec4 ? launch_gemm<Shape, kOp, kP, 4>(args, max_tiles, device, stream)
              : launch_gemm<Shape, kOp, kP, 1>(args, max_tiles, device, stream);
}

// A TMA descriptor of elements `type` at base (16-byte aligned): extents dims (dims[0] contiguous),
// byte pitches (multiples of 16) of dims 1.. in pitches, boxes of box, zeros outside; float32
// operands (box[0] = 32: 128 bytes) are 128-byte swizzled, NF4 codes and absmax are not. The
// driver's encoder is looked up once through the runtime (no link to libcuda); false where the
// driver lacks it.
bool encode_tma(CUtensorMap* map, const void* base, cuuint32_t rank, const cuuint64_t* dims, const cuuint64_t* pitches,
                const cuuint32_t* box, CUtensorMapDataType type = CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
                CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
    using Encode = PFN_cuTensorMapEncodeTiled_v12000;
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess ? reinterpret_cast<Encode>(fn) : nullptr;
  }();
  if (!encode) return false;
  const cuuint32_t steps[3] = {1, 1, 1};
  return encode(map, type, rank, const_cast<void*>(base), dims, pitches, box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Float32 operands of the sm_90a kernels: tf32 ones are rounded to tf32 (to nearest even) by the
// TMA unit as it copies them, since wgmma would truncate; bf16 ones are rounded by the producers.
CUtensorMapDataType operand_type(Precision precision) {
  return precision == Precision::kTf32 ? CU_TENSOR_MAP_DATA_TYPE_TFLOAT32 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
}

// rows × depth, row-major: boxes of 32 × box_rows (x; w in the forward pass).
bool encode_tma_rows(CUtensorMap* map, const float* base, int64_t rows, int64_t depth, int box_rows,
                     CUtensorMapDataType type) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(depth), static_cast<cuuint64_t>(rows)};
  const cuuint64_t pitches[1] = {static_cast<cuuint64_t>(depth) * sizeof(float)};
  const cuuint32_t box[2] = {gemm::sm90::kBK, static_cast<cuuint32_t>(box_rows)};
  return encode_tma(map, base, 2, dims, pitches, box, type);
}

// An output [rows, cols] of tf32, for TMA stores: boxes of 32 columns × 64 rows (store_tile_tma).
bool encode_tma_out(CUtensorMap* map, const float* out, int64_t rows, int64_t cols) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t pitches[1] = {static_cast<cuuint64_t>(cols) * sizeof(float)};
  const cuuint32_t box[2] = {32, 64};
  return encode_tma(map, out, 2, dims, pitches, box);
}

// [E, K, N] (w of dX; dy, x of dW with E = 1): boxes of 32 columns × 32 k × 1, so that k past K reads zeros.
bool encode_tma_kn(CUtensorMap* map, const float* w, int64_t E, int64_t K, int64_t N, CUtensorMapDataType type) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(N), static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(E)};
  const cuuint64_t pitches[2] = {static_cast<cuuint64_t>(N) * sizeof(float), static_cast<cuuint64_t>(K * N) * sizeof(float)};
  const cuuint32_t box[3] = {32, gemm::sm90::kBK, 1};
  return encode_tma(map, w, 3, dims, pitches, box, type);
}

// NF4 experts of [N, K] as [E·N rows, K/2] bytes of codes (boxes of 16 × kBN: a stage's 32 codes)
// and [E·N rows, K/blocksize] float32 absmax (boxes of 4 × kBN); needs K % (4 · blocksize) == 0.
bool encode_tma_nf4(CUtensorMap* codes, CUtensorMap* absmax, const uint8_t* packed, const float* scales, int64_t rows,
                    int64_t K, int blocksize) {
  const cuuint64_t code_dims[2] = {static_cast<cuuint64_t>(K / 2), static_cast<cuuint64_t>(rows)};
  const cuuint64_t code_pitches[1] = {static_cast<cuuint64_t>(K / 2)};
  const cuuint32_t code_box[2] = {16, gemm::sm90::kBN};
  const cuuint64_t scale_dims[2] = {static_cast<cuuint64_t>(K / blocksize), static_cast<cuuint64_t>(rows)};
  const cuuint64_t scale_pitches[1] = {static_cast<cuuint64_t>(K / blocksize) * sizeof(float)};
  const cuuint32_t scale_box[2] = {4, gemm::sm90::kBN};
  return encode_tma(codes, packed, 2, code_dims, code_pitches, code_box, CU_TENSOR_MAP_DATA_TYPE_UINT8,
                    CU_TENSOR_MAP_SWIZZLE_NONE) &&
         encode_tma(absmax, scales, 2, scale_dims, scale_pitches, scale_box, CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
                    CU_TENSOR_MAP_SWIZZLE_NONE);
}

template <Precision kP, Op kOp, Sm90Tiles kTiles>
cudaError_t run_sm90(GemmArgs args, const CUtensorMap& map_a, const CUtensorMap& map_b, const CUtensorMap& map_c,
                     const Device& device, cudaStream_t stream) {
  namespace g90 = gemm::sm90;
  const int64_t max_tiles = set_tiles<kOp>(args, g90::kBM, kSm90TileN<kTiles>);
  // The plan follows the pipeline in shared memory where the device has room (one block an SM).
  const auto kernel = grouped_gemm_sm90_kernel<kP, kOp, kTiles>;
  cudaFuncAttributes attributes{};
  const cudaError_t err = cudaFuncGetAttributes(&attributes, kernel);
  if (err != cudaSuccess) return err;
  constexpr size_t kSmem = Sm90Layout<kP, kOp, kTiles>::kSmemBytes;
  args.plan_in_smem = attributes.sharedSizeBytes + kSmem + plan_bytes(args.E) <= static_cast<size_t>(device.max_smem);
  const size_t smem = kSmem + (args.plan_in_smem ? plan_bytes(args.E) : 0);
  return with_plan(args, stream, [&](const GemmArgs& planned) {
    const cudaError_t set = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (set != cudaSuccess) return set;
    kernel<<<static_cast<unsigned>(std::min<int64_t>(max_tiles, device.sms)), g90::kThreads, smem, stream>>>(
        planned, map_a, map_b, map_c);
    return cudaGetLastError();
  });
}

// deep_ring: tf32 takes Sm90Tiles::kDeepRing (the forward and dX).
template <Op kOp>
cudaError_t run_sm90(const GemmArgs& args, const CUtensorMap& map_a, const CUtensorMap& map_b,
                     Precision precision, const Device& device, cudaStream_t stream,
                     const CUtensorMap* map_c = nullptr, bool deep_ring = false) {
  const CUtensorMap& c = map_c ? *map_c : map_b;  // unused unless NF4 or tf32 (TMA stores)
  constexpr auto kCooperative = Sm90Tiles::kCooperative;
  if (precision == Precision::kBf16)
    return run_sm90<Precision::kBf16, kOp, kCooperative>(args, map_a, map_b, c, device, stream);
  if constexpr (kOp == Op::kForward || kOp == Op::kForwardTransposed)
    if (deep_ring) return run_sm90<Precision::kTf32, kOp, Sm90Tiles::kDeepRing>(args, map_a, map_b, c, device, stream);
  return run_sm90<Precision::kTf32, kOp, kCooperative>(args, map_a, map_b, c, device, stream);
}

template <Op kOp, Precision kP>
cudaError_t run(const GemmArgs& args, bool vec4, const Device& device, cudaStream_t stream) {
  if (args.N <= kThinN) return run<ShapeFor<kOp, kP, Thin::kN>, kOp, kP>(args, vec4, device, stream);
  if constexpr (kOp == Op::kGradWeight)
    if (args.K <= kThinN) return run<ShapeFor<kOp, kP, Thin::kK>, kOp, kP>(args, vec4, device, stream);
  return run<ShapeFor<kOp, kP, Thin::kNo>, kOp, kP>(args, vec4, device, stream);
}

template <Op kOp>
cudaError_t run(const GemmArgs& args, Precision precision, bool vec4, const Device& device,
                cudaStream_t stream) {
  switch (precision) {
    case Precision::kTf32: return run<kOp, Precision::kTf32>(args, vec4, device, stream);
    case Precision::kBf16: return run<kOp, Precision::kBf16>(args, vec4, device, stream);
    case Precision::kHighest: return run<kOp, Precision::kHighest>(args, vec4, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t grouped_gemm(const float* x, const float* w, const int32_t* group_sizes, float* y, int64_t M, int64_t K,
                         int64_t N, int64_t E, bool transpose_weight, Precision precision, cudaStream_t stream) {
  if (M < 0 || K < 0 || N < 0 || E < 0 || !valid_precision(precision)) return cudaErrorInvalidValue;
  if ((M > 0 && K > 0 && !x) || (E > 0 && N > 0 && K > 0 && !w) || (E > 0 && !group_sizes) ||
      (M > 0 && N > 0 && !y))
    return cudaErrorInvalidValue;
  if (M == 0 || N == 0 || E == 0) return cudaSuccess;  // no row of y is owned by an expert
  Device device;
  const cudaError_t err = current_device(&device);
  if (err != cudaSuccess) return err;

  GemmArgs args{};
  args.x = x, args.w = w, args.out = y, args.M = M, args.K = K, args.N = N, args.E = E;
  args.group_sizes = group_sizes;
  args.out_vec4 = N % 4 == 0 && aligned(y, 16);
  // 16-byte copies: rows of x, w and the extents along them are multiples of 4 floats.
  const bool vec4 = K % 4 == 0 && (!transpose_weight || N % 4 == 0) && aligned(x, 16) && aligned(w, 16);
  // The sm_90a path where it was measured faster (H100, H200): tiles at least as wide as its 256
  // columns, and outside the shallow-and-wide corner (K < 512, N > 1024) where storing y dominates
  // and the sm_80 path's staged 16-byte row stores win. tf32 (no rounding pass on sm_90a) wins
  // there from K = 128 on (H200, N = 2048, forward and dX: +13–19 % at K = 128, +3–47 % at 256,
  // the forward −5 to −9 % at K = 64), and dX, with w read into registers, from K = 64 on (H200,
  // N = 1536–4096: +15–21 % at M = 65536, +7–9 % at 16384). dX in bf16 also needs a mean of 256
  // rows per expert (at 128 it measured 2 % slower: ragged row tiles; E = 128).
  const int shallow_min = precision == Precision::kTf32 ? (transpose_weight ? 64 : 128) : 512;
  const bool sm90_shape = N >= gemm::sm90::kBN && K >= 64 && (K >= shallow_min || N <= 1024) &&
                          (!transpose_weight || precision == Precision::kTf32 || M >= 256 * E);
  const int64_t kCoord = int64_t{1} << 31;  // TMA coordinates are 32-bit
  CUtensorMap map_x, map_w;
  const CUtensorMapDataType type = operand_type(precision);
  if (device.capability == 90 && (precision == Precision::kTf32 || precision == Precision::kBf16) && sm90_shape && vec4 &&
      args.out_vec4 && std::max({M, K, N, E, transpose_weight ? 0 : E * N}) < kCoord &&
      encode_tma_rows(&map_x, x, M, K, gemm::sm90::kBM, type)) {
    CUtensorMap map_y;  // tf32's TMA stores of y
    const bool tf32 = precision == Precision::kTf32;
    const CUtensorMap* out = tf32 ? &map_y : nullptr;
    // tf32 with a mean of ≥ 192 rows an expert: 4 slots, the TMA stores through 1 box a warpgroup
    // (H100, uniform routing, E = 128, M = 24576–65536: forward (K = 2048 → N = 768) 1.00–1.05×, dX
    // 0.98–1.06×; at M = 16384, 128 rows, 0.97–0.99×, so 3 slots and 4 boxes there)
    const bool deep_ring = M >= 192 * E;
    if (!tf32 || encode_tma_out(&map_y, y, M, N)) {
      if (transpose_weight && encode_tma_kn(&map_w, w, E, K, N, type))
        return run_sm90<Op::kForwardTransposed>(args, map_x, map_w, precision, device, stream, out, deep_ring);
      // tf32 forward up to K = 1024: ping-pong tiles (H100, uniform routing, K = 768 → N = 2048: 1.04–1.10×
      // at M = 65536, 1.01–1.02× at 16384; K = 2048 → N = 768: 0.96–0.99× and 0.98×, so run_tiles there)
      constexpr int64_t kPingPongMaxK = 1024;
      if (tf32 && !transpose_weight && K <= kPingPongMaxK &&
          encode_tma_rows(&map_w, w, E * N, K, kSm90TileN<Sm90Tiles::kPingPong>, type))
        return run_sm90<Precision::kTf32, Op::kForward, Sm90Tiles::kPingPong>(args, map_x, map_w, map_y, device,
                                                                              stream);
      if (!transpose_weight && encode_tma_rows(&map_w, w, E * N, K, kSm90TileN<Sm90Tiles::kCooperative>, type))
        return run_sm90<Op::kForward>(args, map_x, map_w, precision, device, stream, out, deep_ring);
    }
  }
  return transpose_weight ? run<Op::kForwardTransposed>(args, precision, vec4, device, stream)
                          : run<Op::kForward>(args, precision, vec4, device, stream);
}

cudaError_t grouped_gemm_nf4(const float* x, const uint8_t* packed, const float* absmax, const int32_t* group_sizes,
                             float* y, int64_t M, int64_t K, int64_t N, int64_t E, int blocksize, bool transpose_weight,
                             Precision precision, cudaStream_t stream) {
  const int log2_block = blocksize > 0 ? __builtin_ctz(static_cast<unsigned>(blocksize)) : 0;
  if (M < 0 || K < 0 || N < 0 || E < 0 || !valid_precision(precision) || blocksize < 32 || blocksize > 4096 ||
      (blocksize & (blocksize - 1)) != 0 || (E > 1 && N * K % 2 != 0))
    return cudaErrorInvalidValue;
  if ((M > 0 && K > 0 && !x) || (E > 0 && N > 0 && K > 0 && (!packed || !absmax)) || (E > 0 && !group_sizes) ||
      (M > 0 && N > 0 && !y))
    return cudaErrorInvalidValue;
  if (M == 0 || N == 0 || E == 0) return cudaSuccess;
  Device device;
  const cudaError_t err = current_device(&device);
  if (err != cudaSuccess) return err;

  GemmArgs args{};
  args.x = x, args.out = y, args.M = M, args.K = K, args.N = N, args.E = E;
  args.group_sizes = group_sizes;
  args.out_vec4 = N % 4 == 0 && aligned(y, 16);
  args.nf4 = packed, args.absmax = absmax, args.log2_block = log2_block;
  args.nf4_bytes = (N * K + 1) / 2, args.nf4_blocks = (N * K + blocksize - 1) / blocksize;
  // Rows of w (K long, or N when transposed) start on 8-code boundaries in every expert.
  args.nf4_aligned = aligned(packed, 4) && args.nf4_bytes % 4 == 0 && (transpose_weight ? N : K) % 8 == 0;
  const bool vec4 = K % 4 == 0 && aligned(x, 16);
  // The sm_90a forward (tf32, bf16): the float forward's shape rule, and rows of whole groups of 4
  // blocks, so that codes and absmax tile as TMA boxes (encode_tma_nf4). x stays float32 in its
  // map in tf32 too: the producers copy it into the math ring and round it on the way.
  const bool sm90_shape = N >= gemm::sm90::kBN && K >= 64 && (K >= 512 || N <= 1024) && K % (4 * blocksize) == 0;
  CUtensorMap map_x, map_codes, map_absmax;
  if (device.capability == 90 && !transpose_weight && (precision == Precision::kTf32 || precision == Precision::kBf16) &&
      sm90_shape && vec4 && args.out_vec4 && aligned(packed, 16) && aligned(absmax, 16) &&
      std::max(M, E * N) < (int64_t{1} << 31) &&
      encode_tma_rows(&map_x, x, M, K, gemm::sm90::kBM, CU_TENSOR_MAP_DATA_TYPE_FLOAT32) &&
      encode_tma_nf4(&map_codes, &map_absmax, packed, absmax, E * N, K, blocksize))
    return run_sm90<Op::kForwardNf4>(args, map_x, map_codes, precision, device, stream, &map_absmax);
  return transpose_weight ? run<Op::kForwardTransposedNf4>(args, precision, vec4, device, stream)
                          : run<Op::kForwardNf4>(args, precision, vec4, device, stream);
}

cudaError_t grouped_gemm_grad_weight(const float* x, const float* dy, const int32_t* group_sizes, float* dw,
                                     int64_t M, int64_t K, int64_t N, int64_t E, Precision precision,
                                     cudaStream_t stream) {
  if (M < 0 || K < 0 || N < 0 || E < 0 || !valid_precision(precision)) return cudaErrorInvalidValue;
  if ((M > 0 && K > 0 && !x) || (M > 0 && N > 0 && !dy) || (E > 0 && !group_sizes) ||
      (E > 0 && N > 0 && K > 0 && !dw))
    return cudaErrorInvalidValue;
  if (E == 0 || N == 0 || K == 0) return cudaSuccess;  // dw is empty
  Device device;
  const cudaError_t err = current_device(&device);
  if (err != cudaSuccess) return err;

  GemmArgs args{};
  args.x = x, args.w = dy, args.out = dw, args.M = M, args.K = K, args.N = N, args.E = E;
  args.group_sizes = group_sizes;
  args.out_vec4 = K % 4 == 0 && aligned(dw, 16);
  const bool vec4 = K % 4 == 0 && N % 4 == 0 && aligned(x, 16) && aligned(dy, 16);
  // The sm_90a path where it was measured faster (H100, E = 128): N, K ≥ 256, and a mean of 256
  // (bf16) or 128 (tf32) rows per expert, the depth of each tile (at 32 rows: 12 % slower).
  const bool sm90_shape = N >= 256 && K >= 256 && M >= (precision == Precision::kBf16 ? 256 : 128) * E;
  CUtensorMap map_dy, map_x, map_dw;  // map_dw: dw as [E·N, K], for tf32's TMA stores
  const CUtensorMapDataType type = operand_type(precision);
  const bool tf32 = precision == Precision::kTf32;
  if (device.capability == 90 && (tf32 || precision == Precision::kBf16) && sm90_shape && vec4 && args.out_vec4 &&
      std::max({M, K, E * N}) < (int64_t{1} << 31) && encode_tma_kn(&map_dy, dy, 1, M, N, type) &&
      encode_tma_kn(&map_x, x, 1, M, K, type) && (!tf32 || encode_tma_out(&map_dw, dw, E * N, K)))
    return run_sm90<Op::kGradWeight>(args, map_dy, map_x, precision, device, stream, tf32 ? &map_dw : nullptr);
  return run<Op::kGradWeight>(args, precision, vec4, device, stream);
}

}  // namespace moe::cuda
