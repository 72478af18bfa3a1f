// TensorFlow ops for tfjs-node's `tensorflow` backend. Loading this addon registers the ops
// MoeFusedLinear, MoeFusedLinearGradWeight and MoeFusedLinearNf4 with a CPU kernel in the registries of the
// libtensorflow that tfjs-node uses: the addon links the same two libraries as tfjs-node's
// binding (libtensorflow_framework.so.2 has the op and kernel C API, libtensorflow.so.2 the
// rest), and the dynamic loader shares them by soname, whichever of the two loads first.
// JS runs them like tfjs-node's own kernels: backend.executeSingleOutput(opName, attrs,
// inputs). Only TensorFlow's C API is used, so nothing depends on the wheel's C++ ABI.
#include <napi.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "moe_fused_linear.h"
#include "nf4_linear.h"
#ifdef MOE_WITH_CUDA
#include "moe_cuda.h"
#endif
#include "tensorflow/c/kernels.h"
#include "tensorflow/c/ops.h"

namespace {

constexpr char kLinear[] = "MoeFusedLinear";
constexpr char kGradWeight[] = "MoeFusedLinearGradWeight";
constexpr char kNf4[] = "MoeFusedLinearNf4";

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "NF4 bytes are read from int32 words in memory order");

using Status = std::unique_ptr<TF_Status, decltype(&TF_DeleteStatus)>;
using Tensor = std::unique_ptr<TF_Tensor, decltype(&TF_DeleteTensor)>;

Status new_status() { return Status(TF_NewStatus(), TF_DeleteStatus); }

// TF turns a kernel failure into a failed TFE_Execute, which tfjs-node throws as a JS Error.
void fail(TF_OpKernelContext* ctx, const std::string& message) {
  Status s = new_status();
  TF_SetStatus(s.get(), TF_INVALID_ARGUMENT, message.c_str());
  TF_OpKernelContext_Failure(ctx, s.get());
}

// Input i, or null after reporting why to TF.
Tensor input(TF_OpKernelContext* ctx, int i) {
  TF_Tensor* t = nullptr;
  Status s = new_status();
  TF_GetInput(ctx, i, &t, s.get());
  Tensor result(t, TF_DeleteTensor);
  if (TF_GetCode(s.get()) != TF_OK) {
    TF_OpKernelContext_Failure(ctx, s.get());
    result.reset();
  }
  return result;
}

std::string shape_of(const TF_Tensor* t) {
  std::string s = "[";
  for (int i = 0; i < TF_NumDims(t); ++i) s += (i ? ", " : "") + std::to_string(TF_Dim(t, i));
  return s + "]";
}

// Checks t's rank and the dims of `want` that are >= 0; `layout` and `known` say what was
// expected, in the names of the JS API (x, weight, dy, groupSizes).
bool check_shape(TF_OpKernelContext* ctx, const TF_Tensor* t, const char* name, const char* layout,
                 const std::vector<int64_t>& want, const std::string& known = "") {
  bool ok = TF_NumDims(t) == static_cast<int>(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || TF_Dim(t, i) == want[i];
  if (!ok) fail(ctx, std::string(name) + " must have shape " + layout + known + ", got " + shape_of(t));
  return ok;
}

// Reads group_sizes only after its shape is known to be [E]; it is int32 in host memory (the
// op def fixes the type, and this is a CPU kernel).
bool check_groups(TF_OpKernelContext* ctx, const TF_Tensor* g, int64_t E, int64_t M) {
  const std::string error = moe::check_group_sizes(static_cast<const int32_t*>(TF_TensorData(g)), E, M);
  if (!error.empty()) fail(ctx, error);
  return error.empty();
}

// Allocates output 0 as float32 of the given shape, or returns null after reporting why.
Tensor output(TF_OpKernelContext* ctx, const std::vector<int64_t>& dims) {
  size_t n = 1;
  for (int64_t d : dims) n *= static_cast<size_t>(d);
  Status s = new_status();
  Tensor t(TF_AllocateOutput(ctx, 0, TF_FLOAT, dims.data(), static_cast<int>(dims.size()),
                             n * sizeof(float), s.get()),
           TF_DeleteTensor);
  if (TF_GetCode(s.get()) != TF_OK) {
    TF_OpKernelContext_Failure(ctx, s.get());
    t.reset();
  }
  return t;
}

const float* floats(const Tensor& t) { return static_cast<const float*>(TF_TensorData(t.get())); }
const int32_t* groups(const Tensor& t) { return static_cast<const int32_t*>(TF_TensorData(t.get())); }

// The attr is read once per kernel instance (TF caches instances per attr values).
struct LinearKernel {
  bool transpose_weight = false;
};

void* linear_create(TF_OpKernelConstruction* ctx) {
  TF_Bool transpose = 0;  // unsigned char in the C API
  Status s = new_status();
  TF_OpKernelConstruction_GetAttrBool(ctx, "transpose_weight", &transpose, s.get());
  if (TF_GetCode(s.get()) != TF_OK) TF_OpKernelConstruction_Failure(ctx, s.get());
  return new LinearKernel{transpose != 0};
}

void linear_delete(void* kernel) { delete static_cast<LinearKernel*>(kernel); }

// The dimensions of one call, once its inputs have passed the shape checks.
struct Dims {
  int64_t M, K, N, E;
};

// Checks MoeFusedLinear's input shapes: x [M, K], weight [E, N, K] (or [E, K, N]), groupSizes [E].
bool linear_dims(TF_OpKernelContext* ctx, const Tensor& x, const Tensor& w, const Tensor& g, bool transpose,
                 Dims* d) {
  if (!check_shape(ctx, x.get(), "x", "[M, K]", {-1, -1})) return false;
  d->M = TF_Dim(x.get(), 0), d->K = TF_Dim(x.get(), 1);
  const std::string with_k = " with K = " + std::to_string(d->K) + " (x.shape[1])";
  if (transpose ? !check_shape(ctx, w.get(), "weight", "[E, K, N] (transposed)", {-1, d->K, -1}, with_k)
                : !check_shape(ctx, w.get(), "weight", "[E, N, K]", {-1, -1, d->K}, with_k))
    return false;
  d->E = TF_Dim(w.get(), 0), d->N = TF_Dim(w.get(), transpose ? 2 : 1);
  const std::string with_e = " with E = " + std::to_string(d->E) + " (weight.shape[0])";
  return check_shape(ctx, g.get(), "groupSizes", "[E]", {d->E}, with_e);
}

// Checks MoeFusedLinearGradWeight's input shapes: x [M, K], dy [M, N], groupSizes [E].
bool grad_weight_dims(TF_OpKernelContext* ctx, const Tensor& x, const Tensor& dy, const Tensor& g, Dims* d) {
  if (!check_shape(ctx, x.get(), "x", "[M, K]", {-1, -1})) return false;
  d->M = TF_Dim(x.get(), 0), d->K = TF_Dim(x.get(), 1);
  const std::string with_m = " with M = " + std::to_string(d->M) + " (x.shape[0])";
  if (!check_shape(ctx, dy.get(), "dy", "[M, N]", {d->M, -1}, with_m) ||
      !check_shape(ctx, g.get(), "groupSizes", "[E]", {-1}))
    return false;
  d->N = TF_Dim(dy.get(), 1), d->E = TF_Dim(g.get(), 0);
  return true;
}

float* data(const Tensor& t) { return static_cast<float*>(TF_TensorData(t.get())); }

// y[M, N] = x[M, K] · weight[g]ᵀ, weight [E, N, K] (or [E, K, N] with transpose_weight).
void linear_compute(void* kernel, TF_OpKernelContext* ctx) {
  const bool transpose = static_cast<LinearKernel*>(kernel)->transpose_weight;
  Tensor x = input(ctx, 0), w = input(ctx, 1), g = input(ctx, 2);
  Dims d;
  if (!x || !w || !g || !linear_dims(ctx, x, w, g, transpose, &d) || !check_groups(ctx, g.get(), d.E, d.M)) return;
  Tensor y = output(ctx, {d.M, d.N});
  if (!y) return;
  moe::moe_fused_linear(floats(x), floats(w), groups(g), data(y), d.M, d.K, d.N, d.E, transpose);
}

// dw[E, N, K]: dw[e] = dy_eᵀ · x_e over the rows of expert e.
void grad_weight_compute(void*, TF_OpKernelContext* ctx) {
  Tensor x = input(ctx, 0), dy = input(ctx, 1), g = input(ctx, 2);
  Dims d;
  if (!x || !dy || !g || !grad_weight_dims(ctx, x, dy, g, &d) || !check_groups(ctx, g.get(), d.E, d.M)) return;
  Tensor dw = output(ctx, {d.E, d.N, d.K});
  if (!dw) return;
  moe::moe_fused_linear_grad_weight(floats(x), floats(dy), groups(g), data(dw), d.M, d.K, d.N, d.E);
}

// MoeFusedLinearNf4's attrs: the weight's [N, K], its blocksize and the direction.
struct Nf4Kernel {
  int64_t n = 0, k = 0, blocksize = 0;
  bool transpose_weight = false;
};

void* nf4_create(TF_OpKernelConstruction* ctx) {
  auto* kernel = new Nf4Kernel;
  TF_Bool transpose = 0;
  Status s = new_status();
  const std::pair<const char*, int64_t*> ints[] = {{"n", &kernel->n}, {"k", &kernel->k}, {"blocksize", &kernel->blocksize}};
  for (auto [name, value] : ints)
    if (TF_GetCode(s.get()) == TF_OK) TF_OpKernelConstruction_GetAttrInt64(ctx, name, value, s.get());
  if (TF_GetCode(s.get()) == TF_OK) TF_OpKernelConstruction_GetAttrBool(ctx, "transpose_weight", &transpose, s.get());
  if (TF_GetCode(s.get()) != TF_OK) TF_OpKernelConstruction_Failure(ctx, s.get());
  kernel->transpose_weight = transpose != 0;
  return kernel;
}

void nf4_delete(void* kernel) { delete static_cast<Nf4Kernel*>(kernel); }

// y = x · W[g]ᵀ, x [M, K] → [M, N] (or x · W[g], x [M, N] → [M, K]); W NF4 [E, N, K] in
// packed int32 words [ceil(E·N·K/8)] and absmax [E·B] (nf4_linear.h).
void nf4_compute(void* kernel, TF_OpKernelContext* ctx) {
  const Nf4Kernel& a = *static_cast<Nf4Kernel*>(kernel);
  Tensor x = input(ctx, 0), packed = input(ctx, 1), absmax = input(ctx, 2), g = input(ctx, 3);
  if (!x || !packed || !absmax || !g) return;
  const int64_t in = a.transpose_weight ? a.n : a.k, out = a.transpose_weight ? a.k : a.n;
  const std::string with_in = " with " + std::string(a.transpose_weight ? "N = " : "K = ") + std::to_string(in);
  if (!check_shape(ctx, x.get(), "x", "[M, in]", {-1, in}, with_in) ||
      !check_shape(ctx, packed.get(), "packed", "[words]", {-1}) ||
      !check_shape(ctx, absmax.get(), "absmax", "[E·blocks]", {-1}) ||
      !check_shape(ctx, g.get(), "groupSizes", "[E]", {-1}))
    return;
  const int64_t M = TF_Dim(x.get(), 0), E = TF_Dim(g.get(), 0);
  const std::string error = moe::check_nf4_weight(TF_Dim(packed.get(), 0), TF_Dim(absmax.get(), 0), E, a.n, a.k,
                                                  a.blocksize);
  if (!error.empty()) return fail(ctx, error);
  if (!check_groups(ctx, g.get(), E, M)) return;
  Tensor y = output(ctx, {M, out});
  if (!y) return;
  moe::moe_nf4_linear(floats(x), static_cast<const uint8_t*>(TF_TensorData(packed.get())), floats(absmax), groups(g),
                      data(y), M, a.n, a.k, E, a.blocksize, a.transpose_weight);
}

#ifdef MOE_WITH_CUDA
// tfjs-node-gpu: the same ops on the GPU, through the launchers the CUDA tests exercise, in
// TensorFlow's default GPU precision (TF32). TF's C kernel API gives no access to its CUDA
// stream (TF_GetStream serves pluggable devices only), but TF creates its streams as blocking
// streams, so work on the legacy default stream is ordered with TF's own. TF keeps int32
// tensors of GPU kernels in host memory (group_sizes is registered so): they are checked there
// as on the CPU and copied to the device for the kernels. Not run in CI: no machine here runs
// TensorFlow on a GPU.
bool launched(TF_OpKernelContext* ctx, cudaError_t status) {
  if (status != cudaSuccess) fail(ctx, std::string("CUDA error: ") + cudaGetErrorString(status));
  return status == cudaSuccess;
}

// A device copy of the (host) group sizes, freed in stream order when it goes out of scope.
struct DeviceGroups {
  int32_t* ptr = nullptr;
  DeviceGroups(TF_OpKernelContext* ctx, const Tensor& g, int64_t E) {
    if (E > 0 && launched(ctx, cudaMallocAsync(&ptr, E * sizeof(int32_t), cudaStreamLegacy)))
      launched(ctx, cudaMemcpyAsync(ptr, groups(g), E * sizeof(int32_t), cudaMemcpyHostToDevice, cudaStreamLegacy));
  }
  ~DeviceGroups() {
    if (ptr) cudaFreeAsync(ptr, cudaStreamLegacy);
  }
};

void linear_compute_gpu(void* kernel, TF_OpKernelContext* ctx) {
  const bool transpose = static_cast<LinearKernel*>(kernel)->transpose_weight;
  Tensor x = input(ctx, 0), w = input(ctx, 1), g = input(ctx, 2);
  Dims d;
  if (!x || !w || !g || !linear_dims(ctx, x, w, g, transpose, &d) || !check_groups(ctx, g.get(), d.E, d.M)) return;
  Tensor y = output(ctx, {d.M, d.N});
  DeviceGroups groups_on_device(ctx, g, d.E);
  if (!y || (d.E > 0 && !groups_on_device.ptr)) return;
  launched(ctx, moe::cuda::grouped_gemm(floats(x), floats(w), groups_on_device.ptr, data(y), d.M, d.K, d.N, d.E,
                                        transpose, moe::cuda::Precision::kTf32, cudaStreamLegacy));
}

void grad_weight_compute_gpu(void*, TF_OpKernelContext* ctx) {
  Tensor x = input(ctx, 0), dy = input(ctx, 1), g = input(ctx, 2);
  Dims d;
  if (!x || !dy || !g || !grad_weight_dims(ctx, x, dy, g, &d) || !check_groups(ctx, g.get(), d.E, d.M)) return;
  Tensor dw = output(ctx, {d.E, d.N, d.K});
  DeviceGroups groups_on_device(ctx, g, d.E);
  if (!dw || (d.E > 0 && !groups_on_device.ptr)) return;
  launched(ctx, moe::cuda::grouped_gemm_grad_weight(floats(x), floats(dy), groups_on_device.ptr, data(dw), d.M, d.K,
                                                    d.N, d.E, moe::cuda::Precision::kTf32, cudaStreamLegacy));
}
#endif

// Eager execution (all tfjs-node does) needs no shape function; graphs get an unknown shape.
void unknown_shape(TF_ShapeInferenceContext* ctx, TF_Status* status) {
  TF_ShapeInferenceContextSetUnknownShape(ctx, status);
}

// True when another copy of this addon (a different file, so different statics) registered
// the ops already: registering an op twice is a fatal CHECK in TF's op registry, not an error.
bool already_registered() {
  Status s = new_status();
  TF_Buffer* kernels = TF_GetRegisteredKernelsForOp(kLinear, s.get());  // a KernelList proto
  const bool found = TF_GetCode(s.get()) == TF_OK && kernels != nullptr && kernels->length > 0;
  TF_DeleteBuffer(kernels);
  return found;
}

// Registers both ops and their CPU kernels; returns "" or what failed.
std::string register_ops() {
  if (already_registered()) return "";
  Status s = new_status();
  auto failed = [&](const std::string& what) {
    return TF_GetCode(s.get()) == TF_OK ? "" : "registering " + what + " failed: " + TF_Message(s.get());
  };
  TF_OpDefinitionBuilder* op = TF_NewOpDefinitionBuilder(kLinear);
  TF_OpDefinitionBuilderAddInput(op, "x: float");
  TF_OpDefinitionBuilderAddInput(op, "weight: float");
  TF_OpDefinitionBuilderAddInput(op, "group_sizes: int32");
  TF_OpDefinitionBuilderAddAttr(op, "transpose_weight: bool = false");
  TF_OpDefinitionBuilderAddOutput(op, "y: float");
  TF_OpDefinitionBuilderSetShapeInferenceFunction(op, unknown_shape);
  TF_RegisterOpDefinition(op, s.get());  // takes ownership of op
  if (auto error = failed(std::string("op ") + kLinear); !error.empty()) return error;
  TF_RegisterKernelBuilder(
      kLinear, TF_NewKernelBuilder(kLinear, "CPU", linear_create, linear_compute, linear_delete), s.get());
  if (auto error = failed(std::string("the CPU kernel of ") + kLinear); !error.empty()) return error;
#ifdef MOE_WITH_CUDA
  TF_KernelBuilder* gpu = TF_NewKernelBuilder(kLinear, "GPU", linear_create, linear_compute_gpu, linear_delete);
  TF_KernelBuilder_HostMemory(gpu, "group_sizes");
  TF_RegisterKernelBuilder(kLinear, gpu, s.get());
  if (auto error = failed(std::string("the GPU kernel of ") + kLinear); !error.empty()) return error;
#endif

  op = TF_NewOpDefinitionBuilder(kGradWeight);
  TF_OpDefinitionBuilderAddInput(op, "x: float");
  TF_OpDefinitionBuilderAddInput(op, "dy: float");
  TF_OpDefinitionBuilderAddInput(op, "group_sizes: int32");
  TF_OpDefinitionBuilderAddOutput(op, "dw: float");
  TF_OpDefinitionBuilderSetShapeInferenceFunction(op, unknown_shape);
  TF_RegisterOpDefinition(op, s.get());
  if (auto error = failed(std::string("op ") + kGradWeight); !error.empty()) return error;
  TF_RegisterKernelBuilder(
      kGradWeight, TF_NewKernelBuilder(kGradWeight, "CPU", nullptr, grad_weight_compute, nullptr), s.get());
  if (auto error = failed(std::string("the CPU kernel of ") + kGradWeight); !error.empty()) return error;
#ifdef MOE_WITH_CUDA
  gpu = TF_NewKernelBuilder(kGradWeight, "GPU", nullptr, grad_weight_compute_gpu, nullptr);
  TF_KernelBuilder_HostMemory(gpu, "group_sizes");
  TF_RegisterKernelBuilder(kGradWeight, gpu, s.get());
  if (auto error = failed(std::string("the GPU kernel of ") + kGradWeight); !error.empty()) return error;
#endif

  // CPU only: on tfjs-node-gpu TensorFlow places it on the CPU.
  op = TF_NewOpDefinitionBuilder(kNf4);
  TF_OpDefinitionBuilderAddInput(op, "x: float");
  TF_OpDefinitionBuilderAddInput(op, "packed: int32");
  TF_OpDefinitionBuilderAddInput(op, "absmax: float");
  TF_OpDefinitionBuilderAddInput(op, "group_sizes: int32");
  TF_OpDefinitionBuilderAddAttr(op, "n: int");
  TF_OpDefinitionBuilderAddAttr(op, "k: int");
  TF_OpDefinitionBuilderAddAttr(op, "blocksize: int");
  TF_OpDefinitionBuilderAddAttr(op, "transpose_weight: bool = false");
  TF_OpDefinitionBuilderAddOutput(op, "y: float");
  TF_OpDefinitionBuilderSetShapeInferenceFunction(op, unknown_shape);
  TF_RegisterOpDefinition(op, s.get());
  if (auto error = failed(std::string("op ") + kNf4); !error.empty()) return error;
  TF_RegisterKernelBuilder(kNf4, TF_NewKernelBuilder(kNf4, "CPU", nf4_create, nf4_compute, nf4_delete), s.get());
  return failed(std::string("the CPU kernel of ") + kNf4);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // TF's registries are process-wide and a second registration of an op aborts the process,
  // while Init runs once per context that loads the addon (jest, worker threads).
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] { error = register_ops(); });
  if (!error.empty()) throw Napi::Error::New(env, "tfjs-moe-fused: " + error);
  exports.Set("version", Napi::String::New(env, MOE_PACKAGE_VERSION));
  exports.Set("tensorflowVersion", Napi::String::New(env, TF_Version()));
  exports.Set("moeFusedLinearOp", Napi::String::New(env, kLinear));
  exports.Set("moeFusedLinearGradWeightOp", Napi::String::New(env, kGradWeight));
  exports.Set("moeFusedLinearNf4Op", Napi::String::New(env, kNf4));
  return exports;
}

}  // namespace

NODE_API_MODULE(moe_fused_tf, Init)
