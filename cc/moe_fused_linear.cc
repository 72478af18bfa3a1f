// Grouped GEMM drivers: split the work of all experts into cache-sized tasks, run them on the
// thread pool, and hand each task's tiles to the micro-kernels of gemm/kernels.h.
#include "moe_fused_linear.h"

#include <vector>

#include "gemm/driver.h"

namespace moe {
namespace {

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
    outer_gemm(k, t.rows, t.cols, K, View{x + row * K, K, 1}, pack_view(k, b, t.cols), y + row * N + t.col0, N);
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
    outer_gemm(k, t.rows, t.cols, P, View{dy + m0 * N + t.row0, 1, N},
               pack_view(k, View{x + m0 * K + t.col0, K, 1}, t.cols), dw + (t.expert * N + t.row0) * K + t.col0, K);
  });
}

const char* isa_name() { return active_kernels().name; }

}  // namespace moe
