// Grouped GEMM drivers: split the work of all experts into cache-sized tasks, run them on the
// thread pool, and hand each task's tiles to the micro-kernels of gemm/kernels.h.
#include "moe_fused_linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm/kernels.h"
#include "thread_pool.h"

namespace moe {
namespace {

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

std::vector<int64_t> row_offsets(const int32_t* group_sizes, int64_t E) {
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

void run_tasks(const std::vector<Task>& tasks, const std::function<void(const Task&)>& fn) {
  parallel_for(static_cast<int64_t>(tasks.size()), [&](int64_t i) { fn(tasks[i]); });
}

// Scratch memory private to the calling thread, reused across calls.
float* scratch(std::vector<float>& buffer, int64_t floats) {
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

void zero_rows(float* C, int64_t rows, int64_t cols, int64_t ldc) {
  for (int64_t i = 0; i < rows; ++i) std::memset(C + i * ldc, 0, cols * sizeof(float));
}

// C[rows × cols] = A · B over a reduction of length P, with A(i, p) and B(p, j) read through
// strided views (B must have rs == 1 or cs == 1). Per reduction panel, B is copied into column
// chunks ([chunk][p][kChunk], read once from its source, then from L2) and A into row groups
// ([group][p][mr], the broadcast order of the outer-product tiles).
void outer_gemm(const GemmKernels& k, int64_t rows, int64_t cols, int64_t P, View A, View B,
                float* C, int64_t ldc) {
  if (P == 0) return zero_rows(C, rows, cols, ldc);
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  const int64_t depth = std::min(P, std::max<int64_t>(16, kPanelFloats / (chunks * kChunk)));
  thread_local std::vector<float> a_buffer, b_buffer;
  float* apack = scratch(a_buffer, rows * depth);
  float* bpack = scratch(b_buffer, chunks * depth * kChunk);
  for (int64_t p0 = 0; p0 < P; p0 += depth) {
    const int64_t d = std::min(depth, P - p0);
    if (B.cs == 1) {  // rows of B are contiguous: copy them chunk by chunk
      for (int64_t p = 0; p < d; ++p)
        for (int64_t c = 0; c < chunks; ++c)
          std::memcpy(bpack + (c * d + p) * kChunk, B.at(p0 + p, c * kChunk),
                      std::min(kChunk, cols - c * kChunk) * sizeof(float));
    } else {  // columns of B are contiguous (B = wᵀ): transpose while packing
      k.pack_transposed(d, cols, B.at(p0, 0), B.cs, bpack);
    }
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

// y_e = x_e · b_e, where b_e (K × N) is w_eᵀ ([E, N, K], the forward pass) or w_e as stored
// ([E, K, N], the transposed weight of dX = dY · W).
void forward(const float* x, const float* w, const std::vector<int64_t>& off, float* y,
                   int64_t K, int64_t N, int64_t E, bool transpose_weight) {
  const GemmKernels& k = active_kernels();
  auto rows_of = [&](int64_t e) { return off[e + 1] - off[e]; };
  run_tasks(make_tasks(E, rows_of, [&](int64_t) { return K; }, N, kRowBlock), [&](const Task& t) {
    const float* we = w + t.expert * K * N;
    const View b = transpose_weight ? View{we + t.col0, N, 1} : View{we + t.col0 * K, 1, K};
    const int64_t row = off[t.expert] + t.row0;
    outer_gemm(k, t.rows, t.cols, K, View{x + row * K, K, 1}, b, y + row * N + t.col0, N);
  });
}

}  // namespace

std::string check_group_sizes(const int32_t* group_sizes, int64_t num_experts, int64_t num_rows) {
  int64_t total = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (group_sizes[e] < 0)
      return "groupSizes must be non-negative, but groupSizes[" + std::to_string(e) +
             "] = " + std::to_string(group_sizes[e]);
    total += group_sizes[e];
  }
  if (total != num_rows)
    return "groupSizes must sum to the number of rows of x (" + std::to_string(num_rows) +
           "), but they sum to " + std::to_string(total);
  return "";
}

void moe_fused_linear(const float* x, const float* w, const int32_t* group_sizes, float* y,
                      int64_t M, int64_t K, int64_t N, int64_t E, bool transpose_weight) {
  if (M == 0 || N == 0) return;
  forward(x, w, row_offsets(group_sizes, E), y, K, N, E, transpose_weight);
}

void moe_fused_linear_grad_weight(const float* x, const float* dy, const int32_t* group_sizes,
                                  float* dw, int64_t M, int64_t K, int64_t N, int64_t E) {
  if (N == 0 || K == 0) return;
  const GemmKernels& k = active_kernels();
  const std::vector<int64_t> off = row_offsets(group_sizes, E);
  // dw_e (N × K) = dy_eᵀ · x_e: A(i, p) = dy[p·N + i], B(p, j) = x[p·K + j].
  auto rows_of = [&](int64_t) { return N; };
  auto depth_of = [&](int64_t e) { return off[e + 1] - off[e]; };
  run_tasks(make_tasks(E, rows_of, depth_of, K, kGradRowBlock), [&](const Task& t) {
    const int64_t m0 = off[t.expert], P = off[t.expert + 1] - m0;
    outer_gemm(k, t.rows, t.cols, P, View{dy + m0 * N + t.row0, 1, N}, View{x + m0 * K + t.col0, K, 1},
               dw + (t.expert * N + t.row0) * K + t.col0, K);
  });
}

const char* isa_name() { return active_kernels().name; }

}  // namespace moe
