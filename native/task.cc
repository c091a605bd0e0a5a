// Task-level calls: pidfds, signals, prlimit, get_robust_list, kcmp, gettid, setns, and clone3Exec.
// glibc 2.36 lacks wrappers for several of these, so they go through syscall(2).
//
// clone3Exec runs on the tracer thread so that the child is that thread's to seize and wait for.
// The child is a copy of a multi-threaded process: between clone3 and execve it only makes raw
// system calls on memory prepared by the parent (no malloc, no locks, no libc state).

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "common.h"
#include "tracer.h"

namespace criu {

namespace {

Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  uint32_t flags = ArgUint32(info, 1, "flags");
  long fd = syscall(SYS_pidfd_open, pid, flags);
  if (fd < 0) ThrowSyscall(env, "pidfd_open", errno, {pid});
  return Napi::Number::New(env, static_cast<double>(fd));
}

// setns(fd, nstype): moves the calling thread (the JS thread) into the namespace of `fd`.
Napi::Value Setns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int nstype = ArgInt32(info, 1, "nstype");
  if (setns(fd, nstype) < 0) ThrowSyscall(env, "setns", errno, {fd, nstype});
  return env.Undefined();
}

Napi::Value PidfdGetfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pidfd = ArgInt32(info, 0, "pidfd");
  int target_fd = ArgInt32(info, 1, "targetFd");
  uint32_t flags = ArgUint32(info, 2, "flags");
  long fd = syscall(SYS_pidfd_getfd, pidfd, target_fd, flags);
  if (fd < 0) ThrowSyscall(env, "pidfd_getfd", errno, {pidfd, target_fd});
  return Napi::Number::New(env, static_cast<double>(fd));
}

Napi::Value PidfdSendSignal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pidfd = ArgInt32(info, 0, "pidfd");
  int sig = ArgInt32(info, 1, "sig");
  uint32_t flags = ArgUint32(info, 2, "flags");
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, flags) < 0) {
    ThrowSyscall(env, "pidfd_send_signal", errno, {pidfd, sig});
  }
  return env.Undefined();
}

Napi::Value Prlimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  int resource = ArgInt32(info, 1, "resource");
  struct rlimit64 next = {};
  bool set = !(info[2].IsNull() || info[2].IsUndefined());
  if (set) {
    if (!info[2].IsObject()) throw Napi::TypeError::New(env, "Argument newLimit must be an object");
    Napi::Object o = info[2].As<Napi::Object>();
    next.rlim_cur = ValueBigUint64(env, o.Get("cur"), "newLimit.cur");
    next.rlim_max = ValueBigUint64(env, o.Get("max"), "newLimit.max");
  }
  struct rlimit64 old = {};
  if (prlimit64(pid, static_cast<__rlimit_resource>(resource), set ? &next : nullptr, &old) < 0) {
    ThrowSyscall(env, "prlimit64", errno, {pid, resource});
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("cur", Napi::BigInt::New(env, static_cast<uint64_t>(old.rlim_cur)));
  r.Set("max", Napi::BigInt::New(env, static_cast<uint64_t>(old.rlim_max)));
  return r;
}

Napi::Value GetRobustList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  void* head = nullptr;
  size_t len = 0;
  if (syscall(SYS_get_robust_list, pid, &head, &len) < 0) {
    ThrowSyscall(env, "get_robust_list", errno, {pid});
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("head", Napi::BigInt::New(env, reinterpret_cast<uint64_t>(head)));
  r.Set("len", Napi::BigInt::New(env, static_cast<uint64_t>(len)));
  return r;
}

Napi::Value Kcmp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid1 = ArgInt32(info, 0, "pid1");
  int pid2 = ArgInt32(info, 1, "pid2");
  int type = ArgInt32(info, 2, "type");
  uint64_t idx1 = ArgBigUint64(info, 3, "idx1");
  uint64_t idx2 = ArgBigUint64(info, 4, "idx2");
  long r = syscall(SYS_kcmp, pid1, pid2, type, idx1, idx2);
  if (r < 0) ThrowSyscall(env, "kcmp", errno, {pid1, pid2, type});
  return Napi::Number::New(env, static_cast<double>(r));
}

// kcmp(pid1, pid2, KCMP_EPOLL_TFD, fd, &{efd, tfd, toff}): the file at fd `fd` of pid1 against
// the target of the watch (tfd, toff) of epoll `efd` of pid2. uapi/linux/kcmp.h.
Napi::Value KcmpEpollTfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid1 = ArgInt32(info, 0, "pid1");
  int pid2 = ArgInt32(info, 1, "pid2");
  int fd = ArgInt32(info, 2, "fd");
  struct {
    uint32_t efd, tfd, toff;
  } slot = {ArgUint32(info, 3, "efd"), ArgUint32(info, 4, "tfd"), ArgUint32(info, 5, "toff")};
  long r = syscall(SYS_kcmp, pid1, pid2, 7 /* KCMP_EPOLL_TFD */, fd, &slot);
  if (r < 0) ThrowSyscall(env, "kcmp", errno, {pid1, pid2, 7, fd, slot.efd, slot.tfd, slot.toff});
  return Napi::Number::New(env, static_cast<double>(r));
}

Napi::Value Kill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = ArgInt32(info, 0, "pid");
  int sig = ArgInt32(info, 1, "sig");
  if (kill(pid, sig) < 0) ThrowSyscall(env, "kill", errno, {pid, sig});
  return env.Undefined();
}

Napi::Value Tgkill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int tgid = ArgInt32(info, 0, "tgid");
  int tid = ArgInt32(info, 1, "tid");
  int sig = ArgInt32(info, 2, "sig");
  if (syscall(SYS_tgkill, tgid, tid, sig) < 0) ThrowSyscall(env, "tgkill", errno, {tgid, tid, sig});
  return env.Undefined();
}

Napi::Value Gettid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

// struct clone_args of uapi/linux/sched.h, CLONE_ARGS_SIZE_VER2 (88 bytes, kernel >= 5.7).
struct CloneArgs {
  uint64_t flags;
  uint64_t pidfd;
  uint64_t child_tid;
  uint64_t parent_tid;
  uint64_t exit_signal;
  uint64_t stack;
  uint64_t stack_size;
  uint64_t tls;
  uint64_t set_tid;
  uint64_t set_tid_size;
  uint64_t cgroup;
};
static_assert(sizeof(CloneArgs) == 88, "struct clone_args (VER2) is 88 bytes");

// The kernel's struct sigaction for rt_sigaction(2) on x86_64.
struct KernelSigaction {
  __sighandler_t handler;
  uint64_t flags;
  void* restorer;
  uint64_t mask;
};

constexpr uint64_t kCloneVm = 0x00000100;
constexpr uint64_t kCloneSighand = 0x00000800;
constexpr uint64_t kCloneThread = 0x00010000;
constexpr uint64_t kCloneVfork = 0x00004000;
constexpr int kNsig = 64;

// In the child, between clone3 and execve: raw system calls only.
[[noreturn]] void ExecChild(const char* path, char* const* argv, char* const* envp, uint64_t mask) {
  // Node ignores SIGPIPE and has its own handlers; the child must not inherit them (execve keeps
  // ignored dispositions). It runs with the tracer thread's mask (every signal blocked) until it
  // sets `mask`, the one it execs with: a signal sent meanwhile stays pending, never reaching a
  // handler of Node's copied into the child.
  KernelSigaction dfl = {SIG_DFL, 0, nullptr, 0};
  for (int sig = 1; sig <= kNsig; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    syscall(SYS_rt_sigaction, sig, &dfl, nullptr, sizeof(uint64_t));
  }
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &mask, nullptr, sizeof(uint64_t));
  syscall(SYS_execve, path, argv, envp);
  syscall(SYS_exit_group, 127);
  __builtin_unreachable();
}

std::vector<std::string> StringArray(Napi::Env env, Napi::Value v, const char* name) {
  if (!v.IsArray())
    throw Napi::TypeError::New(env, std::string("Argument ") + name + " must be an array");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(ValueString(env, a.Get(i), name));
  return out;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(&s[0]);
  out.push_back(nullptr);
  return out;
}

Napi::Value Clone3Exec(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "Argument args must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  uint64_t flags = ValueBigUint64(env, o.Get("flags"), "args.flags");
  if (flags & (kCloneVm | kCloneThread | kCloneSighand | kCloneVfork)) {
    throw Napi::RangeError::New(
        env,
        "clone3Exec: flags must not include CLONE_VM, CLONE_THREAD, CLONE_SIGHAND or CLONE_VFORK");
  }
  int exit_signal = ValueInt32(env, o.Get("exitSignal"), "args.exitSignal");
  Napi::Value set_tid_v = o.Get("setTid");
  if (!set_tid_v.IsArray())
    throw Napi::TypeError::New(env, "Argument args.setTid must be an array");
  Napi::Array set_tid_a = set_tid_v.As<Napi::Array>();
  std::vector<pid_t> set_tid;
  for (uint32_t i = 0; i < set_tid_a.Length(); i++) {
    set_tid.push_back(ValueInt32(env, set_tid_a.Get(i), "args.setTid"));
  }
  std::string path = ValueString(env, o.Get("path"), "args.path");
  std::vector<std::string> argv_s = StringArray(env, o.Get("argv"), "args.argv");
  std::vector<std::string> envp_s = StringArray(env, o.Get("envp"), "args.envp");
  Napi::Value mask_v = o.Get("signalMask");
  uint64_t mask = mask_v.IsUndefined() ? 0 : ValueBigUint64(env, mask_v, "args.signalMask");
  std::vector<char*> argv = CStrings(argv_s);
  std::vector<char*> envp = CStrings(envp_s);

  CloneArgs ca = {};
  ca.flags = flags;
  ca.exit_signal = static_cast<uint64_t>(exit_signal);
  ca.set_tid = set_tid.empty() ? 0 : reinterpret_cast<uint64_t>(set_tid.data());
  ca.set_tid_size = set_tid.size();

  long r = 0;
  int err = 0;
  const char* cpath = path.c_str();
  char* const* cargv = argv.data();
  char* const* cenvp = envp.data();
  RunOnTracer([&] {
    r = syscall(SYS_clone3, &ca, sizeof(ca));
    if (r == 0) ExecChild(cpath, cargv, cenvp, mask);
    if (r < 0) err = errno;
  });
  if (r < 0) {
    ErrArgs args = {path};
    for (pid_t t : set_tid) args.push_back(static_cast<int>(t));
    ThrowSyscall(env, "clone3", err, args);
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

}  // namespace

void InitTask(Napi::Env env, Napi::Object exports) {
  exports.Set("setns", Napi::Function::New(env, Setns, "setns"));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd, "pidfdGetfd"));
  exports.Set("pidfdSendSignal", Napi::Function::New(env, PidfdSendSignal, "pidfdSendSignal"));
  exports.Set("prlimit", Napi::Function::New(env, Prlimit, "prlimit"));
  exports.Set("getRobustList", Napi::Function::New(env, GetRobustList, "getRobustList"));
  exports.Set("kcmp", Napi::Function::New(env, Kcmp, "kcmp"));
  exports.Set("kcmpEpollTfd", Napi::Function::New(env, KcmpEpollTfd, "kcmpEpollTfd"));
  exports.Set("kill", Napi::Function::New(env, Kill, "kill"));
  exports.Set("tgkill", Napi::Function::New(env, Tgkill, "tgkill"));
  exports.Set("gettid", Napi::Function::New(env, Gettid, "gettid"));
  exports.Set("clone3Exec", Napi::Function::New(env, Clone3Exec, "clone3Exec"));
}

}  // namespace criu
