// Shared helpers of the criu_native addon: argument checking, SyscallError construction, and the
// registration hooks each source file exposes to addon.cc.
//
// Conventions: a failing system call throws the JS class handed to setErrorClass, built as
// new ErrorClass(syscall, errno, errnoCode, args); wrong JS argument types throw TypeError and
// out-of-range values RangeError. C++ exceptions are enabled (NAPI_CPP_EXCEPTIONS).

#ifndef CRIU_NATIVE_COMMON_H_
#define CRIU_NATIVE_COMMON_H_

#include <napi.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace criu {

// One argument shown in a SyscallError: a number (pid, fd), a bigint (address) or a string (path).
struct ErrArg {
  enum class Kind { kNumber, kBigInt, kString };
  Kind kind;
  double number = 0;
  uint64_t big = 0;
  std::string str;

  ErrArg(int v) : kind(Kind::kNumber), number(v) {}                  // NOLINT(runtime/explicit)
  ErrArg(unsigned v) : kind(Kind::kNumber), number(v) {}             // NOLINT(runtime/explicit)
  ErrArg(long v) : kind(Kind::kNumber), number(v) {}                 // NOLINT(runtime/explicit)
  ErrArg(uint64_t v) : kind(Kind::kBigInt), big(v) {}                // NOLINT(runtime/explicit)
  ErrArg(const char* s) : kind(Kind::kString), str(s) {}             // NOLINT(runtime/explicit)
  ErrArg(std::string s) : kind(Kind::kString), str(std::move(s)) {}  // NOLINT(runtime/explicit)
};

using ErrArgs = std::vector<ErrArg>;

// The SyscallError instance for (syscall, err, args); a plain Error if setErrorClass was not
// called.
Napi::Value MakeSyscallError(Napi::Env env, const std::string& syscall, int err,
                             const ErrArgs& args);

// Throws MakeSyscallError(...) as a C++ exception that node-addon-api turns into a JS throw.
[[noreturn]] void ThrowSyscall(Napi::Env env, const std::string& syscall, int err,
                               const ErrArgs& args);

// Argument readers: each throws TypeError naming the argument when the JS type is wrong.
int32_t ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* name);
uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* name);
int64_t ArgInt64Number(const Napi::CallbackInfo& info, size_t i, const char* name);
uint64_t ArgBigUint64(const Napi::CallbackInfo& info, size_t i, const char* name);
int64_t ArgBigInt64(const Napi::CallbackInfo& info, size_t i, const char* name);
bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::TypedArrayOf<uint64_t> ArgBigUint64Array(const Napi::CallbackInfo& info, size_t i,
                                               const char* name);

// Readers for object properties and plain values (same error rules).
uint64_t ValueBigUint64(Napi::Env env, Napi::Value v, const char* name);
int32_t ValueInt32(Napi::Env env, Napi::Value v, const char* name);
std::string ValueString(Napi::Env env, Napi::Value v, const char* name);

// Checks offset + len <= size, throwing RangeError otherwise.
void CheckRange(Napi::Env env, size_t size, int64_t offset, int64_t len, const char* what);

// Each source file registers its functions on the module's exports.
void InitErrors(Napi::Env env, Napi::Object exports);
void InitPtrace(Napi::Env env, Napi::Object exports);
void InitWait(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitFileIo(Napi::Env env, Napi::Object exports);
void InitIoctl(Napi::Env env, Napi::Object exports);
void InitPipes(Napi::Env env, Napi::Object exports);
void InitTask(Napi::Env env, Napi::Object exports);
void InitSockets(Napi::Env env, Napi::Object exports);
void InitCpuid(Napi::Env env, Napi::Object exports);

}  // namespace criu

#endif  // CRIU_NATIVE_COMMON_H_
