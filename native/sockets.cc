// socket(2), socketpair(2), setsockopt(2), getsockopt(2), and bind(2)/connect(2) to AF_UNIX
// paths: kernel-feature probes such as TCP_REPAIR, and the RPC service's SOCK_SEQPACKET sockets.

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <memory>
#include <string>
#include <vector>

#include "async.h"
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

Napi::Value Socketpair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int domain = ArgInt32(info, 0, "domain");
  int type = ArgInt32(info, 1, "type");
  int sv[2];
  if (socketpair(domain, type, 0, sv) < 0) ThrowSyscall(env, "socketpair", errno, {domain, type});
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, sv[0]);
  out.Set(1u, sv[1]);
  return out;
}

// An AF_UNIX address: a filesystem path, or an abstract name when `path` starts with a NUL (its
// length is then the name's own, as libuv and every other user of abstract names count it).
struct UnixAddress {
  sockaddr_un sa{};
  socklen_t len = 0;
};

// The path argument, NUL bytes allowed (ArgString refuses them: an abstract name starts with one).
std::string ArgUnixPath(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString())
    throw Napi::TypeError::New(info.Env(), "Argument path must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

std::shared_ptr<UnixAddress> UnixAddr(Napi::Env env, const std::string& path) {
  auto a = std::make_shared<UnixAddress>();
  a->sa.sun_family = AF_UNIX;
  bool is_abstract = !path.empty() && path[0] == '\0';
  size_t room = sizeof(a->sa.sun_path) - (is_abstract ? 0 : 1);
  if (path.size() < (is_abstract ? 2 : 1) || path.size() > room ||
      (!is_abstract && path.find('\0') != std::string::npos))
    throw Napi::RangeError::New(env, "Argument path must be 1.." + std::to_string(room) +
                                         " bytes, without NUL unless it starts with one: " + path);
  memcpy(a->sa.sun_path, path.data(), path.size());
  a->len =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (is_abstract ? 0 : 1));
  return a;
}

Napi::Value BindUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  std::string path = ArgUnixPath(info, 1);
  auto a = UnixAddr(env, path);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a->sa), a->len) < 0)
    ThrowSyscall(env, "bind", errno, {fd, path});
  return env.Undefined();
}

Napi::Value ConnectUnixAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  std::string path = ArgUnixPath(info, 1);
  auto a = UnixAddr(env, path);
  auto* w = new PromiseWorker(
      env, "connect", {fd, path}, {},
      [fd, a](int* err) -> long {
        // A unix connect is not left pending by a signal: EINTR means try again.
        long r;
        do {
          r = connect(fd, reinterpret_cast<sockaddr*>(&a->sa), a->len);
        } while (r < 0 && errno == EINTR);
        if (r < 0) *err = errno;
        return r;
      },
      [](Napi::Env e, long) { return e.Undefined(); });
  return PromiseWorker::Start(w);
}

}  // namespace

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("socket", Napi::Function::New(env, Socket, "socket"));
  exports.Set("socketpair", Napi::Function::New(env, Socketpair, "socketpair"));
  exports.Set("bindUnix", Napi::Function::New(env, BindUnix, "bindUnix"));
  exports.Set("connectUnixAsync", Napi::Function::New(env, ConnectUnixAsync, "connectUnixAsync"));
  exports.Set("setsockopt", Napi::Function::New(env, Setsockopt, "setsockopt"));
  exports.Set("getsockopt", Napi::Function::New(env, Getsockopt, "getsockopt"));
}

}  // namespace criu
