// setErrorClass and the construction of SyscallError instances, plus the argument readers shared
// by every other file. The error class lives in per-environment instance data, so the addon also
// works when loaded in a worker thread.

#include <string.h>

#include <cmath>
#include <string>

#include "common.h"

namespace criu {

namespace {

struct InstanceData {
  Napi::FunctionReference error_class;
};

InstanceData* GetData(Napi::Env env) {
  InstanceData* data = env.GetInstanceData<InstanceData>();
  if (data == nullptr) {
    data = new InstanceData();
    env.SetInstanceData(data);  // deleted by node-addon-api when the environment goes away
  }
  return data;
}

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "setErrorClass: expected a class");
  GetData(env)->error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? std::string(name) : "E" + std::to_string(err);
}

[[noreturn]] void ThrowType(Napi::Env env, const char* name, const char* expected) {
  throw Napi::TypeError::New(env, std::string("Argument ") + name + " must be " + expected);
}

}  // namespace

Napi::Value MakeSyscallError(Napi::Env env, const std::string& syscall, int err,
                             const ErrArgs& args) {
  Napi::Array js_args = Napi::Array::New(env, args.size());
  for (size_t i = 0; i < args.size(); i++) {
    const ErrArg& a = args[i];
    switch (a.kind) {
      case ErrArg::Kind::kNumber:
        js_args.Set(i, Napi::Number::New(env, a.number));
        break;
      case ErrArg::Kind::kBigInt:
        js_args.Set(i, Napi::BigInt::New(env, a.big));
        break;
      case ErrArg::Kind::kString:
        js_args.Set(i, Napi::String::New(env, a.str));
        break;
    }
  }
  std::string code = ErrnoName(err);
  InstanceData* data = GetData(env);
  if (data->error_class.IsEmpty()) {
    Napi::Error e = Napi::Error::New(env, syscall + ": " + code + " (setErrorClass not called)");
    e.Set("errno", Napi::Number::New(env, err));
    e.Set("errnoCode", Napi::String::New(env, code));
    e.Set("syscall", Napi::String::New(env, syscall));
    e.Set("args", js_args);
    return e.Value();
  }
  return data->error_class.New({Napi::String::New(env, syscall), Napi::Number::New(env, err),
                                Napi::String::New(env, code), js_args});
}

void ThrowSyscall(Napi::Env env, const std::string& syscall, int err, const ErrArgs& args) {
  throw Napi::Error(env, MakeSyscallError(env, syscall, err, args));
}

int32_t ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  return ValueInt32(info.Env(), v, name);
}

int32_t ValueInt32(Napi::Env env, Napi::Value v, const char* name) {
  if (!v.IsNumber()) ThrowType(env, name, "a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= INT32_MIN && d <= INT32_MAX) || std::trunc(d) != d) {
    throw Napi::RangeError::New(env, std::string("Argument ") + name + " must be a 32-bit integer");
  }
  return static_cast<int32_t>(d);
}

uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) ThrowType(info.Env(), name, "a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= UINT32_MAX) || std::trunc(d) != d) {
    throw Napi::RangeError::New(
        info.Env(), std::string("Argument ") + name + " must be a 32-bit unsigned integer");
  }
  return static_cast<uint32_t>(d);
}

int64_t ArgInt64Number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) ThrowType(info.Env(), name, "a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= -9007199254740991.0 && d <= 9007199254740991.0) || std::trunc(d) != d) {
    throw Napi::RangeError::New(info.Env(),
                                std::string("Argument ") + name + " must be a safe integer");
  }
  return static_cast<int64_t>(d);
}

uint64_t ValueBigUint64(Napi::Env env, Napi::Value v, const char* name) {
  if (!v.IsBigInt()) ThrowType(env, name, "a bigint");
  bool lossless = false;
  uint64_t r = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) {
    throw Napi::RangeError::New(env, std::string("Argument ") + name + " must fit in a u64");
  }
  return r;
}

uint64_t ArgBigUint64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return ValueBigUint64(info.Env(), info[i], name);
}

int64_t ArgBigInt64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBigInt()) ThrowType(info.Env(), name, "a bigint");
  bool lossless = false;
  int64_t r = v.As<Napi::BigInt>().Int64Value(&lossless);
  if (!lossless) {
    throw Napi::RangeError::New(info.Env(),
                                std::string("Argument ") + name + " must fit in an s64");
  }
  return r;
}

bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBoolean()) ThrowType(info.Env(), name, "a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string ValueString(Napi::Env env, Napi::Value v, const char* name) {
  if (!v.IsString()) ThrowType(env, name, "a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(env, std::string("Argument ") + name + " contains a NUL byte");
  }
  return s;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return ValueString(info.Env(), info[i], name);
}

Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBuffer()) ThrowType(info.Env(), name, "a Buffer");
  return v.As<Napi::Buffer<uint8_t>>();
}

Napi::TypedArrayOf<uint64_t> ArgBigUint64Array(const Napi::CallbackInfo& info, size_t i,
                                               const char* name) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    ThrowType(info.Env(), name, "a BigUint64Array");
  }
  return v.As<Napi::TypedArrayOf<uint64_t>>();
}

void CheckRange(Napi::Env env, size_t size, int64_t offset, int64_t len, const char* what) {
  if (offset < 0 || len < 0 || static_cast<uint64_t>(offset) > size ||
      static_cast<uint64_t>(len) > size - static_cast<uint64_t>(offset)) {
    throw Napi::RangeError::New(env, std::string(what) + ": offset " + std::to_string(offset) +
                                         " + length " + std::to_string(len) +
                                         " is outside the buffer of " + std::to_string(size) +
                                         " bytes");
  }
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
}

}  // namespace criu
