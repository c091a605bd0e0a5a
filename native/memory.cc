// process_vm_readv(2) / process_vm_writev(2): one local Buffer range against a list of remote
// (addr, len) pairs given as a BigUint64Array. Sync forms run on the JS thread (any thread may
// call them: they need ptrace access mode, not a ptrace attachment); async forms on the pool.
//
// pread(2) of /proc/PID/mem has it too (memReadv: one pread per pair, stopping at the first
// short one, as process_vm_readv stops): reading that file takes the task's pages by reference
// (get_user_pages), where process_vm_readv pins them, and a read-only pin of an anonymous page the
// task shares copy-on-write (with its parent or its children) makes the kernel give the task a
// copy of its own first. Measured here: 32 MiB a task shared with its child became private to
// both after one pre-dump; reading 1 GiB so ran at 0.46 GiB/s, through /proc/PID/mem at ~7.
//
// ioctl(UFFDIO_COPY) has the same shape, the remote side being the memory of the userfaultfd's
// process: one ioctl per (addr, len) pair, each carrying on after a partial copy (EAGAIN). It
// installs new pages holding the data without zeroing them first, which process_vm_writev into
// pages not yet there has to do: measured here, 1 GiB in ~230 ms instead of ~350.

#include <errno.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
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
  int uffd = -1;    // UFFDIO_COPY into the userfaultfd's process instead of process_vm_writev
  int mem_fd = -1;  // pread of this /proc/PID/mem instead of process_vm_readv
  uint8_t* local = nullptr;
  size_t local_len = 0;
  std::vector<struct iovec> remote;
  uint64_t failed_at = 0;  // UFFDIO_COPY: the address the failing ioctl was at

  long Run(int* err) {
    if (uffd >= 0) return RunUffdCopy(err);
    if (mem_fd >= 0) return RunMemRead(err);
    struct iovec l = {local, local_len};
    long nr = write ? SYS_process_vm_writev : SYS_process_vm_readv;
    long r;
    do {
      r = syscall(nr, pid, &l, 1UL, remote.data(), remote.size(), 0UL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) *err = errno;
    return r;
  }

  long RunUffdCopy(int* err) {
    uint8_t* src = local;
    for (const struct iovec& r : remote) {
      uint64_t dst = reinterpret_cast<uint64_t>(r.iov_base);
      uint64_t left = r.iov_len;
      while (left > 0) {
        struct uffdio_copy c = {};
        c.dst = dst;
        c.src = reinterpret_cast<uint64_t>(src);
        c.len = left;
        int rc = ioctl(uffd, UFFDIO_COPY, &c);
        uint64_t done = c.copy > 0 ? static_cast<uint64_t>(c.copy) : 0;
        if (rc < 0 && errno != EAGAIN && errno != EINTR) {
          *err = errno;
          failed_at = dst + done;
          return -1;
        }
        if (rc == 0) done = left;
        dst += done;
        src += done;
        left -= done;
      }
    }
    return static_cast<long>(src - local);
  }

  // Like process_vm_readv: the bytes read up to the first pread that falls short; an error only
  // when nothing was read.
  long RunMemRead(int* err) {
    uint8_t* dst = local;
    for (const struct iovec& r : remote) {
      uint64_t addr = reinterpret_cast<uint64_t>(r.iov_base);
      size_t left = r.iov_len;
      while (left > 0) {
        ssize_t n = pread(mem_fd, dst, left, static_cast<off_t>(addr));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          if (n < 0 && dst == local) {
            *err = errno;
            failed_at = addr;
            return -1;
          }
          return static_cast<long>(dst - local);
        }
        dst += n;
        addr += static_cast<uint64_t>(n);
        left -= static_cast<size_t>(n);
      }
    }
    return static_cast<long>(dst - local);
  }

  const char* Name() const {
    if (mem_fd >= 0) return "pread(/proc/PID/mem)";
    return uffd >= 0 ? "ioctl(UFFDIO_COPY)" : write ? "process_vm_writev" : "process_vm_readv";
  }

  ErrArgs Args() const {
    if (uffd >= 0) return {uffd, failed_at};
    if (mem_fd >= 0) return {mem_fd, failed_at};
    return {pid};
  }
};

enum class Via { kPid, kUffd, kMemFd };

// Reads (pid, buffer, offset, remote), or (fd, ...) for UFFDIO_COPY and /proc/PID/mem, and
// checks the remote total fits in the buffer.
VmCopy Read(const Napi::CallbackInfo& info, bool write, Via via = Via::kPid) {
  Napi::Env env = info.Env();
  VmCopy c;
  c.write = write;
  if (via == Via::kUffd) {
    c.uffd = ArgInt32(info, 0, "fd");
  } else if (via == Via::kMemFd) {
    c.mem_fd = ArgInt32(info, 0, "memFd");
  } else {
    c.pid = ArgInt32(info, 0, "pid");
  }
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

Napi::Value Sync(const Napi::CallbackInfo& info, bool write, Via via = Via::kPid) {
  VmCopy c = Read(info, write, via);
  int err = 0;
  long r = c.Run(&err);
  if (r < 0) ThrowSyscall(info.Env(), c.Name(), err, c.Args());
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// The error's arguments are known only once the copy has failed, on the pool thread.
class VmCopyWorker : public PromiseWorker {
 public:
  VmCopyWorker(Napi::Env env, std::shared_ptr<VmCopy> c, std::vector<Napi::Value> keep)
      : PromiseWorker(
            env, c->Name(), c->Args(), std::move(keep), [c](int* err) { return c->Run(err); },
            NumberResult),
        c_(std::move(c)) {}

 protected:
  void OnOK() override {
    SetErrArgs(c_->Args());
    PromiseWorker::OnOK();
  }

 private:
  std::shared_ptr<VmCopy> c_;
};

Napi::Value Async(const Napi::CallbackInfo& info, bool write, Via via = Via::kPid) {
  auto c = std::make_shared<VmCopy>(Read(info, write, via));
  return PromiseWorker::Start(new VmCopyWorker(info.Env(), c, {info[1], info[3]}));
}

Napi::Value Readv(const Napi::CallbackInfo& info) { return Sync(info, false); }
Napi::Value ReadvAsync(const Napi::CallbackInfo& info) { return Async(info, false); }
Napi::Value Writev(const Napi::CallbackInfo& info) { return Sync(info, true); }
Napi::Value WritevAsync(const Napi::CallbackInfo& info) { return Async(info, true); }
Napi::Value UffdCopy(const Napi::CallbackInfo& info) { return Sync(info, true, Via::kUffd); }
Napi::Value UffdCopyAsync(const Napi::CallbackInfo& info) { return Async(info, true, Via::kUffd); }
Napi::Value MemReadv(const Napi::CallbackInfo& info) { return Sync(info, false, Via::kMemFd); }
Napi::Value MemReadvAsync(const Napi::CallbackInfo& info) {
  return Async(info, false, Via::kMemFd);
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("processVmReadv", Napi::Function::New(env, Readv, "processVmReadv"));
  exports.Set("memReadv", Napi::Function::New(env, MemReadv, "memReadv"));
  exports.Set("memReadvAsync", Napi::Function::New(env, MemReadvAsync, "memReadvAsync"));
  exports.Set("processVmReadvAsync", Napi::Function::New(env, ReadvAsync, "processVmReadvAsync"));
  exports.Set("processVmWritev", Napi::Function::New(env, Writev, "processVmWritev"));
  exports.Set("processVmWritevAsync",
              Napi::Function::New(env, WritevAsync, "processVmWritevAsync"));
  exports.Set("uffdioCopy", Napi::Function::New(env, UffdCopy, "uffdioCopy"));
  exports.Set("uffdioCopyAsync", Napi::Function::New(env, UffdCopyAsync, "uffdioCopyAsync"));
}

}  // namespace criu
