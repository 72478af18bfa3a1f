// The micro-kernels of one instruction set. CMakeLists.txt compiles this file three times:
// with -mavx512f… and MOE_ISA_AVX512, with -mavx2 -mfma and MOE_ISA_AVX2, and plain.
#include "tiles.h"

#if defined(MOE_ISA_AVX512)
#include "vec_avx512.h"
#define MOE_VEC VecAvx512
#define MOE_KERNELS kernels_avx512
#define MOE_ISA_NAME "avx512"
#elif defined(MOE_ISA_AVX2)
#include "vec_avx2.h"
#define MOE_VEC VecAvx2
#define MOE_KERNELS kernels_avx2
#define MOE_ISA_NAME "avx2"
#else
#include "vec_generic.h"
#define MOE_VEC VecGeneric
#define MOE_KERNELS kernels_generic
#define MOE_ISA_NAME "generic"
#endif

namespace moe {

const GemmKernels& MOE_KERNELS() {
  static const GemmKernels k = make_kernels<MOE_VEC>(MOE_ISA_NAME);
  return k;
}

}  // namespace moe
