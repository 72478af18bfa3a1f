// Argument readers shared by the Node-API addons: each checks one argument and throws a JS
// TypeError or RangeError that names it.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace moe::napi {

template <class T>
Napi::TypedArrayOf<T> typed_array(const Napi::CallbackInfo& info, size_t i, const char* name,
                                  napi_typedarray_type type, const char* type_name) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != type)
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a " + type_name);
  return info[i].As<Napi::TypedArrayOf<T>>();
}

inline Napi::Float32Array floats(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return typed_array<float>(info, i, name, napi_float32_array, "Float32Array");
}

inline Napi::Int32Array ints(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return typed_array<int32_t>(info, i, name, napi_int32_array, "Int32Array");
}

// A non-negative integer argument (a size or an index).
inline int64_t dim(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v != static_cast<double>(static_cast<int64_t>(v)) || v > 9.0e15)
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be a non-negative integer");
  return static_cast<int64_t>(v);
}

// a·b·c, or -1 when it overflows (no buffer has that many elements).
inline int64_t product(int64_t a, int64_t b, int64_t c = 1) {
  int64_t ab, abc;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc)) return -1;
  return abc;
}

}  // namespace moe::napi
