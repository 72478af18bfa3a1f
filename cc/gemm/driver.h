// The blocked GEMM driver shared by the grouped kernels: work split into cache-sized tasks on
// the thread pool, and per task C = A · B through packed panels and the micro-kernels of
// kernels.h. Where B comes from (a float matrix, or NF4 codes decoded on the fly) is the
// caller's: it fills each packed B panel.
#pragma once

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels.h"
#include "../moe_fused_linear.h"
#include "../thread_pool.h"

namespace moe {

// Tasks: row blocks of C (a multiple of every ISA's outer_rows) by column blocks. Columns are
// as wide as possible (long sequential reads of B and writes of C) while a packed B panel of
// kPanelFloats (512 KB of L2) still spans kMinDepth steps of the reduction (so that C tiles are
// reloaded rarely), and narrower when that leaves too few tasks to keep every thread busy.
constexpr int64_t kRowBlock = 96, kGradRowBlock = 48, kColBlock = 512;
constexpr int64_t kPanelFloats = 128 * 1024, kMinDepth = 256;

// Element (r, c) of a strided matrix view is data[r·rs + c·cs].
struct View {
  const float* data;
  int64_t rs, cs;
  const float* at(int64_t r, int64_t c) const { return data + r * rs + c * cs; }
};

struct Task {
  int64_t expert, row0, rows, col0, cols;
};

inline std::vector<int64_t> row_offsets(const int32_t* group_sizes, int64_t E) {
  std::vector<int64_t> offsets(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + group_sizes[e];
  return offsets;
}

// Tiles [0, rows_of(e)) × [0, cols) of every expert into tasks, for a reduction of depth_of(e).
template <class RowsOf, class DepthOf>
std::vector<Task> make_tasks(int64_t E, RowsOf rows_of, DepthOf depth_of, int64_t cols, int64_t row_block) {
  int64_t row_blocks = 0;
  for (int64_t e = 0; e < E; ++e) row_blocks += (rows_of(e) + row_block - 1) / row_block;
  const int64_t most = row_blocks < 4 * num_threads() ? kColBlock : std::max<int64_t>(cols, 1);
  std::vector<Task> tasks;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t fit = kPanelFloats / std::max<int64_t>(1, std::min(depth_of(e), kMinDepth)) / kChunk * kChunk;
    const int64_t col_block = std::max(kChunk, std::min(most, fit));
    for (int64_t r = 0; r < rows_of(e); r += row_block)
      for (int64_t c = 0; c < cols; c += col_block)
        tasks.push_back({e, r, std::min(row_block, rows_of(e) - r), c, std::min(col_block, cols - c)});
  }
  return tasks;
}

inline void run_tasks(const std::vector<Task>& tasks, const std::function<void(const Task&)>& fn) {
  parallel_for(static_cast<int64_t>(tasks.size()), [&](int64_t i) { fn(tasks[i]); });
}

// Scratch memory private to the calling thread, reused across calls.
inline float* scratch(std::vector<float>& buffer, int64_t floats) {
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

inline void zero_rows(float* C, int64_t rows, int64_t cols, int64_t ldc) {
  for (int64_t i = 0; i < rows; ++i) std::memset(C + i * ldc, 0, cols * sizeof(float));
}

// Packs B(p0 + p, j) for p < d, j < cols into column chunks of kChunk: dst[(j / kChunk)·d·kChunk
// + p·kChunk + j % kChunk] (the layout `outer` reads, see pack_transposed).
using PackB = std::function<void(int64_t p0, int64_t d, float* dst)>;

// C[rows × cols] = A · B over a reduction of length P, with A(i, p) read through a strided view
// and B packed by pack_b. Per reduction panel, B is packed once (read once from its source, then
// from L2) and A into row groups ([group][p][mr], the broadcast order of the outer-product tiles).
inline void outer_gemm(const GemmKernels& k, int64_t rows, int64_t cols, int64_t P, View A, const PackB& pack_b,
                       float* C, int64_t ldc) {
  if (P == 0) return zero_rows(C, rows, cols, ldc);
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  const int64_t depth = std::min(P, std::max<int64_t>(16, kPanelFloats / (chunks * kChunk)));
  thread_local std::vector<float> a_buffer, b_buffer;
  float* apack = scratch(a_buffer, rows * depth);
  float* bpack = scratch(b_buffer, chunks * depth * kChunk);
  for (int64_t p0 = 0; p0 < P; p0 += depth) {
    const int64_t d = std::min(depth, P - p0);
    pack_b(p0, d, bpack);
    for (int64_t i0 = 0; i0 < rows; i0 += k.outer_rows)
      k.pack_rows(static_cast<int>(std::min<int64_t>(k.outer_rows, rows - i0)), d, A.at(i0, p0), A.rs, A.cs,
                  apack + i0 * d);
    for (int64_t i0 = 0; i0 < rows; i0 += k.outer_rows) {
      const int mr = static_cast<int>(std::min<int64_t>(k.outer_rows, rows - i0));
      for (int64_t c = 0; c < chunks; ++c)
        k.outer(mr, std::min(kChunk, cols - c * kChunk), d, apack + i0 * d, mr,
                bpack + c * d * kChunk, kChunk, C + i0 * ldc + c * kChunk, ldc, p0 > 0);
    }
  }
}

// pack_b for a float matrix B(p, j) = B.at(p, j) (B.rs == 1 or B.cs == 1), cols columns wide.
inline PackB pack_view(const GemmKernels& k, View B, int64_t cols) {
  return [&k, B, cols](int64_t p0, int64_t d, float* bpack) {
    const int64_t chunks = (cols + kChunk - 1) / kChunk;
    if (B.cs == 1) {  // rows of B are contiguous: copy them chunk by chunk
      for (int64_t p = 0; p < d; ++p)
        for (int64_t c = 0; c < chunks; ++c)
          std::memcpy(bpack + (c * d + p) * kChunk, B.at(p0 + p, c * kChunk),
                      std::min(kChunk, cols - c * kChunk) * sizeof(float));
    } else {  // columns of B are contiguous (B = wᵀ): transpose while packing
      k.pack_transposed(d, cols, B.at(p0, 0), B.cs, bpack);
    }
  };
}

}  // namespace moe
