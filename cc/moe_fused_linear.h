// Grouped GEMM for Mixture-of-Experts layers on the CPU.
//
// Rows of x are grouped by expert in ascending order: expert e owns rows
// [offset(e), offset(e) + group_sizes[e]) with offset(e) = Σ_{j<e} group_sizes[j].
// g(m) below is the expert that owns row m.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

// Returns "" when every group size is >= 0 and they sum to num_rows; otherwise a message
// that names `groupSizes` and what was expected. Callers check this before any kernel runs.
std::string check_group_sizes(const int32_t* group_sizes, int64_t num_experts, int64_t num_rows);

// transpose_weight = false: w is [E, N, K] and y[m, n] = Σ_k w[g(m), n, k] · x[m, k]   (forward)
// transpose_weight = true:  w is [E, K, N] and y[m, n] = Σ_k w[g(m), k, n] · x[m, k]   (dX = dY · W)
// x is [M, K], y is [M, N]; every element of y is written.
void moe_fused_linear(const float* x, const float* w, const int32_t* group_sizes, float* y,
                      int64_t M, int64_t K, int64_t N, int64_t E, bool transpose_weight);

// dw[e, n, k] = Σ_{m in e} dy[m, n] · x[m, k]; x is [M, K], dy is [M, N], dw is [E, N, K].
// Experts without rows get zeros. Each element is reduced by one thread in a fixed order,
// so the result is deterministic.
void moe_fused_linear_grad_weight(const float* x, const float* dy, const int32_t* group_sizes,
                                  float* dw, int64_t M, int64_t K, int64_t N, int64_t E);

// Threads used inside one call (default: hardware concurrency, or TFJS_MOE_NUM_THREADS).
void set_num_threads(int n);
int num_threads();

// Instruction set picked at load time: "avx512", "avx2" or "generic".
const char* isa_name();
// Selects a lower instruction set (for tests and comparisons); returns false, changing
// nothing, if the CPU or the build lacks it.
bool set_isa(const char* name);

}  // namespace moe
