// TCP plumbing for the page server and its client: bind/listen/accept4/connect/shutdown,
// getsockname/getpeername, recv, and bulk movers that must not cross the JS thread per chunk:
// writev (to a socket) or pwritev (to a file) until every byte is out, and splice socket -> pipe
// -> file until `len` bytes have landed.
//
// Sockets handled here are plain blocking fds (not libuv handles): every call that can block runs
// on the libuv thread pool (*Async) and returns a Promise. Addresses are IPv4 or IPv6 text
// ("127.0.0.1", "::1"); the family follows the text. Interrupted calls are retried.

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "async.h"
#include "common.h"

namespace criu {

namespace {

// A parsed IPv4/IPv6 address and port.
struct InetAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;
};

InetAddr ParseAddr(Napi::Env env, const std::string& text, uint32_t port) {
  if (port > 65535) throw Napi::RangeError::New(env, "Argument port must be 0..65535");
  InetAddr a;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&a.ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
  if (inet_pton(AF_INET, text.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    a.len = sizeof(*v4);
  } else if (inet_pton(AF_INET6, text.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    a.len = sizeof(*v6);
  } else {
    throw Napi::TypeError::New(env, "Argument address is not an IPv4 or IPv6 address: " + text);
  }
  return a;
}

Napi::Value AddrToJs(Napi::Env env, const sockaddr_storage& ss) {
  char text[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  Napi::Object o = Napi::Object::New(env);
  if (ss.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
    port = ntohs(v4->sin_port);
    o.Set("family", 4);
  } else if (ss.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
    port = ntohs(v6->sin6_port);
    o.Set("family", 6);
  } else {
    o.Set("family", 0);
  }
  o.Set("address", std::string(text));
  o.Set("port", port);
  return o;
}

size_t ArgSize(const Napi::CallbackInfo& info, size_t i, const char* name) {
  int64_t v = ArgInt64Number(info, i, name);
  if (v < 0)
    throw Napi::RangeError::New(info.Env(),
                                std::string("Argument ") + name + " must not be negative");
  return static_cast<size_t>(v);
}

Napi::Value Bind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  std::string text = ArgString(info, 1, "address");
  uint32_t port = ArgUint32(info, 2, "port");
  InetAddr a = ParseAddr(env, text, port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a.ss), a.len) < 0)
    ThrowSyscall(env, "bind", errno, {fd, text, port});
  return env.Undefined();
}

Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int backlog = ArgInt32(info, 1, "backlog");
  if (listen(fd, backlog) < 0) ThrowSyscall(env, "listen", errno, {fd, backlog});
  return env.Undefined();
}

Napi::Value Accept4Async(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  int flags = ArgInt32(info, 1, "flags");
  auto* w = new PromiseWorker(
      info.Env(), "accept4", {fd}, {},
      [fd, flags](int* err) -> long {
        long r;
        do {
          r = accept4(fd, nullptr, nullptr, flags);
        } while (r < 0 && errno == EINTR);
        if (r < 0) *err = errno;
        return r;
      },
      NumberResult);
  return PromiseWorker::Start(w);
}

Napi::Value ConnectAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  std::string text = ArgString(info, 1, "address");
  uint32_t port = ArgUint32(info, 2, "port");
  auto a = std::make_shared<InetAddr>(ParseAddr(env, text, port));
  auto* w = new PromiseWorker(
      env, "connect", {fd, text, port}, {},
      [fd, a](int* err) -> long {
        if (connect(fd, reinterpret_cast<sockaddr*>(&a->ss), a->len) == 0) return 0;
        if (errno != EINTR) {
          *err = errno;
          return -1;
        }
        // An interrupted connect goes on in the background: wait for it, then take its verdict.
        pollfd p{fd, POLLOUT, 0};
        while (poll(&p, 1, -1) < 0) {
          if (errno != EINTR) {
            *err = errno;
            return -1;
          }
        }
        int so_err = 0;
        socklen_t so_len = sizeof(so_err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_err, &so_len) < 0) so_err = errno;
        if (so_err != 0) {
          *err = so_err;
          return -1;
        }
        return 0;
      },
      [](Napi::Env e, long) { return e.Undefined(); });
  return PromiseWorker::Start(w);
}

Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int how = ArgInt32(info, 1, "how");
  if (shutdown(fd, how) < 0) ThrowSyscall(env, "shutdown", errno, {fd, how});
  return env.Undefined();
}

Napi::Value GetName(const Napi::CallbackInfo& info, bool peer) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r < 0) ThrowSyscall(env, peer ? "getpeername" : "getsockname", errno, {fd});
  return AddrToJs(env, ss);
}

Napi::Value Getsockname(const Napi::CallbackInfo& info) { return GetName(info, false); }
Napi::Value Getpeername(const Napi::CallbackInfo& info) { return GetName(info, true); }

Napi::Value RecvAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  Napi::Buffer<uint8_t> buf = ArgBuffer(info, 1, "buf");
  int64_t offset = ArgInt64Number(info, 2, "offset");
  int64_t len = ArgInt64Number(info, 3, "len");
  int flags = ArgInt32(info, 4, "flags");
  CheckRange(env, buf.Length(), offset, len, "buf");
  uint8_t* ptr = buf.Data() + offset;
  auto* w = new PromiseWorker(
      env, "recv", {fd, static_cast<long>(len)}, {buf},
      [fd, ptr, len, flags](int* err) -> long {
        long r;
        do {
          r = recv(fd, ptr, static_cast<size_t>(len), flags);
        } while (r < 0 && errno == EINTR);
        if (r < 0) *err = errno;
        return r;
      },
      NumberResult);
  return PromiseWorker::Start(w);
}

// The non-empty Buffers of a JS array as iovecs (kept alive by `keep` until the worker is done).
size_t CollectIov(Napi::Env env, const Napi::Value& arg, std::vector<iovec>* iov,
                  std::vector<Napi::Value>* keep) {
  if (!arg.IsArray()) throw Napi::TypeError::New(env, "Argument bufs must be an array");
  Napi::Array bufs = arg.As<Napi::Array>();
  size_t total = 0;
  for (uint32_t i = 0; i < bufs.Length(); i++) {
    Napi::Value v = bufs.Get(i);
    if (!v.IsBuffer()) throw Napi::TypeError::New(env, "Argument bufs must hold Buffers");
    auto b = v.As<Napi::Buffer<uint8_t>>();
    if (b.Length() == 0) continue;
    iov->push_back({b.Data(), b.Length()});
    total += b.Length();
    keep->push_back(v);
  }
  return total;
}

// writev (pos < 0) or pwritev at pos until every byte is written. A blocking stream socket may
// still return short (a signal after some bytes went out), a file too (ENOSPC after a part: the
// next call reports it): advance through the iovecs and go on. Returns the bytes written or -1.
long WriteAllIov(int fd, std::vector<iovec>& v, size_t total, off_t pos, int* err) {
  size_t done = 0;
  size_t first = 0;
  while (done < total) {
    int cnt = static_cast<int>(std::min<size_t>(v.size() - first, IOV_MAX));
    ssize_t r = pos < 0 ? writev(fd, v.data() + first, cnt)
                        : pwritev(fd, v.data() + first, cnt, pos + static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return -1;
    }
    if (r == 0) {
      *err = EIO;  // a file that takes nothing and reports no error
      return -1;
    }
    done += static_cast<size_t>(r);
    size_t n = static_cast<size_t>(r);
    while (n > 0 && first < v.size()) {
      if (n >= v[first].iov_len) {
        n -= v[first].iov_len;
        first++;
      } else {
        v[first].iov_base = static_cast<uint8_t*>(v[first].iov_base) + n;
        v[first].iov_len -= n;
        n = 0;
      }
    }
  }
  return static_cast<long>(done);
}

Napi::Value WritevAllAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  auto iov = std::make_shared<std::vector<iovec>>();
  std::vector<Napi::Value> keep;
  size_t total = CollectIov(env, info[1], iov.get(), &keep);
  auto* w = new PromiseWorker(
      env, "writev", {fd, static_cast<long>(total)}, keep,
      [fd, iov, total](int* err) -> long { return WriteAllIov(fd, *iov, total, -1, err); },
      NumberResult);
  return PromiseWorker::Start(w);
}

// pwritev of many Buffers at one file offset: the page server stores the data of many small
// records, scattered over its receive buffer between their headers, in one call.
Napi::Value PwritevAllAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  auto iov = std::make_shared<std::vector<iovec>>();
  std::vector<Napi::Value> keep;
  size_t total = CollectIov(env, info[1], iov.get(), &keep);
  off_t pos = ArgBigInt64(info, 2, "pos");
  if (pos < 0) throw Napi::RangeError::New(env, "Argument pos must not be negative");
  auto* w = new PromiseWorker(
      env, "pwritev", {fd, static_cast<long>(total), static_cast<long>(pos)}, keep,
      [fd, iov, total, pos](int* err) -> long { return WriteAllIov(fd, *iov, total, pos, err); },
      NumberResult);
  return PromiseWorker::Start(w);
}

// True when the pipe whose write end is `pipe_w` has no free slot: a splice into it would block,
// and only this thread empties it.
bool PipeIsFull(int pipe_w) {
  pollfd p{pipe_w, POLLOUT, 0};
  int n;
  do n = poll(&p, 1, 0);
  while (n < 0 && errno == EINTR);
  return n == 0;
}

// splice(fdIn -> pipe), then splice(pipe -> fdOut at offOut), until len bytes have reached fdOut
// or fdIn reports end of stream (the result is then short). The pipe is filled up to the next
// multiple of `chunk` in fdOut before it is written out, so that each write covers whole
// chunk-sized, chunk-aligned blocks of the file: a file system with large folios (tmpfs with huge
// pages, ext4) zeroes the rest of a folio it must create for a write that covers part of it. A
// socket gives what it has, often far less than asked, so this takes several splices in; it stops
// early when the pipe has no free slot (each slot holds what one splice found in one skb
// fragment). Any data left in the pipe after an error is the caller's to discard (with the pipe).
Napi::Value SpliceAllAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd_in = ArgInt32(info, 0, "fdIn");
  int pipe_r = ArgInt32(info, 1, "pipeRead");
  int pipe_w = ArgInt32(info, 2, "pipeWrite");
  int fd_out = ArgInt32(info, 3, "fdOut");
  loff_t off_out = ArgBigInt64(info, 4, "offOut");
  size_t len = ArgSize(info, 5, "len");
  size_t chunk = ArgSize(info, 6, "chunk");
  if (chunk == 0) throw Napi::RangeError::New(env, "Argument chunk must be positive");
  auto* w = new PromiseWorker(
      env, "splice", {fd_in, fd_out, static_cast<long>(len)}, {},
      [=](int* err) mutable -> long {
        size_t done = 0;
        bool at_end = false;
        while (done < len && !at_end) {
          size_t want = std::min(chunk - static_cast<size_t>(off_out) % chunk, len - done);
          size_t in_pipe = 0;
          while (in_pipe < want) {
            if (in_pipe > 0 && PipeIsFull(pipe_w)) break;
            ssize_t in = splice(fd_in, nullptr, pipe_w, nullptr, want - in_pipe,
                                SPLICE_F_MOVE | SPLICE_F_MORE);
            if (in < 0) {
              if (errno == EINTR) continue;
              *err = errno;
              return -1;
            }
            if (in == 0) {  // end of stream
              at_end = true;
              break;
            }
            in_pipe += static_cast<size_t>(in);
          }
          while (in_pipe > 0) {
            ssize_t out = splice(pipe_r, nullptr, fd_out, &off_out, in_pipe, SPLICE_F_MOVE);
            if (out < 0) {
              if (errno == EINTR) continue;
              *err = errno;
              return -1;
            }
            if (out == 0) {
              *err = EIO;  // a file that takes nothing and reports no error
              return -1;
            }
            in_pipe -= static_cast<size_t>(out);
            done += static_cast<size_t>(out);
          }
        }
        return static_cast<long>(done);
      },
      NumberResult);
  return PromiseWorker::Start(w);
}

}  // namespace

void InitNet(Napi::Env env, Napi::Object exports) {
  exports.Set("bind", Napi::Function::New(env, Bind, "bind"));
  exports.Set("listen", Napi::Function::New(env, Listen, "listen"));
  exports.Set("accept4Async", Napi::Function::New(env, Accept4Async, "accept4Async"));
  exports.Set("connectAsync", Napi::Function::New(env, ConnectAsync, "connectAsync"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
  exports.Set("getsockname", Napi::Function::New(env, Getsockname, "getsockname"));
  exports.Set("getpeername", Napi::Function::New(env, Getpeername, "getpeername"));
  exports.Set("recvAsync", Napi::Function::New(env, RecvAsync, "recvAsync"));
  exports.Set("writevAllAsync", Napi::Function::New(env, WritevAllAsync, "writevAllAsync"));
  exports.Set("pwritevAllAsync", Napi::Function::New(env, PwritevAllAsync, "pwritevAllAsync"));
  exports.Set("spliceAllAsync", Napi::Function::New(env, SpliceAllAsync, "spliceAllAsync"));
}

}  // namespace criu
