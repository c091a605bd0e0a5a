// CPU identification: the cpuid instruction and xgetbv (XCR0, XCR1). Not system calls, but only
// native code can execute them; cpuinfo (src/cpuinfo) decodes the raw registers in TypeScript.
//
// xgetbv raises #UD (SIGILL, killing node) when the OS has not set CR4.OSXSAVE, and #GP for an
// index the CPU does not implement, so both are checked here with cpuid before executing it.

#include <cpuid.h>

#include <cstdint>
#include <string>

#include "common.h"

namespace criu {

namespace {

constexpr uint32_t kCpuid1EcxOsxsave = 1u << 27;  // CPUID.1:ECX.OSXSAVE
constexpr uint32_t kCpuidD1EaxXgetbv1 = 1u << 2;  // CPUID.(EAX=0DH,ECX=1):EAX.XGETBV_ECX_1

void RawCpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
  __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

Napi::Value Cpuid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t leaf = ArgUint32(info, 0, "leaf");
  uint32_t subleaf = ArgUint32(info, 1, "subleaf");
  uint32_t regs[4];
  RawCpuid(leaf, subleaf, regs);
  Napi::Array r = Napi::Array::New(env, 4);
  for (uint32_t i = 0; i < 4; i++) r.Set(i, Napi::Number::New(env, regs[i]));
  return r;
}

Napi::Value Xgetbv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t index = ArgUint32(info, 0, "index");
  uint32_t regs[4];
  RawCpuid(0, 0, regs);
  uint32_t max_leaf = regs[0];
  RawCpuid(1, 0, regs);
  if ((regs[2] & kCpuid1EcxOsxsave) == 0) {
    throw Napi::Error::New(env, "xgetbv: the OS has not enabled XSAVE (CPUID.1:ECX.OSXSAVE is 0)");
  }
  bool has_xgetbv1 = false;
  if (max_leaf >= 0xd) {
    RawCpuid(0xd, 1, regs);
    has_xgetbv1 = (regs[0] & kCpuidD1EaxXgetbv1) != 0;
  }
  if (index > 1 || (index == 1 && !has_xgetbv1)) {
    throw Napi::RangeError::New(env, "xgetbv: this CPU has no XCR" + std::to_string(index));
  }
  uint32_t lo = 0;
  uint32_t hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(index));
  return Napi::BigInt::New(env, (static_cast<uint64_t>(hi) << 32) | lo);
}

}  // namespace

void InitCpuid(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuid", Napi::Function::New(env, Cpuid, "cpuid"));
  exports.Set("xgetbv", Napi::Function::New(env, Xgetbv, "xgetbv"));
}

}  // namespace criu
