// A small persistent thread pool: tfjs kernels are synchronous, so parallelism lives inside
// each call. The calling thread works too; a call made while another is running (say from
// a second TensorFlow thread) runs its tasks inline instead of waiting.
#pragma once

#include <cstdint>
#include <functional>

namespace moe {

// Runs task(i) for every i in [0, n), spread over the pool, and returns when all are done.
void parallel_for(int64_t n, const std::function<void(int64_t)>& task);

}  // namespace moe
