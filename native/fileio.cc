// Raw file I/O: open/close/read/write/pread/pwrite/fcntl/pipe2/fallocate/fsync/open_by_handle_at
// with exact flags and errno (no Node fs layer), offsets as bigint. Interrupted calls are
// retried, except close(2) (on Linux the fd is gone even when close reports EINTR).

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "async.h"
#include "common.h"

namespace criu {

namespace {

template <class F>
long Retry(F&& f, int* err) {
  long r;
  do {
    r = f();
  } while (r < 0 && errno == EINTR);
  if (r < 0) *err = errno;
  return r;
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  int flags = ArgInt32(info, 1, "flags");
  uint32_t mode = ArgUint32(info, 2, "mode");
  int err = 0;
  long fd = Retry([&] { return open(path.c_str(), flags, mode); }, &err);
  if (fd < 0) ThrowSyscall(env, "open", err, {path, flags});
  return Napi::Number::New(env, static_cast<double>(fd));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  if (close(fd) < 0 && errno != EINTR) ThrowSyscall(env, "close", errno, {fd});
  return env.Undefined();
}

// A transfer between an fd and buf[offset, offset + len).
struct Transfer {
  int fd = 0;
  uint8_t* ptr = nullptr;
  size_t len = 0;
  int64_t pos = -1;  // -1: read/write at the file position
  bool write = false;

  long Run(int* err) const {
    return Retry(
        [&]() -> long {
          if (pos < 0) return write ? ::write(fd, ptr, len) : ::read(fd, ptr, len);
          return write ? ::pwrite(fd, ptr, len, pos) : ::pread(fd, ptr, len, pos);
        },
        err);
  }

  std::string Name() const {
    if (pos < 0) return write ? "write" : "read";
    return write ? "pwrite" : "pread";
  }

  ErrArgs Args() const {
    if (pos < 0) return {fd, static_cast<long>(len)};
    return {fd, static_cast<long>(len), static_cast<uint64_t>(pos)};
  }
};

Transfer ReadTransfer(const Napi::CallbackInfo& info, bool write, bool positioned) {
  Napi::Env env = info.Env();
  Transfer t;
  t.write = write;
  t.fd = ArgInt32(info, 0, "fd");
  Napi::Buffer<uint8_t> buf = ArgBuffer(info, 1, "buf");
  int64_t offset = ArgInt64Number(info, 2, "offset");
  int64_t len = ArgInt64Number(info, 3, "len");
  CheckRange(env, buf.Length(), offset, len, write ? "write" : "read");
  t.ptr = buf.Data() + offset;
  t.len = static_cast<size_t>(len);
  if (positioned) {
    t.pos = ArgBigInt64(info, 4, "pos");
    if (t.pos < 0) throw Napi::RangeError::New(env, "pos must not be negative");
  }
  return t;
}

Napi::Value SyncTransfer(const Napi::CallbackInfo& info, bool write, bool positioned) {
  Transfer t = ReadTransfer(info, write, positioned);
  int err = 0;
  long r = t.Run(&err);
  if (r < 0) ThrowSyscall(info.Env(), t.Name(), err, t.Args());
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

Napi::Value AsyncTransfer(const Napi::CallbackInfo& info, bool write) {
  auto t = std::make_shared<Transfer>(ReadTransfer(info, write, true));
  auto* w = new PromiseWorker(
      info.Env(), t->Name(), t->Args(), {info[1]}, [t](int* err) { return t->Run(err); },
      NumberResult);
  return PromiseWorker::Start(w);
}

Napi::Value Read(const Napi::CallbackInfo& info) { return SyncTransfer(info, false, false); }
Napi::Value Write(const Napi::CallbackInfo& info) { return SyncTransfer(info, true, false); }
Napi::Value Pread(const Napi::CallbackInfo& info) { return SyncTransfer(info, false, true); }
Napi::Value Pwrite(const Napi::CallbackInfo& info) { return SyncTransfer(info, true, true); }
Napi::Value PreadAsync(const Napi::CallbackInfo& info) { return AsyncTransfer(info, false); }
Napi::Value PwriteAsync(const Napi::CallbackInfo& info) { return AsyncTransfer(info, true); }

Napi::Value Fcntl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int cmd = ArgInt32(info, 1, "cmd");
  int arg = ArgInt32(info, 2, "arg");
  int err = 0;
  long r = Retry([&] { return fcntl(fd, cmd, arg); }, &err);
  if (r < 0) ThrowSyscall(env, "fcntl", err, {fd, cmd, arg});
  return Napi::Number::New(env, static_cast<double>(r));
}

Napi::Value Pipe2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int flags = ArgInt32(info, 0, "flags");
  int fds[2];
  if (pipe2(fds, flags) < 0) ThrowSyscall(env, "pipe2", errno, {flags});
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, fds[0]));
  a.Set(1u, Napi::Number::New(env, fds[1]));
  return a;
}

struct FallocateArgs {
  int fd, mode;
  int64_t offset, len;
  ErrArgs Args() const {
    return {fd, mode, static_cast<uint64_t>(offset), static_cast<uint64_t>(len)};
  }
};

FallocateArgs ReadFallocate(const Napi::CallbackInfo& info) {
  return {ArgInt32(info, 0, "fd"), ArgInt32(info, 1, "mode"), ArgBigInt64(info, 2, "offset"),
          ArgBigInt64(info, 3, "len")};
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FallocateArgs a = ReadFallocate(info);
  int err = 0;
  long r = Retry([&] { return fallocate(a.fd, a.mode, a.offset, a.len); }, &err);
  if (r < 0) ThrowSyscall(env, "fallocate", err, a.Args());
  return env.Undefined();
}

// On the pool: allocating a large range is long kernel work (1 GiB of tmpfs: ~100 ms).
Napi::Value FallocateAsync(const Napi::CallbackInfo& info) {
  FallocateArgs a = ReadFallocate(info);
  auto* w = new PromiseWorker(
      info.Env(), "fallocate", a.Args(), {},
      [a](int* err) {
        return Retry([&] { return fallocate(a.fd, a.mode, a.offset, a.len); }, err);
      },
      [](Napi::Env env, long) { return env.Undefined(); });
  return PromiseWorker::Start(w);
}

Napi::Value Fsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int err = 0;
  if (Retry([&] { return fsync(fd); }, &err) < 0) ThrowSyscall(env, "fsync", err, {fd});
  return env.Undefined();
}

// lseek(fd, offset, whence): the new offset (SEEK_DATA / SEEK_HOLE find a file's holes; ENXIO:
// no data at or after the offset).
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int64_t offset = ArgBigInt64(info, 1, "offset");
  int whence = ArgInt32(info, 2, "whence");
  off_t r = lseek(fd, static_cast<off_t>(offset), whence);
  if (r < 0) ThrowSyscall(env, "lseek", errno, {fd, static_cast<long>(offset), whence});
  return Napi::BigInt::New(env, static_cast<int64_t>(r));
}

// open_by_handle_at(mount_fd, {handle_bytes, handle_type, f_handle}, flags): the handle's bytes
// come as a Buffer, its type as a number (the two fields of struct file_handle besides the bytes).
Napi::Value OpenByHandleAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int mount_fd = ArgInt32(info, 0, "mountFd");
  int type = ArgInt32(info, 1, "handleType");
  Napi::Buffer<uint8_t> bytes = ArgBuffer(info, 2, "handle");
  int flags = ArgInt32(info, 3, "flags");
  if (bytes.Length() > MAX_HANDLE_SZ) {
    Napi::RangeError::New(env, "handle: longer than MAX_HANDLE_SZ").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::unique_ptr<uint8_t[]> storage(new uint8_t[sizeof(struct file_handle) + MAX_HANDLE_SZ]);
  auto* fh = reinterpret_cast<struct file_handle*>(storage.get());
  fh->handle_bytes = static_cast<unsigned>(bytes.Length());
  fh->handle_type = type;
  memcpy(fh->f_handle, bytes.Data(), bytes.Length());
  int err = 0;
  long fd = Retry([&] { return open_by_handle_at(mount_fd, fh, flags); }, &err);
  if (fd < 0) ThrowSyscall(env, "open_by_handle_at", err, {mount_fd, type, flags});
  return Napi::Number::New(env, static_cast<double>(fd));
}

}  // namespace

void InitFileIo(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("write", Napi::Function::New(env, Write, "write"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("preadAsync", Napi::Function::New(env, PreadAsync, "preadAsync"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
  exports.Set("pwriteAsync", Napi::Function::New(env, PwriteAsync, "pwriteAsync"));
  exports.Set("fcntl", Napi::Function::New(env, Fcntl, "fcntl"));
  exports.Set("pipe2", Napi::Function::New(env, Pipe2, "pipe2"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("fallocateAsync", Napi::Function::New(env, FallocateAsync, "fallocateAsync"));
  exports.Set("fsync", Napi::Function::New(env, Fsync, "fsync"));
  exports.Set("lseek", Napi::Function::New(env, Lseek, "lseek"));
  exports.Set("openByHandleAt", Napi::Function::New(env, OpenByHandleAt, "openByHandleAt"));
}

}  // namespace criu
