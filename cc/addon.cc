// Node-API entry points of the `cpu` backend: the kernels read and write the backend's
// TypedArrays in place. Everything is validated here before any memory is touched, and
// problems come back to JS as exceptions.
#include <napi.h>
#include <sys/mman.h>

#include <cstdint>
#include <string>

#include "moe_fused_linear.h"
#include "napi_args.h"
#include "nf4_linear.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "NF4 bytes are read from int32 words in memory order");

namespace {

using moe::napi::dim;
using moe::napi::floats;
using moe::napi::ints;
using moe::napi::product;

void expect_length(const Napi::Env& env, const Napi::TypedArray& a, int64_t n, const char* what) {
  if (n < 0 || static_cast<int64_t>(a.ElementLength()) != n)
    throw Napi::RangeError::New(env, std::string(what) + " has " + std::to_string(a.ElementLength()) +
                                         " elements, expected " + std::to_string(n));
}

void check_groups(const Napi::Env& env, const Napi::Int32Array& g, int64_t E, int64_t M) {
  expect_length(env, g, E, "groupSizes");
  std::string error = moe::check_group_sizes(g.Data(), E, M);
  if (!error.empty()) throw Napi::RangeError::New(env, error);
}

// Large outputs are fresh allocations whose pages are not touched yet: asking for 2 MB pages
// now turns ~500 page faults per MB into one, which matters when dW is hundreds of MB.
void prefer_huge_pages(void* data, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = 2u << 20;
  if (bytes < 4 * kHuge) return;
  uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// The arguments both kernels take: (a, b, groupSizes, output, M, K, N, E).
struct GroupedArgs {
  Napi::Float32Array a, b;
  Napi::Int32Array g;
  Napi::Float32Array out;
  int64_t M, K, N, E;

  GroupedArgs(const Napi::CallbackInfo& info, const char* a_name, const char* b_name)
      : a(floats(info, 0, a_name)), b(floats(info, 1, b_name)), g(ints(info, 2, "groupSizes")),
        out(floats(info, 3, "output")), M(dim(info, 4, "M")), K(dim(info, 5, "K")), N(dim(info, 6, "N")),
        E(dim(info, 7, "E")) {}

  // Checks the element counts and the group sizes, then readies the output's pages.
  void check(const Napi::Env& env, const char* a_name, int64_t a_len, const char* b_name, int64_t b_len,
             int64_t out_len) {
    expect_length(env, a, a_len, a_name);
    expect_length(env, b, b_len, b_name);
    expect_length(env, out, out_len, "output");
    check_groups(env, g, E, M);
    prefer_huge_pages(out.Data(), out.ByteLength());
  }
};

// moeFusedLinear(x, w, groupSizes, y, M, K, N, E, transposeWeight): y = x · w[g]ᵀ (or · w[g]).
void MoeFusedLinear(const Napi::CallbackInfo& info) {
  GroupedArgs args(info, "x", "weight");
  const bool transpose = info[8].ToBoolean();
  args.check(info.Env(), "x", product(args.M, args.K), "weight", product(args.E, args.N, args.K),
             product(args.M, args.N));
  moe::moe_fused_linear(args.a.Data(), args.b.Data(), args.g.Data(), args.out.Data(), args.M, args.K, args.N,
                        args.E, transpose);
}

// moeFusedLinearGradWeight(x, dy, groupSizes, dw, M, K, N, E): dw[e] = dy_eᵀ · x_e.
void MoeFusedLinearGradWeight(const Napi::CallbackInfo& info) {
  GroupedArgs args(info, "x", "dy");
  args.check(info.Env(), "x", product(args.M, args.K), "dy", product(args.M, args.N),
             product(args.E, args.N, args.K));
  moe::moe_fused_linear_grad_weight(args.a.Data(), args.b.Data(), args.g.Data(), args.out.Data(), args.M, args.K,
                                    args.N, args.E);
}

// moeNf4Linear(x, packed, absmax, groupSizes, y, M, N, K, E, blocksize, transposeWeight): y = x · W[g]ᵀ
// with x [M, K], y [M, N] (or y = x · W[g] with x [M, N], y [M, K]), W NF4 [E, N, K] (nf4_linear.h).
void MoeNf4Linear(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  Napi::Float32Array x = floats(info, 0, "x"), absmax = floats(info, 2, "absmax"), y = floats(info, 4, "output");
  Napi::Int32Array packed = ints(info, 1, "packed"), g = ints(info, 3, "groupSizes");
  const int64_t M = dim(info, 5, "M"), N = dim(info, 6, "N"), K = dim(info, 7, "K"), E = dim(info, 8, "E");
  const int64_t blocksize = dim(info, 9, "blocksize");
  const bool transpose = info[10].ToBoolean();
  const std::string error = moe::check_nf4_weight(packed.ElementLength(), absmax.ElementLength(), E, N, K, blocksize);
  if (!error.empty()) throw Napi::RangeError::New(env, error);
  expect_length(env, x, product(M, transpose ? N : K), "x");
  expect_length(env, y, product(M, transpose ? K : N), "output");
  check_groups(env, g, E, M);
  prefer_huge_pages(y.Data(), y.ByteLength());
  moe::moe_nf4_linear(x.Data(), reinterpret_cast<const uint8_t*>(packed.Data()), absmax.Data(), g.Data(), y.Data(),
                      M, N, K, E, blocksize, transpose);
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  int64_t n = dim(info, 0, "numThreads");
  if (n < 1 || n > 1024) throw Napi::RangeError::New(info.Env(), "numThreads must be in [1, 1024]");
  moe::set_num_threads(static_cast<int>(n));
  return Napi::Number::New(info.Env(), moe::num_threads());
}

Napi::Value NumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), moe::num_threads());
}

Napi::Value Isa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), moe::isa_name()); }

Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "isa must be a string");
  return Napi::Boolean::New(info.Env(), moe::set_isa(info[0].As<Napi::String>().Utf8Value().c_str()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", Napi::String::New(env, MOE_PACKAGE_VERSION));
  exports.Set("moeFusedLinear", Napi::Function::New(env, MoeFusedLinear));
  exports.Set("moeFusedLinearGradWeight", Napi::Function::New(env, MoeFusedLinearGradWeight));
  exports.Set("moeNf4Linear", Napi::Function::New(env, MoeNf4Linear));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("numThreads", Napi::Function::New(env, NumThreads));
  exports.Set("isa", Napi::Function::New(env, Isa));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  return exports;
}

}  // namespace

NODE_API_MODULE(moe_fused, Init)
