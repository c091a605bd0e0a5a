// socket(2), socketpair(2), setsockopt(2), getsockopt(2), bind(2)/connect(2) to AF_UNIX paths,
// sendmsg(2)/recvmsg(2) of one fd (SCM_RIGHTS), and sendto(2) to a raw sockaddr: kernel-feature
// probes such as TCP_REPAIR, the RPC service's SOCK_SEQPACKET sockets, RPC's pidfd store (a
// datagram socket holding pidfds), and the announcement of a moved address (an ARP packet).

#include <errno.h>
#include <linux/sockios.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
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

// sendto(fd, data, len, flags, addr, addrlen): `addr` is the sockaddr as bytes (any family); the
// number of bytes sent.
Napi::Value Sendto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  Napi::Buffer<uint8_t> data = ArgBuffer(info, 1, "data");
  int flags = ArgInt32(info, 2, "flags");
  Napi::Buffer<uint8_t> addr = ArgBuffer(info, 3, "addr");
  ssize_t n =
      sendto(fd, data.Data(), data.Length(), flags, reinterpret_cast<const sockaddr*>(addr.Data()),
             static_cast<socklen_t>(addr.Length()));
  if (n < 0) ThrowSyscall(env, "sendto", errno, {fd, static_cast<int64_t>(data.Length()), flags});
  return Napi::Number::New(env, static_cast<double>(n));
}

// ioctl(fd, SIOCOUTQNSD): the bytes of a TCP socket's send queue not sent yet (a FIN counts one).
Napi::Value SocketUnsentBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int n = 0;
  if (ioctl(fd, SIOCOUTQNSD, &n) < 0) ThrowSyscall(env, "ioctl(SIOCOUTQNSD)", errno, {fd});
  return Napi::Number::New(env, n);
}

// ioctl(fd, SIOCGSKNS): a new fd (O_CLOEXEC) on the network namespace socket `fd` belongs to.
Napi::Value SocketNetns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int ns = ioctl(fd, SIOCGSKNS);
  if (ns < 0) ThrowSyscall(env, "ioctl(SIOCGSKNS)", errno, {fd});
  return Napi::Number::New(env, ns);
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

// Room for this many fds in one SCM_RIGHTS message (more are cut: MSG_CTRUNC).
constexpr size_t kMaxFds = 16;

// A message of one iovec with room for kMaxFds fds of control data.
struct FdMessage {
  iovec iov{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)]{};
  msghdr msg{};

  FdMessage(void* data, size_t len, size_t control_len) {
    iov = {data, len};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = control_len;
  }
};

// sendmsg(2) of `data` with one fd as SCM_RIGHTS.
Napi::Value SendFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock = ArgInt32(info, 0, "sockfd");
  Napi::Buffer<uint8_t> data = ArgBuffer(info, 1, "data");
  int fd = ArgInt32(info, 2, "fd");
  int flags = ArgInt32(info, 3, "flags");
  FdMessage m(data.Data(), data.Length(), CMSG_SPACE(sizeof(int)));
  cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  ssize_t n = sendmsg(sock, &m.msg, flags);
  if (n < 0) ThrowSyscall(env, "sendmsg", errno, {sock, fd, flags});
  return Napi::Number::New(env, static_cast<double>(n));
}

// recvmsg(2) of at most `size` bytes and the fds sent with them (SCM_RIGHTS, received
// close-on-exec): {data, fds, isTruncated}.
Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock = ArgInt32(info, 0, "sockfd");
  uint32_t size = ArgUint32(info, 1, "size");
  int flags = ArgInt32(info, 2, "flags");
  std::vector<uint8_t> buf(size > 0 ? size : 1);
  FdMessage m(buf.data(), size, sizeof(FdMessage::control));
  ssize_t n = recvmsg(sock, &m.msg, flags | MSG_CMSG_CLOEXEC);
  if (n < 0) ThrowSyscall(env, "recvmsg", errno, {sock, flags});
  Napi::Array fds = Napi::Array::New(env);
  uint32_t k = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m.msg); c != nullptr; c = CMSG_NXTHDR(&m.msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.Set(k++, fd);
    }
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(n)));
  out.Set("fds", fds);
  out.Set("isTruncated", (m.msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0);
  return out;
}

}  // namespace

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("sendFd", Napi::Function::New(env, SendFd, "sendFd"));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds, "recvFds"));
  exports.Set("socket", Napi::Function::New(env, Socket, "socket"));
  exports.Set("socketNetns", Napi::Function::New(env, SocketNetns, "socketNetns"));
  exports.Set("socketpair", Napi::Function::New(env, Socketpair, "socketpair"));
  exports.Set("bindUnix", Napi::Function::New(env, BindUnix, "bindUnix"));
  exports.Set("connectUnixAsync", Napi::Function::New(env, ConnectUnixAsync, "connectUnixAsync"));
  exports.Set("setsockopt", Napi::Function::New(env, Setsockopt, "setsockopt"));
  exports.Set("sendto", Napi::Function::New(env, Sendto, "sendto"));
  exports.Set("socketUnsentBytes",
              Napi::Function::New(env, SocketUnsentBytes, "socketUnsentBytes"));
  exports.Set("getsockopt", Napi::Function::New(env, Getsockopt, "getsockopt"));
}

}  // namespace criu
