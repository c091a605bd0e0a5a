// process_vm_readv(2) / process_vm_writev(2): one local Buffer range against a list of remote
// (addr, len) pairs given as a BigUint64Array. Sync forms run on the JS thread (any thread may
// call them: they need ptrace access mode, not a ptrace attachment); async forms on the pool.

#include <errno.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <memory>
#include <vector>

#include "async.h"
#include "common.h"

namespace criu {

namespace {

struct VmCopy {
  int pid = 0;
  bool write = false;
  uint8_t* local = nullptr;
  size_t local_len = 0;
  std::vector<struct iovec> remote;

  long Run(int* err) const {
    struct iovec l = {local, local_len};
    long nr = write ? SYS_process_vm_writev : SYS_process_vm_readv;
    long r;
    do {
      r = syscall(nr, pid, &l, 1UL, remote.data(), remote.size(), 0UL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) *err = errno;
    return r;
  }

  const char* Name() const { return write ? "process_vm_writev" : "process_vm_readv"; }
};

// Reads (pid, buffer, offset, remote) and checks the remote total fits in the buffer.
VmCopy Read(const Napi::CallbackInfo& info, bool write) {
  Napi::Env env = info.Env();
  VmCopy c;
  c.write = write;
  c.pid = ArgInt32(info, 0, "pid");
  Napi::Buffer<uint8_t> buf = ArgBuffer(info, 1, write ? "src" : "dst");
  int64_t offset = ArgInt64Number(info, 2, write ? "srcOffset" : "dstOffset");
  Napi::TypedArrayOf<uint64_t> remote = ArgBigUint64Array(info, 3, "remote");
  if (remote.ElementLength() % 2 != 0) {
    throw Napi::RangeError::New(env, "remote must hold (addr, len) pairs");
  }
  uint64_t total = 0;
  c.remote.reserve(remote.ElementLength() / 2);
  for (size_t i = 0; i < remote.ElementLength(); i += 2) {
    uint64_t addr = remote[i];
    uint64_t len = remote[i + 1];
    total += len;
    c.remote.push_back({reinterpret_cast<void*>(addr), static_cast<size_t>(len)});
  }
  if (total > static_cast<uint64_t>(INT64_MAX)) throw Napi::RangeError::New(env, "remote too long");
  CheckRange(env, buf.Length(), offset, static_cast<int64_t>(total), c.Name());
  c.local = buf.Data() + offset;
  c.local_len = static_cast<size_t>(total);
  return c;
}

Napi::Value Sync(const Napi::CallbackInfo& info, bool write) {
  VmCopy c = Read(info, write);
  int err = 0;
  long r = c.Run(&err);
  if (r < 0) ThrowSyscall(info.Env(), c.Name(), err, {c.pid});
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

Napi::Value Async(const Napi::CallbackInfo& info, bool write) {
  auto c = std::make_shared<VmCopy>(Read(info, write));
  auto* w = new PromiseWorker(
      info.Env(), c->Name(), {c->pid}, {info[1], info[3]}, [c](int* err) { return c->Run(err); },
      NumberResult);
  return PromiseWorker::Start(w);
}

Napi::Value Readv(const Napi::CallbackInfo& info) { return Sync(info, false); }
Napi::Value ReadvAsync(const Napi::CallbackInfo& info) { return Async(info, false); }
Napi::Value Writev(const Napi::CallbackInfo& info) { return Sync(info, true); }
Napi::Value WritevAsync(const Napi::CallbackInfo& info) { return Async(info, true); }

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("processVmReadv", Napi::Function::New(env, Readv, "processVmReadv"));
  exports.Set("processVmReadvAsync", Napi::Function::New(env, ReadvAsync, "processVmReadvAsync"));
  exports.Set("processVmWritev", Napi::Function::New(env, Writev, "processVmWritev"));
  exports.Set("processVmWritevAsync",
              Napi::Function::New(env, WritevAsync, "processVmWritevAsync"));
}

}  // namespace criu
