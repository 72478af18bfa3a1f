// Node-API entry points of the CUDA kernels, over device memory that JS owns.
//
// Ownership and ordering, the rules a GPU backend will build on:
// - alloc(bytes) returns a DeviceBuffer that owns its device memory; buffer.free() releases it
//   at once (stream-ordered, so kernels already queued on it still finish), and a buffer that
//   was never freed is released when V8 collects it. Launchers never free or keep buffers.
// - All work runs in order on one non-blocking stream per process: uploads, launches,
//   downloads. upload() and download() return when their copy is done (the host array may then
//   be reused or read); launches return at once. synchronize() waits for the stream and throws
//   the first asynchronous CUDA error; download() reports it too.
// - Arguments are checked before anything is queued: buffer types, that no buffer is freed,
//   and that every buffer is large enough for the sizes given.
#include <cuda_runtime.h>
#include <napi.h>

#include <cstdint>
#include <string>

#include "moe_cuda.h"
#include "napi_args.h"

namespace {

using moe::napi::dim;
using moe::napi::product;

void check(const Napi::Env& env, cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so that the next call starts clean
    throw Napi::Error::New(env, "CUDA error in " + what + ": " + cudaGetErrorString(status));
  }
}

// The process's stream, created on first use. The device's default memory pool then keeps
// memory that is freed (as a caching allocator does) instead of returning it to the driver at
// every synchronisation: re-mapping it cost a kernel's workspace ~50 µs per call.
cudaStream_t stream(const Napi::Env& env) {
  static cudaStream_t s = nullptr;
  if (!s) {
    int device = 0;
    cudaMemPool_t pool;
    uint64_t keep_all = UINT64_MAX;
    check(env, cudaGetDevice(&device), "cudaGetDevice");
    check(env, cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    check(env, cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all), "cudaMemPoolSetAttribute");
    check(env, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  }
  return s;
}

// The JS classes of this addon, per environment (for instanceof checks and construction).
struct Classes {
  Napi::FunctionReference buffer, event;
};

Classes& classes(const Napi::Env& env) { return *env.GetInstanceData<Classes>(); }

template <class T>
T* unwrap(const Napi::Env& env, const Napi::Value& v, const Napi::FunctionReference& cls, const std::string& what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(cls.Value())) throw Napi::TypeError::New(env, what);
  return T::Unwrap(v.As<Napi::Object>());
}

// Device memory owned by a JS object.
class DeviceBuffer : public Napi::ObjectWrap<DeviceBuffer> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DeviceBuffer",
                       {InstanceAccessor<&DeviceBuffer::Bytes>("bytes"),
                        InstanceAccessor<&DeviceBuffer::Freed>("freed"),
                        InstanceMethod<&DeviceBuffer::Free>("free")});
  }

  explicit DeviceBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceBuffer>(info) {
    bytes_ = dim(info, 0, "bytes");
    stream_ = stream(info.Env());
    if (bytes_ > 0) check(info.Env(), cudaMallocAsync(&ptr_, bytes_, stream_), "cudaMallocAsync");
  }
  ~DeviceBuffer() override { release(); }

  void* ptr() const { return ptr_; }
  int64_t bytes() const { return bytes_; }
  bool freed() const { return freed_; }

 private:
  void release() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
    ptr_ = nullptr;
    freed_ = true;
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(bytes_)); }
  Napi::Value Freed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), freed_); }
  void Free(const Napi::CallbackInfo&) { release(); }

  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
  bool freed_ = false;
  cudaStream_t stream_ = nullptr;
};

// Argument i as a live DeviceBuffer of at least `bytes` bytes (-1: a size that overflowed).
DeviceBuffer* buffer(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t bytes) {
  const Napi::Env env = info.Env();
  auto* b = unwrap<DeviceBuffer>(env, info[i], classes(env).buffer, std::string(name) + " must be a DeviceBuffer");
  if (b->freed()) throw Napi::Error::New(env, std::string(name) + " was freed");
  if (bytes < 0 || b->bytes() < bytes)
    throw Napi::RangeError::New(env, std::string(name) + " holds " + std::to_string(b->bytes()) +
                                         " bytes, but the sizes given need " +
                                         (bytes < 0 ? std::string("more than 2^63") : std::to_string(bytes)));
  return b;
}

template <class T>
T* device(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t count) {
  const int64_t bytes = count < 0 || count > INT64_MAX / static_cast<int64_t>(sizeof(T)) ? -1 : count * sizeof(T);
  return static_cast<T*>(buffer(info, i, name, bytes)->ptr());
}

moe::cuda::Precision precision(const Napi::CallbackInfo& info, size_t i) {
  const std::string p = info[i].IsString() ? info[i].As<Napi::String>().Utf8Value() : "";
  if (p == "tf32") return moe::cuda::Precision::kTf32;
  if (p == "bf16") return moe::cuda::Precision::kBf16;
  if (p == "highest") return moe::cuda::Precision::kHighest;
  throw Napi::TypeError::New(info.Env(), "precision must be 'tf32', 'bf16' or 'highest'");
}

Napi::Value Alloc(const Napi::CallbackInfo& info) { return classes(info.Env()).buffer.New({info[0]}); }

// upload(dst, typedArray, dstOffsetBytes = 0) and download(src, typedArray, srcOffsetBytes = 0).
void Copy(const Napi::CallbackInfo& info, bool to_device) {
  const Napi::Env env = info.Env();
  if (!info[1].IsTypedArray()) throw Napi::TypeError::New(env, "host data must be a TypedArray");
  Napi::TypedArray host = info[1].As<Napi::TypedArray>();
  const int64_t offset = info.Length() > 2 && !info[2].IsUndefined() ? dim(info, 2, "offsetBytes") : 0;
  const int64_t bytes = static_cast<int64_t>(host.ByteLength());
  if (bytes == 0) return;
  char* dev = static_cast<char*>(buffer(info, 0, to_device ? "dst" : "src", offset + bytes)->ptr()) + offset;
  char* data = static_cast<char*>(host.ArrayBuffer().Data()) + host.ByteOffset();
  const cudaStream_t s = stream(env);
  check(env, to_device ? cudaMemcpyAsync(dev, data, bytes, cudaMemcpyHostToDevice, s)
                       : cudaMemcpyAsync(data, dev, bytes, cudaMemcpyDeviceToHost, s),
        to_device ? "upload" : "download");
  check(env, cudaStreamSynchronize(s), to_device ? "upload" : "download");
}

void Upload(const Napi::CallbackInfo& info) { Copy(info, true); }
void Download(const Napi::CallbackInfo& info) { Copy(info, false); }

void Synchronize(const Napi::CallbackInfo& info) {
  check(info.Env(), cudaStreamSynchronize(stream(info.Env())), "synchronize");
}

// groupedGemm(x, w, groupSizes, y, M, K, N, E, transposeWeight, precision)
void GroupedGemm(const Napi::CallbackInfo& info) {
  const int64_t M = dim(info, 4, "M"), K = dim(info, 5, "K"), N = dim(info, 6, "N"), E = dim(info, 7, "E");
  const bool transpose = info[8].ToBoolean();
  const auto p = precision(info, 9);
  const float* x = device<float>(info, 0, "x", product(M, K));
  const float* w = device<float>(info, 1, "weight", product(E, N, K));
  const int32_t* g = device<int32_t>(info, 2, "groupSizes", E);
  float* y = device<float>(info, 3, "output", product(M, N));
  check(info.Env(), moe::cuda::grouped_gemm(x, w, g, y, M, K, N, E, transpose, p, stream(info.Env())),
        "groupedGemm");
}

// NF4 experts of n = N·K values each: their bytes and absmax per expert, checked before any launch.
struct Nf4Sizes {
  int64_t bytes, blocks, blocksize;
};

Nf4Sizes nf4_sizes(const Napi::CallbackInfo& info, int64_t n, int64_t E, size_t blocksize_arg) {
  const int64_t block = dim(info, blocksize_arg, "blocksize");
  if (block < 32 || block > 4096 || (block & (block - 1)) != 0)
    throw Napi::RangeError::New(info.Env(), "blocksize must be a power of two in [32, 4096], got " + std::to_string(block));
  if (n < 0) throw Napi::RangeError::New(info.Env(), "the weight has more than 2^63 values");
  if (E > 1 && n % 2 != 0)
    throw Napi::RangeError::New(info.Env(), "stacked NF4 experts need an even number of values each, got " + std::to_string(n));
  return {(n + 1) / 2, (n + block - 1) / block, block};
}

// groupedGemmNf4(x, packed, absmax, groupSizes, y, M, K, N, E, blocksize, transposeWeight, precision)
void GroupedGemmNf4(const Napi::CallbackInfo& info) {
  const int64_t M = dim(info, 5, "M"), K = dim(info, 6, "K"), N = dim(info, 7, "N"), E = dim(info, 8, "E");
  const Nf4Sizes sizes = nf4_sizes(info, product(N, K), E, 9);
  const bool transpose = info[10].ToBoolean();
  const auto p = precision(info, 11);
  const float* x = device<float>(info, 0, "x", product(M, K));
  const uint8_t* packed = device<uint8_t>(info, 1, "packed", product(E, sizes.bytes));
  const float* absmax = device<float>(info, 2, "absmax", product(E, sizes.blocks));
  const int32_t* g = device<int32_t>(info, 3, "groupSizes", E);
  float* y = device<float>(info, 4, "output", product(M, N));
  check(info.Env(),
        moe::cuda::grouped_gemm_nf4(x, packed, absmax, g, y, M, K, N, E, static_cast<int>(sizes.blocksize), transpose, p,
                                    stream(info.Env())),
        "groupedGemmNf4");
}

// nf4Dequantize(packed, absmax, E, n, blocksize, out)
void Nf4Dequantize(const Napi::CallbackInfo& info) {
  const int64_t E = dim(info, 2, "E"), n = dim(info, 3, "n");
  const Nf4Sizes sizes = nf4_sizes(info, n, E, 4);
  const uint8_t* packed = device<uint8_t>(info, 0, "packed", product(E, sizes.bytes));
  const float* absmax = device<float>(info, 1, "absmax", product(E, sizes.blocks));
  float* out = device<float>(info, 5, "output", product(E, n));
  check(info.Env(),
        moe::cuda::nf4_dequantize(packed, absmax, E, n, static_cast<int>(sizes.blocksize), out, stream(info.Env())),
        "nf4Dequantize");
}

// groupedGemmGradWeight(x, dy, groupSizes, dw, M, K, N, E, precision)
void GroupedGemmGradWeight(const Napi::CallbackInfo& info) {
  const int64_t M = dim(info, 4, "M"), K = dim(info, 5, "K"), N = dim(info, 6, "N"), E = dim(info, 7, "E");
  const auto p = precision(info, 8);
  const float* x = device<float>(info, 0, "x", product(M, K));
  const float* dy = device<float>(info, 1, "dy", product(M, N));
  const int32_t* g = device<int32_t>(info, 2, "groupSizes", E);
  float* dw = device<float>(info, 3, "output", product(E, N, K));
  check(info.Env(), moe::cuda::grouped_gemm_grad_weight(x, dy, g, dw, M, K, N, E, p, stream(info.Env())),
        "groupedGemmGradWeight");
}

// routeTopK(logits, T, E, k, normalize, weights, expertIds)
void RouteTopK(const Napi::CallbackInfo& info) {
  const int64_t T = dim(info, 1, "T"), E = dim(info, 2, "E"), k = dim(info, 3, "k");
  const bool normalize = info[4].ToBoolean();
  const float* logits = device<float>(info, 0, "logits", product(T, E));
  float* weights = device<float>(info, 5, "weights", product(T, k));
  int32_t* ids = device<int32_t>(info, 6, "expertIds", product(T, k));
  check(info.Env(), moe::cuda::route_top_k(logits, T, E, static_cast<int>(k), normalize, weights, ids, stream(info.Env())),
        "routeTopK");
}

// sortByExpert(expertIds, R, E, k, groupSizes, sortIndex, inverseSortIndex, tokenIndex)
void SortByExpert(const Napi::CallbackInfo& info) {
  const int64_t R = dim(info, 1, "R"), E = dim(info, 2, "E"), k = dim(info, 3, "k");
  const int32_t* ids = device<int32_t>(info, 0, "expertIds", R);
  int32_t* sizes = device<int32_t>(info, 4, "groupSizes", E);
  int32_t* sort = device<int32_t>(info, 5, "sortIndex", R);
  int32_t* inverse = device<int32_t>(info, 6, "inverseSortIndex", R);
  int32_t* token = device<int32_t>(info, 7, "tokenIndex", R);
  check(info.Env(), moe::cuda::sort_by_expert(ids, R, E, static_cast<int>(k), sizes, sort, inverse, token, stream(info.Env())),
        "sortByExpert");
}

// gatherRows(x, rows, H, index, R, out)
void GatherRows(const Napi::CallbackInfo& info) {
  const int64_t rows = dim(info, 1, "rows"), H = dim(info, 2, "H"), R = dim(info, 4, "R");
  const float* x = device<float>(info, 0, "x", product(rows, H));
  const int32_t* index = device<int32_t>(info, 3, "index", R);
  float* out = device<float>(info, 5, "output", product(R, H));
  check(info.Env(), moe::cuda::gather_rows(x, rows, H, index, R, out, stream(info.Env())), "gatherRows");
}

// combineRows(y, H, inverseSortIndex, weights, T, k, out)
void CombineRows(const Napi::CallbackInfo& info) {
  const int64_t H = dim(info, 1, "H"), T = dim(info, 4, "T"), k = dim(info, 5, "k");
  const float* y = device<float>(info, 0, "y", product(T, k, H));
  const int32_t* inverse = device<int32_t>(info, 2, "inverseSortIndex", product(T, k));
  const float* weights = device<float>(info, 3, "weights", product(T, k));
  float* out = device<float>(info, 6, "output", product(T, H));
  check(info.Env(), moe::cuda::combine_rows(y, H, inverse, weights, T, static_cast<int>(k), out, stream(info.Env())),
        "combineRows");
}

// siluMul(gate, up, n, h)
void SiluMul(const Napi::CallbackInfo& info) {
  const int64_t n = dim(info, 2, "n");
  const float* gate = device<float>(info, 0, "gate", n);
  const float* up = device<float>(info, 1, "up", n);
  float* h = device<float>(info, 3, "output", n);
  check(info.Env(), moe::cuda::silu_mul(gate, up, n, h, stream(info.Env())), "siluMul");
}

// busyWait(microseconds)
void BusyWait(const Napi::CallbackInfo& info) {
  const int64_t us = dim(info, 0, "microseconds");
  if (us > 10'000'000) throw Napi::RangeError::New(info.Env(), "microseconds must be at most 10000000 (10 s)");
  check(info.Env(), moe::cuda::busy_wait(us, stream(info.Env())), "busyWait");
}

// A CUDA event on the stream, for timing: a = newEvent(); ...; b = newEvent(); b.elapsedMs(a).
class Event : public Napi::ObjectWrap<Event> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "CudaEvent", {InstanceMethod<&Event::ElapsedMs>("elapsedMs")});
  }
  explicit Event(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Event>(info) {
    check(info.Env(), cudaEventCreate(&event_), "cudaEventCreate");
    check(info.Env(), cudaEventRecord(event_, stream(info.Env())), "cudaEventRecord");
  }
  ~Event() override { cudaEventDestroy(event_); }

 private:
  // Milliseconds from `start` to this event; waits for this event.
  Napi::Value ElapsedMs(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    Event* start = unwrap<Event>(env, info[0], classes(env).event, "start must be a CudaEvent");
    check(env, cudaEventSynchronize(event_), "cudaEventSynchronize");
    float ms = 0;
    check(env, cudaEventElapsedTime(&ms, start->event_, event_), "cudaEventElapsedTime");
    return Napi::Number::New(env, ms);
  }
  cudaEvent_t event_ = nullptr;
};

// deviceCount(): 0 when there is no driver or no device.
Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return Napi::Number::New(info.Env(), n);
}

Napi::Value DeviceInfo(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  int device = 0;
  cudaDeviceProp p{};
  check(env, cudaGetDevice(&device), "cudaGetDevice");
  check(env, cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", p.name);
  o.Set("computeCapability", std::to_string(p.major) + "." + std::to_string(p.minor));
  o.Set("multiProcessors", p.multiProcessorCount);
  o.Set("memoryBytes", static_cast<double>(p.totalGlobalMem));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Function buffer_class = DeviceBuffer::Define(env);
  auto* data = new Classes{Napi::Persistent(buffer_class), Napi::Persistent(Event::Define(env))};
  env.SetInstanceData(data);  // deleted by Node when the environment ends
  exports.Set("version", Napi::String::New(env, MOE_PACKAGE_VERSION));
  exports.Set("DeviceBuffer", buffer_class);
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo));
  exports.Set("alloc", Napi::Function::New(env, Alloc));
  exports.Set("upload", Napi::Function::New(env, Upload));
  exports.Set("download", Napi::Function::New(env, Download));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  exports.Set("busyWait", Napi::Function::New(env, BusyWait));
  exports.Set("newEvent", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return classes(info.Env()).event.New({});
              }));
  exports.Set("groupedGemm", Napi::Function::New(env, GroupedGemm));
  exports.Set("groupedGemmNf4", Napi::Function::New(env, GroupedGemmNf4));
  exports.Set("nf4Dequantize", Napi::Function::New(env, Nf4Dequantize));
  exports.Set("groupedGemmGradWeight", Napi::Function::New(env, GroupedGemmGradWeight));
  exports.Set("routeTopK", Napi::Function::New(env, RouteTopK));
  exports.Set("sortByExpert", Napi::Function::New(env, SortByExpert));
  exports.Set("gatherRows", Napi::Function::New(env, GatherRows));
  exports.Set("combineRows", Napi::Function::New(env, CombineRows));
  exports.Set("siluMul", Napi::Function::New(env, SiluMul));
  return exports;
}

}  // namespace

NODE_API_MODULE(moe_fused_cuda, Init)
