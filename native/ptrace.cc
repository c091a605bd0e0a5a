// ptrace(2) requests, each run on the tracer thread (tracer.h). Raw syscall(SYS_ptrace) is used
// rather than glibc's ptrace(), whose PEEK* convention returns the word and overloads errno.
// Kernel structs come back as Buffers; they are decoded in src/sys/.

#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "tracer.h"

namespace criu {

namespace {

// Request numbers from uapi linux/ptrace.h (some newer than the libc enum).
constexpr long kSyscall = 24;
constexpr long kCont = 7;
constexpr long kDetach = 17;
constexpr long kPeekData = 2;
constexpr long kPokeData = 5;
constexpr long kGetRegset = 0x4204;
constexpr long kSetRegset = 0x4205;
constexpr long kSeize = 0x4206;
constexpr long kInterrupt = 0x4207;
constexpr long kListen = 0x4208;
constexpr long kPeekSiginfo = 0x4209;
constexpr long kGetSigmask = 0x420a;
constexpr long kSetSigmask = 0x420b;
constexpr long kSeccompGetFilter = 0x420c;
constexpr long kGetEventMsg = 0x4201;
constexpr long kGetSiginfo = 0x4202;
constexpr long kSetSiginfo = 0x4203;
constexpr long kGetRseqConfiguration = 0x420f;
constexpr uint32_t kPeekSiginfoShared = 1;

constexpr size_t kSiginfoSize = 128;
constexpr size_t kSockFilterSize = 8;
constexpr size_t kRseqConfigurationSize = 32;

struct Result {
  long ret;
  int err;
};

Result Ptrace(long request, int pid, uint64_t addr, uint64_t data) {
  Result r{};
  RunOnTracer([&] {
    r.ret = syscall(SYS_ptrace, request, pid, addr, data);
    r.err = r.ret < 0 ? errno : 0;
  });
  return r;
}

uint64_t Ptr(const void* p) { return reinterpret_cast<uint64_t>(p); }

// Runs a request with no result but success, throwing on failure.
void Simple(Napi::Env env, const char* name, long request, int pid, uint64_t addr, uint64_t data) {
  Result r = Ptrace(request, pid, addr, data);
  if (r.ret < 0) ThrowSyscall(env, name, r.err, {pid});
}

Napi::Value Seize(const Napi::CallbackInfo& info) {
  int pid = ArgInt32(info, 0, "pid");
  uint32_t options = ArgUint32(info, 1, "options");
  Simple(info.Env(), "ptrace(PTRACE_SEIZE)", kSeize, pid, 0, options);
  return info.Env().Undefined();
}

Napi::Value Interrupt(const Napi::CallbackInfo& info) {
  int pid = ArgInt32(info, 0, "pid");
  Simple(info.Env(), "ptrace(PTRACE_INTERRUPT)", kInterrupt, pid, 0, 0);
  return info.Env().Undefined();
}

Napi::Value Cont(const Napi::CallbackInfo& info) {
  int pid = ArgInt32(info, 0, "pid");
  uint32_t sig = ArgUint32(info, 1, "sig");
  Simple(info.Env(), "ptrace(PTRACE_CONT)", kCont, pid, 0, sig);
  return info.Env().Undefined();
}

Napi::Value SyscallCont(const Napi::CallbackInfo& info) {
  int pid = ArgInt32(info, 0, "pid");
  uint32_t sig = ArgUint32(info, 1, "sig");
  Simple(info.Env(), "ptrace(PTRACE_SYSCALL)", kSyscall, pid, 0, sig);
  return info.Env().Undefined();
}

Napi::Value Detach(const Napi::CallbackInfo& info) {
  int pid = ArgInt32(info, 0, "pid");
  uint32_t sig = ArgUint32(info, 1, "sig");
  Simple(info.Env(), "ptrace(PTRACE_DETACH)", kDetach, pid, 0, sig);
  return info.Env().Undefined();
}

Napi::Value Listen(const Napi::CallbackInfo& info) {
  int pid = ArgInt32(info, 0, "pid");
  Simple(info.Env(), "ptrace(PTRACE_LISTEN)", kListen, pid, 0, 0);
  return info.Env().Undefined();
}

Napi::Value GetRegset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint32_t type = ArgUint32(info, 1, "type");
  uint32_t size = ArgUint32(info, 2, "size");
  std::vector<uint8_t> buf(size);
  struct iovec iov = {buf.data(), buf.size()};
  Result r = Ptrace(kGetRegset, pid, type, Ptr(&iov));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_GETREGSET)", r.err, {pid, type});
  return Napi::Buffer<uint8_t>::Copy(env, buf.data(), iov.iov_len);
}

Napi::Value SetRegset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint32_t type = ArgUint32(info, 1, "type");
  Napi::Buffer<uint8_t> data = ArgBuffer(info, 2, "data");
  struct iovec iov = {data.Data(), data.Length()};
  Result r = Ptrace(kSetRegset, pid, type, Ptr(&iov));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_SETREGSET)", r.err, {pid, type});
  return env.Undefined();
}

Napi::Value GetSiginfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint8_t buf[kSiginfoSize] = {};
  Result r = Ptrace(kGetSiginfo, pid, 0, Ptr(buf));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_GETSIGINFO)", r.err, {pid});
  return Napi::Buffer<uint8_t>::Copy(env, buf, sizeof(buf));
}

Napi::Value SetSiginfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  Napi::Buffer<uint8_t> data = ArgBuffer(info, 1, "siginfo");
  if (data.Length() != kSiginfoSize) {
    throw Napi::RangeError::New(env, "ptraceSetSiginfo: siginfo must be 128 bytes");
  }
  Result r = Ptrace(kSetSiginfo, pid, 0, Ptr(data.Data()));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_SETSIGINFO)", r.err, {pid});
  return env.Undefined();
}

Napi::Value PeekSiginfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  int64_t offset = ArgInt64Number(info, 1, "offset");
  int32_t nr = ArgInt32(info, 2, "nr");
  bool shared = ArgBool(info, 3, "shared");
  if (offset < 0 || nr < 0)
    throw Napi::RangeError::New(env, "ptracePeekSiginfo: negative offset or nr");
  struct {
    uint64_t off;
    uint32_t flags;
    int32_t nr;
  } args = {static_cast<uint64_t>(offset), shared ? kPeekSiginfoShared : 0, nr};
  std::vector<uint8_t> buf(static_cast<size_t>(nr) * kSiginfoSize);
  Result r = Ptrace(kPeekSiginfo, pid, Ptr(&args), Ptr(buf.data()));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_PEEKSIGINFO)", r.err, {pid});
  return Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(r.ret) * kSiginfoSize);
}

Napi::Value GetSigmask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint64_t mask = 0;
  Result r = Ptrace(kGetSigmask, pid, sizeof(mask), Ptr(&mask));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_GETSIGMASK)", r.err, {pid});
  return Napi::BigInt::New(env, mask);
}

Napi::Value SetSigmask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint64_t mask = ArgBigUint64(info, 1, "mask");
  Result r = Ptrace(kSetSigmask, pid, sizeof(mask), Ptr(&mask));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_SETSIGMASK)", r.err, {pid, mask});
  return env.Undefined();
}

Napi::Value GetEventMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint64_t msg = 0;
  Result r = Ptrace(kGetEventMsg, pid, 0, Ptr(&msg));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_GETEVENTMSG)", r.err, {pid});
  return Napi::BigInt::New(env, msg);
}

Napi::Value SeccompGetFilter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint32_t index = ArgUint32(info, 1, "index");
  // First call with no buffer returns the number of instructions; the second fetches them. Both
  // in one tracer job so nothing can change in between.
  Result r{};
  std::vector<uint8_t> buf;
  RunOnTracer([&] {
    r.ret = syscall(SYS_ptrace, kSeccompGetFilter, pid, index, 0);
    if (r.ret < 0) {
      r.err = errno;
      return;
    }
    buf.resize(static_cast<size_t>(r.ret) * kSockFilterSize);
    r.ret = syscall(SYS_ptrace, kSeccompGetFilter, pid, index, Ptr(buf.data()));
    r.err = r.ret < 0 ? errno : 0;
  });
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_SECCOMP_GET_FILTER)", r.err, {pid, index});
  size_t len = std::min(buf.size(), static_cast<size_t>(r.ret) * kSockFilterSize);
  return Napi::Buffer<uint8_t>::Copy(env, buf.data(), len);
}

Napi::Value GetRseqConfiguration(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint8_t buf[kRseqConfigurationSize] = {};
  Result r = Ptrace(kGetRseqConfiguration, pid, sizeof(buf), Ptr(buf));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)", r.err, {pid});
  size_t len = std::min(sizeof(buf), static_cast<size_t>(r.ret));
  return Napi::Buffer<uint8_t>::Copy(env, buf, len);
}

Napi::Value PeekData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint64_t addr = ArgBigUint64(info, 1, "addr");
  uint64_t word = 0;
  // The raw syscall stores the word at `data` (glibc's wrapper hides that).
  Result r = Ptrace(kPeekData, pid, addr, Ptr(&word));
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_PEEKDATA)", r.err, {pid, addr});
  return Napi::BigInt::New(env, word);
}

Napi::Value PokeData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint64_t addr = ArgBigUint64(info, 1, "addr");
  uint64_t word = ArgBigUint64(info, 2, "word");
  Result r = Ptrace(kPokeData, pid, addr, word);
  if (r.ret < 0) ThrowSyscall(env, "ptrace(PTRACE_POKEDATA)", r.err, {pid, addr});
  return env.Undefined();
}

}  // namespace

void InitPtrace(Napi::Env env, Napi::Object exports) {
  exports.Set("ptraceSeize", Napi::Function::New(env, Seize, "ptraceSeize"));
  exports.Set("ptraceInterrupt", Napi::Function::New(env, Interrupt, "ptraceInterrupt"));
  exports.Set("ptraceCont", Napi::Function::New(env, Cont, "ptraceCont"));
  exports.Set("ptraceSyscall", Napi::Function::New(env, SyscallCont, "ptraceSyscall"));
  exports.Set("ptraceDetach", Napi::Function::New(env, Detach, "ptraceDetach"));
  exports.Set("ptraceListen", Napi::Function::New(env, Listen, "ptraceListen"));
  exports.Set("ptraceGetRegset", Napi::Function::New(env, GetRegset, "ptraceGetRegset"));
  exports.Set("ptraceSetRegset", Napi::Function::New(env, SetRegset, "ptraceSetRegset"));
  exports.Set("ptraceGetSiginfo", Napi::Function::New(env, GetSiginfo, "ptraceGetSiginfo"));
  exports.Set("ptraceSetSiginfo", Napi::Function::New(env, SetSiginfo, "ptraceSetSiginfo"));
  exports.Set("ptracePeekSiginfo", Napi::Function::New(env, PeekSiginfo, "ptracePeekSiginfo"));
  exports.Set("ptraceGetSigmask", Napi::Function::New(env, GetSigmask, "ptraceGetSigmask"));
  exports.Set("ptraceSetSigmask", Napi::Function::New(env, SetSigmask, "ptraceSetSigmask"));
  exports.Set("ptraceGetEventMsg", Napi::Function::New(env, GetEventMsg, "ptraceGetEventMsg"));
  exports.Set("ptraceSeccompGetFilter",
              Napi::Function::New(env, SeccompGetFilter, "ptraceSeccompGetFilter"));
  exports.Set("ptraceGetRseqConfiguration",
              Napi::Function::New(env, GetRseqConfiguration, "ptraceGetRseqConfiguration"));
  exports.Set("ptracePeekData", Napi::Function::New(env, PeekData, "ptracePeekData"));
  exports.Set("ptracePokeData", Napi::Function::New(env, PokeData, "ptracePokeData"));
}

}  // namespace criu
