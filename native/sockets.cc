// socket(2), setsockopt(2), getsockopt(2): enough for kernel-feature probes such as TCP_REPAIR.

#include <errno.h>
#include <sys/socket.h>

#include <vector>

#include "common.h"

namespace criu {

namespace {

Napi::Value Socket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int domain = ArgInt32(info, 0, "domain");
  int type = ArgInt32(info, 1, "type");
  int protocol = ArgInt32(info, 2, "protocol");
  int fd = socket(domain, type, protocol);
  if (fd < 0) ThrowSyscall(env, "socket", errno, {domain, type, protocol});
  return Napi::Number::New(env, fd);
}

Napi::Value Setsockopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int level = ArgInt32(info, 1, "level");
  int name = ArgInt32(info, 2, "name");
  Napi::Buffer<uint8_t> value = ArgBuffer(info, 3, "value");
  if (setsockopt(fd, level, name, value.Data(), static_cast<socklen_t>(value.Length())) < 0) {
    ThrowSyscall(env, "setsockopt", errno, {fd, level, name});
  }
  return env.Undefined();
}

Napi::Value Getsockopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int level = ArgInt32(info, 1, "level");
  int name = ArgInt32(info, 2, "name");
  uint32_t size = ArgUint32(info, 3, "size");
  std::vector<uint8_t> buf(size);
  socklen_t len = size;
  if (getsockopt(fd, level, name, buf.data(), &len) < 0) {
    ThrowSyscall(env, "getsockopt", errno, {fd, level, name});
  }
  return Napi::Buffer<uint8_t>::Copy(env, buf.data(), std::min<size_t>(len, size));
}

}  // namespace

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("socket", Napi::Function::New(env, Socket, "socket"));
  exports.Set("setsockopt", Napi::Function::New(env, Setsockopt, "setsockopt"));
  exports.Set("getsockopt", Napi::Function::New(env, Getsockopt, "getsockopt"));
}

}  // namespace criu
