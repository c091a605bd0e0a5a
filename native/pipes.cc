// splice(2), vmsplice(2) and tee(2): moving pages through pipes without copying them through
// user space. Offsets are bigint or null (null for a pipe end, or to use the file position).

#include <errno.h>
#include <fcntl.h>
#include <sys/uio.h>

#include <memory>
#include <vector>

#include "async.h"
#include "common.h"

namespace criu {

namespace {

struct Splice {
  int fd_in = 0;
  int fd_out = 0;
  bool has_off_in = false;
  bool has_off_out = false;
  loff_t off_in = 0;
  loff_t off_out = 0;
  size_t len = 0;
  unsigned flags = 0;

  long Run(int* err) {
    long r;
    do {
      r = splice(fd_in, has_off_in ? &off_in : nullptr, fd_out, has_off_out ? &off_out : nullptr,
                 len, flags);
    } while (r < 0 && errno == EINTR);
    if (r < 0) *err = errno;
    return r;
  }

  ErrArgs Args() const { return {fd_in, fd_out, static_cast<long>(len)}; }
};

size_t ArgLen(const Napi::CallbackInfo& info, size_t i) {
  int64_t len = ArgInt64Number(info, i, "len");
  if (len < 0) throw Napi::RangeError::New(info.Env(), "Argument len must not be negative");
  return static_cast<size_t>(len);
}

bool ReadOffset(const Napi::CallbackInfo& info, size_t i, const char* name, loff_t* off) {
  if (info[i].IsNull() || info[i].IsUndefined()) return false;
  *off = ArgBigInt64(info, i, name);
  return true;
}

Splice ReadSplice(const Napi::CallbackInfo& info) {
  Splice s;
  s.fd_in = ArgInt32(info, 0, "fdIn");
  s.has_off_in = ReadOffset(info, 1, "offIn", &s.off_in);
  s.fd_out = ArgInt32(info, 2, "fdOut");
  s.has_off_out = ReadOffset(info, 3, "offOut", &s.off_out);
  s.len = ArgLen(info, 4);
  s.flags = ArgUint32(info, 5, "flags");
  return s;
}

Napi::Value SpliceSync(const Napi::CallbackInfo& info) {
  Splice s = ReadSplice(info);
  int err = 0;
  long r = s.Run(&err);
  if (r < 0) ThrowSyscall(info.Env(), "splice", err, s.Args());
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

Napi::Value SpliceAsync(const Napi::CallbackInfo& info) {
  auto s = std::make_shared<Splice>(ReadSplice(info));
  auto* w = new PromiseWorker(
      info.Env(), "splice", s->Args(), {}, [s](int* err) { return s->Run(err); }, NumberResult);
  return PromiseWorker::Start(w);
}

Napi::Value Vmsplice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  if (!info[1].IsArray()) throw Napi::TypeError::New(env, "Argument bufs must be an array");
  Napi::Array bufs = info[1].As<Napi::Array>();
  unsigned flags = ArgUint32(info, 2, "flags");
  std::vector<struct iovec> iov(bufs.Length());
  for (uint32_t i = 0; i < bufs.Length(); i++) {
    Napi::Value v = bufs.Get(i);
    if (!v.IsBuffer()) throw Napi::TypeError::New(env, "Argument bufs must hold Buffers");
    auto b = v.As<Napi::Buffer<uint8_t>>();
    iov[i] = {b.Data(), b.Length()};
  }
  long r;
  do {
    r = vmsplice(fd, iov.data(), iov.size(), flags);
  } while (r < 0 && errno == EINTR);
  if (r < 0) ThrowSyscall(env, "vmsplice", errno, {fd});
  return Napi::Number::New(env, static_cast<double>(r));
}

Napi::Value Tee(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd_in = ArgInt32(info, 0, "fdIn");
  int fd_out = ArgInt32(info, 1, "fdOut");
  size_t len = ArgLen(info, 2);
  unsigned flags = ArgUint32(info, 3, "flags");
  long r;
  do {
    r = tee(fd_in, fd_out, len, flags);
  } while (r < 0 && errno == EINTR);
  if (r < 0) ThrowSyscall(env, "tee", errno, {fd_in, fd_out, static_cast<long>(len)});
  return Napi::Number::New(env, static_cast<double>(r));
}

}  // namespace

void InitPipes(Napi::Env env, Napi::Object exports) {
  exports.Set("splice", Napi::Function::New(env, SpliceSync, "splice"));
  exports.Set("spliceAsync", Napi::Function::New(env, SpliceAsync, "spliceAsync"));
  exports.Set("vmsplice", Napi::Function::New(env, Vmsplice, "vmsplice"));
  exports.Set("tee", Napi::Function::New(env, Tee, "tee"));
}

}  // namespace criu
