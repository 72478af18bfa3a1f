// Run-time choice of the micro-kernels: the widest instruction set that both the build and the
// CPU have. TFJS_MOE_ISA=avx2|generic lowers it (for tests and comparisons).
#include "kernels.h"

#include "../moe_fused_linear.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace moe {
namespace {

#if !defined(MOE_GENERIC_ONLY)
bool cpu_has(const char* isa) {
  if (std::strcmp(isa, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  if (std::strcmp(isa, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return std::strcmp(isa, "generic") == 0;
}
const GemmKernels* by_name(const char* isa) {
  if (std::strcmp(isa, "avx512") == 0) return &kernels_avx512();
  if (std::strcmp(isa, "avx2") == 0) return &kernels_avx2();
  if (std::strcmp(isa, "generic") == 0) return &kernels_generic();
  return nullptr;
}
#else
bool cpu_has(const char* isa) { return std::strcmp(isa, "generic") == 0; }
const GemmKernels* by_name(const char* isa) {
  return std::strcmp(isa, "generic") == 0 ? &kernels_generic() : nullptr;
}
#endif

const GemmKernels* best() {
  const char* forced = std::getenv("TFJS_MOE_ISA");
  if (forced && cpu_has(forced) && by_name(forced)) return by_name(forced);
  for (const char* isa : {"avx512", "avx2", "generic"})
    if (cpu_has(isa) && by_name(isa)) return by_name(isa);
  return &kernels_generic();
}

std::atomic<const GemmKernels*>& active() {
  static std::atomic<const GemmKernels*> k{best()};
  return k;
}

}  // namespace

const GemmKernels& active_kernels() { return *active().load(std::memory_order_relaxed); }

bool set_isa(const char* name) {
  const GemmKernels* k = cpu_has(name) ? by_name(name) : nullptr;
  if (!k) return false;
  active().store(k);
  return true;
}

}  // namespace moe
