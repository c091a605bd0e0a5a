// ioctls: PAGEMAP_SCAN on /proc/PID/pagemap (kernel >= 6.7) and the userfaultfd(2) API.
//
// Debian 12's uapi headers predate PAGEMAP_SCAN, so its argument struct is declared here, from
// uapi/linux/fs.h:
//
//   struct pm_scan_arg {            offset
//     u64 size;                     0   sizeof(struct pm_scan_arg) = 96
//     u64 flags;                    8   PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
//     u64 start, end;               16  the range to walk
//     u64 walk_end;                 32  out: where the walk stopped
//     u64 vec, vec_len;             40  struct page_region { u64 start, end, categories; }[]
//     u64 max_pages;                56  0 for no limit
//     u64 category_inverted;        64
//     u64 category_mask;            72
//     u64 category_anyof_mask;      80
//     u64 return_mask;              88
//   };

#include <errno.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <memory>

#include "async.h"
#include "common.h"

namespace criu {

namespace {

struct PmScanArg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};
static_assert(sizeof(PmScanArg) == 96, "struct pm_scan_arg is 96 bytes");

constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr size_t kPageRegionWords = 3;  // struct page_region: start, end, categories

struct Scan {
  int fd = 0;
  PmScanArg arg{};

  long Run(int* err) {
    long r;
    do {
      r = ioctl(fd, kPagemapScan, &arg);
    } while (r < 0 && errno == EINTR);
    if (r < 0) *err = errno;
    return r;
  }
};

Scan ReadScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Scan s;
  s.fd = ArgInt32(info, 0, "fd");
  if (!info[1].IsObject()) throw Napi::TypeError::New(env, "Argument arg must be an object");
  Napi::Object a = info[1].As<Napi::Object>();
  Napi::TypedArrayOf<uint64_t> vec = ArgBigUint64Array(info, 2, "vec");
  s.arg.size = sizeof(PmScanArg);
  s.arg.flags = ValueBigUint64(env, a.Get("flags"), "arg.flags");
  s.arg.start = ValueBigUint64(env, a.Get("start"), "arg.start");
  s.arg.end = ValueBigUint64(env, a.Get("end"), "arg.end");
  s.arg.vec = reinterpret_cast<uint64_t>(vec.Data());
  s.arg.vec_len = vec.ElementLength() / kPageRegionWords;
  s.arg.max_pages = ValueBigUint64(env, a.Get("maxPages"), "arg.maxPages");
  s.arg.category_inverted = ValueBigUint64(env, a.Get("categoryInverted"), "arg.categoryInverted");
  s.arg.category_mask = ValueBigUint64(env, a.Get("categoryMask"), "arg.categoryMask");
  s.arg.category_anyof_mask =
      ValueBigUint64(env, a.Get("categoryAnyofMask"), "arg.categoryAnyofMask");
  s.arg.return_mask = ValueBigUint64(env, a.Get("returnMask"), "arg.returnMask");
  return s;
}

Napi::Value ScanResult(Napi::Env env, long nr, uint64_t walk_end) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("nrRegions", Napi::Number::New(env, static_cast<double>(nr)));
  o.Set("walkEnd", Napi::BigInt::New(env, walk_end));
  return o;
}

Napi::Value PagemapScan(const Napi::CallbackInfo& info) {
  Scan s = ReadScan(info);
  int err = 0;
  long r = s.Run(&err);
  if (r < 0) ThrowSyscall(info.Env(), "ioctl(PAGEMAP_SCAN)", err, {s.fd, s.arg.start});
  return ScanResult(info.Env(), r, s.arg.walk_end);
}

Napi::Value PagemapScanAsync(const Napi::CallbackInfo& info) {
  auto s = std::make_shared<Scan>(ReadScan(info));
  auto* w = new PromiseWorker(
      info.Env(), "ioctl(PAGEMAP_SCAN)", {s->fd, s->arg.start}, {info[2]},
      [s](int* err) { return s->Run(err); },
      [s](Napi::Env env, long r) { return ScanResult(env, r, s->arg.walk_end); });
  return PromiseWorker::Start(w);
}

Napi::Value Userfaultfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int flags = ArgInt32(info, 0, "flags");
  long fd = syscall(SYS_userfaultfd, flags);
  if (fd < 0) ThrowSyscall(env, "userfaultfd", errno, {flags});
  return Napi::Number::New(env, static_cast<double>(fd));
}

long Ioctl(int fd, unsigned long request, void* arg, int* err) {
  long r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  if (r < 0) *err = errno;
  return r;
}

Napi::Value UffdioApi(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = ArgBigUint64(info, 1, "features");
  int err = 0;
  if (Ioctl(fd, UFFDIO_API, &api, &err) < 0) {
    ThrowSyscall(env, "ioctl(UFFDIO_API)", err, {fd, static_cast<uint64_t>(api.features)});
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("features", Napi::BigInt::New(env, static_cast<uint64_t>(api.features)));
  o.Set("ioctls", Napi::BigInt::New(env, static_cast<uint64_t>(api.ioctls)));
  return o;
}

Napi::Value UffdioRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  struct uffdio_register reg = {};
  reg.range.start = ArgBigUint64(info, 1, "start");
  reg.range.len = ArgBigUint64(info, 2, "len");
  reg.mode = ArgBigUint64(info, 3, "mode");
  int err = 0;
  if (Ioctl(fd, UFFDIO_REGISTER, &reg, &err) < 0) {
    ThrowSyscall(
        env, "ioctl(UFFDIO_REGISTER)", err,
        {fd, static_cast<uint64_t>(reg.range.start), static_cast<uint64_t>(reg.range.len)});
  }
  return Napi::BigInt::New(env, static_cast<uint64_t>(reg.ioctls));
}

Napi::Value UffdioUnregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  struct uffdio_range range = {};
  range.start = ArgBigUint64(info, 1, "start");
  range.len = ArgBigUint64(info, 2, "len");
  int err = 0;
  if (Ioctl(fd, UFFDIO_UNREGISTER, &range, &err) < 0) {
    ThrowSyscall(env, "ioctl(UFFDIO_UNREGISTER)", err,
                 {fd, static_cast<uint64_t>(range.start), static_cast<uint64_t>(range.len)});
  }
  return env.Undefined();
}

Napi::Value UffdioWriteprotect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  struct uffdio_writeprotect wp = {};
  wp.range.start = ArgBigUint64(info, 1, "start");
  wp.range.len = ArgBigUint64(info, 2, "len");
  wp.mode = ArgBigUint64(info, 3, "mode");
  int err = 0;
  if (Ioctl(fd, UFFDIO_WRITEPROTECT, &wp, &err) < 0) {
    ThrowSyscall(env, "ioctl(UFFDIO_WRITEPROTECT)", err,
                 {fd, static_cast<uint64_t>(wp.range.start), static_cast<uint64_t>(wp.range.len)});
  }
  return env.Undefined();
}

}  // namespace

void InitIoctl(Napi::Env env, Napi::Object exports) {
  exports.Set("pagemapScan", Napi::Function::New(env, PagemapScan, "pagemapScan"));
  exports.Set("pagemapScanAsync", Napi::Function::New(env, PagemapScanAsync, "pagemapScanAsync"));
  exports.Set("userfaultfd", Napi::Function::New(env, Userfaultfd, "userfaultfd"));
  exports.Set("uffdioApi", Napi::Function::New(env, UffdioApi, "uffdioApi"));
  exports.Set("uffdioRegister", Napi::Function::New(env, UffdioRegister, "uffdioRegister"));
  exports.Set("uffdioUnregister", Napi::Function::New(env, UffdioUnregister, "uffdioUnregister"));
  exports.Set("uffdioWriteprotect",
              Napi::Function::New(env, UffdioWriteprotect, "uffdioWriteprotect"));
}

}  // namespace criu
