// Routing kernels of the MoE layer (contract in moe_cuda.h): the softmax top-k router, the stable
// sort of the routed rows by expert, gathering rows into expert order and combining them back,
// and the SwiGLU product. All are memory- or latency-bound; semantics follow the CPU kernels
// (src/ops/moe_route.ts, src/kernels/any/MoeSortByExpert.ts) exactly.
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "moe_cuda.h"

namespace moe::cuda {
namespace {

constexpr int kMaxExperts = 1024;

template <class T>
constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Butterfly reductions: every lane ends with the same value (each step adds equal pairs).
template <class T>
__device__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(~0u, v, offset);
  return v;
}

__device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(~0u, v, offset));
  return v;
}

// W consecutive floats moved as one access: W = 4 gives 16-byte loads and stores.
template <int W>
struct alignas(4 * W) Vec {
  float v[W];
};

// Calls f(std::integral_constant<int, W>) with W = 4 when every row start is 16-byte aligned
// (16-byte aligned pointers, lengths a multiple of 4 floats), else with W = 1.
template <class F>
void with_width(bool vec4, F f) {
  if (vec4)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 1>{});
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ------------------------------------------------------------------------------------------------
// route_top_k: one warp per token.

constexpr int kRouteWarps = 4;  // tokens per block

// Lane l holds the experts e = l + 32·i, i < kSlots (E ≤ 32·kSlots):
//   p[e] = exp(x[e] - max x) / Σ_e' exp(x[e'] - max x)     (float32; the sum in double, as tfjs sums)
// then k rounds of a warp arg-max pick the experts best first (ties: lower id). Pick s = 32·q + l
// stays in lane l; k ≤ E means at most kSlots picks per lane.
template <int kSlots>
__global__ void __launch_bounds__(32 * kRouteWarps)
    route_top_k_kernel(const float* __restrict__ logits, int64_t T, int E, int k, bool normalize,
                       float* __restrict__ weights, int32_t* __restrict__ expert_ids) {
  const int lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + threadIdx.x / 32;
  if (t >= T) return;  // whole warps leave together
  const float* x = logits + t * E;

  float p[kSlots];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    const int e = lane + 32 * i;
    p[i] = e < E ? x[e] : -INFINITY;
    m = fmaxf(m, p[i]);
  }
  m = warp_max(m);
  double sum = 0.0;
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    p[i] = expf(p[i] - m);  // 0 past E
    sum += p[i];
  }
  const float total = float(warp_sum(sum));

  // Selection keys: the bits of p ≥ 0 as int order like p; -1 marks "no expert" and "taken".
  int key[kSlots];
#pragma unroll
  for (int i = 0; i < kSlots; ++i) key[i] = lane + 32 * i < E ? __float_as_int(p[i] / total) : -1;

  // Picks in rounds of 32; this lane's pick of the latest round sits in w[0], id[0].
  float w[kSlots] = {};
  int id[kSlots] = {};
  for (int s0 = 0; s0 < k; s0 += 32) {
#pragma unroll
    for (int i = kSlots - 1; i > 0; --i) {
      w[i] = w[i - 1];
      id[i] = id[i - 1];
    }
    for (int s = s0; s < min(k, s0 + 32); ++s) {
      int best = -1, slot = 0;  // this lane's best: the largest key, the lowest slot among equals
#pragma unroll
      for (int i = 0; i < kSlots; ++i) {
        if (key[i] > best) {
          best = key[i];
          slot = i;
        }
      }
      // The warp's best: the largest key, then the lowest expert id (an untaken one exists: k ≤ E).
      const int top = __reduce_max_sync(~0u, best);
      const int e = __reduce_min_sync(~0u, best == top ? lane + 32 * slot : INT_MAX);
#pragma unroll
      for (int i = 0; i < kSlots; ++i)
        if (lane + 32 * i == e) key[i] = -1;
      if (lane == s - s0) {
        w[0] = __int_as_float(top);
        id[0] = e;
      }
    }
  }

  // w[i] is pick s = 32·(last - i) + lane.
  const int last = (k - 1) / 32;
  double chosen = 0.0;
#pragma unroll
  for (int i = 0; i < kSlots; ++i)
    if (i <= last && 32 * (last - i) + lane < k) chosen += w[i];
  const float scale = normalize ? float(warp_sum(chosen)) : 1.0f;  // w / Σ_s w[s]
#pragma unroll
  for (int i = 0; i < kSlots; ++i) {
    const int s = 32 * (last - i) + lane;
    if (i <= last && s < k) {
      weights[t * k + s] = w[i] / scale;
      expert_ids[t * k + s] = id[i];
    }
  }
}

// The smallest kSlots ∈ {1, 2, 4, ..., 32} with E ≤ 32·kSlots.
template <int kSlots>
void launch_route_top_k(const float* logits, int64_t T, int E, int k, bool normalize, float* weights,
                        int32_t* expert_ids, cudaStream_t stream) {
  if constexpr (kSlots < kMaxExperts / 32) {
    if (E > 32 * kSlots)
      return launch_route_top_k<2 * kSlots>(logits, T, E, k, normalize, weights, expert_ids, stream);
  }
  const unsigned blocks = unsigned(ceil_div<int64_t>(T, kRouteWarps));
  route_top_k_kernel<kSlots><<<blocks, 32 * kRouteWarps, 0, stream>>>(logits, T, E, k, normalize, weights,
                                                                       expert_ids);
}

// ------------------------------------------------------------------------------------------------
// sort_by_expert: a stable counting sort over tiles of kTileRows rows, one block per tile b.
//   1. count_tiles_kernel:   count[e·tiles + b] = #{rows r of tile b : key(r) = e}, e ≤ E
//   2. exclusive prefix sum of count (CUB, in place): first[e·tiles + b], the first sorted row of
//      expert e's rows of tile b, since the sorted order is (key, tile, row)
//   3. scatter_tiles_kernel: j = first[key·tiles + b] + #{earlier rows of tile b with that key}:
//      sort_index[j] = r, inverse_sort_index[r] = j, token_index[j] = r / k
// key(r) = expert_ids[r] where it lies in [0, E), else E: such rows go last and are counted nowhere.

constexpr int kTileWarps = 8, kTileItems = 8;  // warp w ranks rows [256·w, 256·w + 256) of a tile
constexpr int kTileThreads = 32 * kTileWarps, kTileRows = kTileThreads * kTileItems;
constexpr int kKeysPerThread = ceil_div(kMaxExperts + 1, kTileThreads);  // keys 0..E in a block scan

// Row of this thread's item i: chunk i of 32 consecutive rows of its warp's 256.
__device__ int64_t tile_row(int i) {
  return int64_t(blockIdx.x) * kTileRows + (threadIdx.x / 32) * (32 * kTileItems) + 32 * i + threadIdx.x % 32;
}

// key(r), and -1 past the last row.
__device__ int sort_key(const int32_t* __restrict__ expert_ids, int64_t r, int64_t R, int E) {
  if (r >= R) return -1;
  const int32_t id = expert_ids[r];
  return id >= 0 && id < E ? id : E;
}

__global__ void __launch_bounds__(kTileThreads)
    count_tiles_kernel(const int32_t* __restrict__ expert_ids, int64_t R, int E, int tiles, int32_t* __restrict__ count) {
  __shared__ int tile_count[kMaxExperts + 1];
  for (int e = threadIdx.x; e <= E; e += kTileThreads) tile_count[e] = 0;
  __syncthreads();
  int key[kTileItems];
#pragma unroll
  for (int i = 0; i < kTileItems; ++i) key[i] = sort_key(expert_ids, tile_row(i), R, E);
#pragma unroll
  for (int i = 0; i < kTileItems; ++i)
    if (key[i] >= 0) atomicAdd(&tile_count[key[i]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e <= E; e += kTileThreads) count[int64_t(e) * tiles + blockIdx.x] = tile_count[e];
}

// The tile is first sorted in shared memory (position p in the tile's sorted order), so that the
// writes of sort_index and token_index go out in runs of consecutive j.
__global__ void __launch_bounds__(kTileThreads)
    scatter_tiles_kernel(const int32_t* __restrict__ expert_ids, int64_t R, int E, int k, int tiles,
                         const int32_t* __restrict__ first, int32_t* __restrict__ sort_index,
                         int32_t* __restrict__ inverse_sort_index, int32_t* __restrict__ token_index,
                         int32_t* __restrict__ group_sizes) {
  using BlockScan = cub::BlockScan<int, kTileThreads>;
  __shared__ typename BlockScan::TempStorage scan;
  __shared__ uint16_t before[kTileWarps][kMaxExperts + 1];  // rows of key e in warps < w, earlier chunks
  __shared__ int start[kMaxExperts + 1];                    // p of key e's first row in the tile
  __shared__ int shift[kMaxExperts + 1];                    // j - p for key e
  __shared__ int sorted_row[kTileRows], sorted_j[kTileRows];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int e = threadIdx.x; e <= E; e += kTileThreads)
    for (int w = 0; w < kTileWarps; ++w) before[w][e] = 0;
  int key[kTileItems], rank[kTileItems];
#pragma unroll
  for (int i = 0; i < kTileItems; ++i) key[i] = sort_key(expert_ids, tile_row(i), R, E);
  __syncthreads();

  // Rank within the warp: rows of the same key in earlier chunks, then in lower lanes of this chunk.
#pragma unroll
  for (int i = 0; i < kTileItems; ++i) {
    const unsigned peers = __match_any_sync(~0u, key[i]);
    const int n = key[i] >= 0 ? before[warp][key[i]] : 0;
    rank[i] = n + __popc(peers & ((1u << lane) - 1));
    __syncwarp();
    if (key[i] >= 0 && lane == __ffs(peers) - 1) before[warp][key[i]] = n + __popc(peers);
    __syncwarp();
  }
  __syncthreads();

  // Per key: the counts of the warps become their exclusive prefix, and a block scan of the tile's
  // counts gives where each key starts in the tile's sorted order.
  int count[kKeysPerThread];
#pragma unroll
  for (int q = 0; q < kKeysPerThread; ++q) {
    const int e = threadIdx.x * kKeysPerThread + q;
    count[q] = 0;
    for (int w = 0; w < kTileWarps && e <= E; ++w) {
      const int n = before[w][e];
      before[w][e] = uint16_t(count[q]);
      count[q] += n;
    }
  }
  BlockScan(scan).ExclusiveSum(count, count);
#pragma unroll
  for (int q = 0; q < kKeysPerThread; ++q) {
    const int e = threadIdx.x * kKeysPerThread + q;
    if (e <= E) {
      start[e] = count[q];
      shift[e] = first[int64_t(e) * tiles + blockIdx.x] - count[q];
    }
  }
  __syncthreads();

#pragma unroll
  for (int i = 0; i < kTileItems; ++i) {
    if (key[i] < 0) continue;
    const int p = start[key[i]] + before[warp][key[i]] + rank[i], j = p + shift[key[i]];
    const int32_t r = int32_t(tile_row(i));
    inverse_sort_index[r] = j;
    sorted_row[p] = r;
    sorted_j[p] = j;
  }
  __syncthreads();
  const int rows = int(min(R - int64_t(blockIdx.x) * kTileRows, int64_t(kTileRows)));
  for (int p = threadIdx.x; p < rows; p += kTileThreads) {
    sort_index[sorted_j[p]] = sorted_row[p];
    token_index[sorted_j[p]] = sorted_row[p] / k;
  }

  // Expert e's rows end where expert e + 1's (tile 0) begin.
  if (blockIdx.x == 0)
    for (int e = threadIdx.x; e < E; e += kTileThreads)
      group_sizes[e] = first[int64_t(e + 1) * tiles] - first[int64_t(e) * tiles];
}

// ------------------------------------------------------------------------------------------------
// gather_rows, combine_rows: a block moves up to kRowThreads·kRowUnroll vectors of one output row.

constexpr int kRowThreads = 128, kRowUnroll = 4;
constexpr int64_t kMaxRowFloats = int64_t(65535) * kRowThreads * kRowUnroll;  // gridDim.y ≤ 65535

struct RowLaunch {
  dim3 grid;
  int threads;
};

// Blocks for `rows` rows of hv vectors: grid.x = row, grid.y = block of columns.
RowLaunch row_launch(int64_t rows, int64_t hv) {
  const int threads = int(std::min<int64_t>(kRowThreads, ceil_div<int64_t>(ceil_div<int64_t>(hv, kRowUnroll), 32) * 32));
  return {dim3(unsigned(rows), unsigned(ceil_div<int64_t>(hv, int64_t(threads) * kRowUnroll))), threads};
}

// Column (in vectors) of unrolled step u of this thread.
__device__ int64_t row_column(int u) {
  return (int64_t(blockIdx.y) * kRowUnroll + u) * blockDim.x + threadIdx.x;
}

// out[j, :] = x[index[j], :], zeros where index[j] ∉ [0, rows); j = blockIdx.x.
template <int W>
__global__ void __launch_bounds__(kRowThreads)
    gather_rows_kernel(const float* __restrict__ x, int64_t rows, int64_t H, const int32_t* __restrict__ index,
                       float* __restrict__ out) {
  const int64_t j = blockIdx.x, hv = H / W;
  const int32_t src = index[j];
  const bool valid = src >= 0 && src < rows;
  const Vec<W>* in = reinterpret_cast<const Vec<W>*>(x + (valid ? src : 0) * H);
  Vec<W>* dst = reinterpret_cast<Vec<W>*>(out + j * H);
  Vec<W> v[kRowUnroll];
#pragma unroll
  for (int u = 0; u < kRowUnroll; ++u) {  // all loads first: kRowUnroll in flight per thread
    const int64_t c = row_column(u);
    v[u] = valid && c < hv ? in[c] : Vec<W>{};
  }
#pragma unroll
  for (int u = 0; u < kRowUnroll; ++u)
    if (row_column(u) < hv) dst[row_column(u)] = v[u];
}

// out[t, :] = Σ_{s<k} weights[t, s] · y[inverse_sort_index[t·k + s], :], summed in order s = 0..k-1
// (deterministic); rows outside [0, T·k) add nothing. t = blockIdx.x.
template <int W>
__global__ void __launch_bounds__(kRowThreads)
    combine_rows_kernel(const float* __restrict__ y, int64_t H, const int32_t* __restrict__ inverse_sort_index,
                        const float* __restrict__ weights, int64_t T, int k, float* __restrict__ out) {
  const int64_t t = blockIdx.x, hv = H / W;
  Vec<W> acc[kRowUnroll] = {};
  for (int s = 0; s < k; ++s) {
    const int32_t r = inverse_sort_index[t * k + s];
    if (r < 0 || r >= T * k) continue;
    const float w = weights[t * k + s];
    const Vec<W>* in = reinterpret_cast<const Vec<W>*>(y + r * H);
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int64_t c = row_column(u);
      if (c < hv) {
        const Vec<W> v = in[c];
#pragma unroll
        for (int i = 0; i < W; ++i) acc[u].v[i] += w * v.v[i];
      }
    }
  }
  Vec<W>* dst = reinterpret_cast<Vec<W>*>(out + t * H);
#pragma unroll
  for (int u = 0; u < kRowUnroll; ++u)
    if (row_column(u) < hv) dst[row_column(u)] = acc[u];
}

// ------------------------------------------------------------------------------------------------
// silu_mul: one vector per thread.

constexpr int kSiluThreads = 256;

// h[i] = gate[i] / (1 + exp(-gate[i])) · up[i], for n vectors.
template <int W>
__global__ void __launch_bounds__(kSiluThreads)
    silu_mul_kernel(const float* __restrict__ gate, const float* __restrict__ up, int64_t n, float* __restrict__ h) {
  const int64_t i = int64_t(blockIdx.x) * kSiluThreads + threadIdx.x;
  if (i >= n) return;
  const Vec<W> g = reinterpret_cast<const Vec<W>*>(gate)[i], u = reinterpret_cast<const Vec<W>*>(up)[i];
  Vec<W> r;
#pragma unroll
  for (int c = 0; c < W; ++c) r.v[c] = g.v[c] / (1.0f + expf(-g.v[c])) * u.v[c];
  reinterpret_cast<Vec<W>*>(h)[i] = r;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Launchers: check the scalars, launch, return the launch error.

cudaError_t route_top_k(const float* logits, int64_t T, int64_t E, int k, bool normalize, float* weights,
                        int32_t* expert_ids, cudaStream_t stream) {
  if (T < 0 || T > INT_MAX || E < 1 || E > kMaxExperts || k < 1 || k > E ||
      (T > 0 && (!logits || !weights || !expert_ids)))
    return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  launch_route_top_k<1>(logits, T, int(E), k, normalize, weights, expert_ids, stream);
  return cudaGetLastError();
}

cudaError_t sort_by_expert(const int32_t* expert_ids, int64_t R, int64_t E, int k, int32_t* group_sizes,
                           int32_t* sort_index, int32_t* inverse_sort_index, int32_t* token_index,
                           cudaStream_t stream) {
  if (R < 0 || R > INT_MAX || E < 1 || E > kMaxExperts || k < 1 || !group_sizes ||
      (R > 0 && (!expert_ids || !sort_index || !inverse_sort_index || !token_index)))
    return cudaErrorInvalidValue;
  if (R == 0) return cudaMemsetAsync(group_sizes, 0, E * sizeof(int32_t), stream);

  const int tiles = int(ceil_div<int64_t>(R, kTileRows));
  const int buckets = tiles * int(E + 1);  // counts per (key, tile)
  size_t scan_bytes = 0;
  cudaError_t err =
      cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<int32_t*>(nullptr), buckets, stream);
  if (err != cudaSuccess) return err;
  const size_t count_bytes = (buckets * sizeof(int32_t) + 255) / 256 * 256;
  char* workspace = nullptr;  // the counts, then CUB's temporary storage
  err = cudaMallocAsync(reinterpret_cast<void**>(&workspace), count_bytes + scan_bytes, stream);
  if (err != cudaSuccess) return err;
  int32_t* count = reinterpret_cast<int32_t*>(workspace);

  count_tiles_kernel<<<tiles, kTileThreads, 0, stream>>>(expert_ids, R, int(E), tiles, count);
  err = cudaGetLastError();
  if (err == cudaSuccess) err = cub::DeviceScan::ExclusiveSum(workspace + count_bytes, scan_bytes, count, buckets, stream);
  if (err == cudaSuccess) {
    scatter_tiles_kernel<<<tiles, kTileThreads, 0, stream>>>(expert_ids, R, int(E), k, tiles, count, sort_index,
                                                             inverse_sort_index, token_index, group_sizes);
    err = cudaGetLastError();
  }
  const cudaError_t freed = cudaFreeAsync(workspace, stream);
  return err != cudaSuccess ? err : freed;
}

cudaError_t gather_rows(const float* x, int64_t rows, int64_t H, const int32_t* index, int64_t R, float* out,
                        cudaStream_t stream) {
  if (rows < 0 || H < 0 || H > kMaxRowFloats || R < 0 || R > INT_MAX ||
      (R > 0 && H > 0 && (!index || !out || (rows > 0 && !x))))
    return cudaErrorInvalidValue;
  if (R == 0 || H == 0) return cudaSuccess;
  with_width(H % 4 == 0 && aligned16(x) && aligned16(out), [&](auto width) {
    constexpr int W = decltype(width)::value;
    const RowLaunch l = row_launch(R, H / W);
    gather_rows_kernel<W><<<l.grid, l.threads, 0, stream>>>(x, rows, H, index, out);
  });
  return cudaGetLastError();
}

cudaError_t combine_rows(const float* y, int64_t H, const int32_t* inverse_sort_index, const float* weights,
                         int64_t T, int k, float* out, cudaStream_t stream) {
  if (H < 0 || H > kMaxRowFloats || T < 0 || T > INT_MAX || k < 1 || T * k > INT_MAX ||
      (T > 0 && H > 0 && (!y || !inverse_sort_index || !weights || !out)))
    return cudaErrorInvalidValue;
  if (T == 0 || H == 0) return cudaSuccess;
  with_width(H % 4 == 0 && aligned16(y) && aligned16(out), [&](auto width) {
    constexpr int W = decltype(width)::value;
    const RowLaunch l = row_launch(T, H / W);
    combine_rows_kernel<W><<<l.grid, l.threads, 0, stream>>>(y, H, inverse_sort_index, weights, T, k, out);
  });
  return cudaGetLastError();
}

cudaError_t silu_mul(const float* gate, const float* up, int64_t n, float* h, cudaStream_t stream) {
  if (n < 0 || n / kSiluThreads >= INT_MAX || (n > 0 && (!gate || !up || !h)))
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  with_width(n % 4 == 0 && aligned16(gate) && aligned16(up) && aligned16(h), [&](auto width) {
    constexpr int W = decltype(width)::value;
    silu_mul_kernel<W><<<unsigned(ceil_div<int64_t>(n / W, kSiluThreads)), kSiluThreads, 0, stream>>>(
        gate, up, n / W, h);
  });
  return cudaGetLastError();
}

}  // namespace moe::cuda
