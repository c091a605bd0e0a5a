// waitpid(2) and waitid(2), run on the tracer thread (a tracee's stops are reported to the
// thread that seized it; keeping waits there also keeps them ordered with the ptrace calls).
//
// Timeouts: -1 blocks in the kernel; 0 is one WNOHANG poll; a positive timeoutMs polls with
// WNOHANG, yielding first and then sleeping with a back-off capped at 200 us (1 ms once the wait
// has lasted 100 ms: by then it is waiting for an exit, not a stop), and gives null at the
// deadline. There is no kernel wait with a timeout that sees ptrace stops (pidfds only report
// exits, and a SIGCHLD signalfd would fight libuv's handler), hence the polling.
//
// A synchronous wait holds the tracer thread for its whole duration (forever with -1): calls
// queued meanwhile, async polls included, run after it. Use the async forms for open-ended waits.
//
// The async forms are polling jobs (tracer.h): each poll is one WNOHANG call, then the job steps
// aside so synchronous calls interleave. Completion crosses back to JS through a per-call
// thread-safe function, which holds the event loop open only while the wait is pending.

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common.h"
#include "tracer.h"
#include "wait.h"

namespace criu {

namespace {

using Clock = std::chrono::steady_clock;

struct WaitOp {
  bool is_waitid = false;
  int pid = 0;  // waitpid pid, or waitid id
  int idtype = 0;
  int options = 0;

  bool got = false;  // a state change was reported
  int err = 0;       // errno when the call failed
  int ret_pid = 0;
  int status = 0;  // waitpid status, or si_status
  int signo = 0;
  int code = 0;

  // One wait call. Returns true when finished (a change, or an error), false when nothing has
  // changed yet (only possible with WNOHANG).
  bool Try(bool nohang) {
    int opts = options | (nohang ? WNOHANG : 0);
    if (!is_waitid) {
      int st = 0;
      pid_t r;
      do {
        r = waitpid(pid, &st, opts);
      } while (r < 0 && errno == EINTR);
      if (r < 0) {
        err = errno;
        return true;
      }
      if (r == 0) return false;
      got = true;
      ret_pid = r;
      status = st;
      return true;
    }
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    int r;
    do {
      r = waitid(static_cast<idtype_t>(idtype), static_cast<id_t>(pid), &si, opts);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      err = errno;
      return true;
    }
    if (si.si_pid == 0) return false;  // WNOHANG and no child had changed
    got = true;
    ret_pid = si.si_pid;
    signo = si.si_signo;
    code = si.si_code;
    status = si.si_status;
    return true;
  }

  ErrArgs Args() const {
    if (is_waitid) return {idtype, pid};
    return {pid};
  }

  const char* Name() const { return is_waitid ? "waitid" : "waitpid"; }

  Napi::Value ToJs(Napi::Env env) const {
    if (!got) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("pid", Napi::Number::New(env, ret_pid));
    if (is_waitid) {
      o.Set("signo", Napi::Number::New(env, signo));
      o.Set("code", Napi::Number::New(env, code));
    }
    o.Set("status", Napi::Number::New(env, status));
    return o;
  }
};

// Delay before the next WNOHANG poll: polls only yield for the first 100 us (a stop usually
// follows a PTRACE_SYSCALL, a PTRACE_INTERRUPT or a kill within 10-100 us: the tracee's vCPU may
// have to wake from idle first), then sleeps double from 5 us to a cap of 200 us; waits that
// last beyond 100 ms (for an exit, say) poll every millisecond. Measured on the 2-core VM: with
// 300 us injected calls were no faster and a live migration's downtime ~10 ms longer (the
// spinning took a core from the other processes); going to sleep after 16 yields instead made
// a stop that came during the sleep cost the whole sleep.
constexpr auto kYieldFor = std::chrono::microseconds(100);

class Backoff {
 public:
  // Nanoseconds to wait before the next poll; 0 means just yield.
  int64_t Next() {
    auto spent = Clock::now() - start_;
    if (spent < kYieldFor) return 0;
    if (spent > std::chrono::milliseconds(100)) return 1000000;
    delay_ = std::min<int64_t>(delay_ == 0 ? 5000 : delay_ * 2, 200000);
    return delay_;
  }

 private:
  Clock::time_point start_ = Clock::now();
  int64_t delay_ = 0;
};

// Runs on the tracer thread: the synchronous wait, with its timeout rules.
void RunSync(WaitOp* op, int timeout_ms) {
  if (timeout_ms < 0) {
    op->Try(false);
    return;
  }
  if (op->Try(true) || timeout_ms == 0) return;
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  Backoff backoff;
  for (;;) {
    int64_t ns = backoff.Next();
    auto now = Clock::now();
    if (now >= deadline) {
      op->Try(true);  // one last look at the deadline
      return;
    }
    if (ns == 0) {
      sched_yield();
    } else {
      ns = std::min<int64_t>(
          ns, std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count());
      struct timespec ts = {static_cast<time_t>(ns / 1000000000),
                            static_cast<long>(ns % 1000000000)};
      nanosleep(&ts, nullptr);
    }
    if (op->Try(true)) return;
  }
}

Napi::Value Finish(Napi::Env env, const WaitOp& op) {
  if (op.err != 0) ThrowSyscall(env, op.Name(), op.err, op.Args());
  return op.ToJs(env);
}

class AsyncWait;
void CallJs(Napi::Env env, Napi::Function, void*, AsyncWait* job);
using Tsfn = Napi::TypedThreadSafeFunction<void, AsyncWait, CallJs>;

class AsyncWait : public TracerJob {
 public:
  AsyncWait(Napi::Env env, const WaitOp& op, int timeout_ms)
      : op_(op),
        timeout_ms_(timeout_ms),
        deadline_(Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0))),
        deferred_(Napi::Promise::Deferred::New(env)),
        tsfn_(Tsfn::New(env, "criu_native.wait", 0, 1)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  int64_t Run() override {
    if (op_.Try(true)) return Complete();
    if (timeout_ms_ == 0) return Complete();
    if (timeout_ms_ > 0) {
      auto now = Clock::now();
      if (now >= deadline_) return Complete();
      int64_t left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline_ - now).count();
      return std::min(backoff_.Next(), left);
    }
    return backoff_.Next();
  }

  // On the JS thread, from CallJs.
  void Settle(Napi::Env env) {
    if (op_.err != 0) {
      deferred_.Reject(MakeSyscallError(env, op_.Name(), op_.err, op_.Args()));
    } else {
      deferred_.Resolve(op_.ToJs(env));
    }
  }

 private:
  int64_t Complete() {
    // Copy the handle: once queued, CallJs may delete this job on the JS thread at any moment.
    Tsfn tsfn = tsfn_;
    if (tsfn.NonBlockingCall(this) != napi_ok) delete this;  // the environment is shutting down
    tsfn.Release();
    return -1;
  }

  WaitOp op_;
  int timeout_ms_;
  Clock::time_point deadline_;
  Backoff backoff_;
  Napi::Promise::Deferred deferred_;
  Tsfn tsfn_;
};

void CallJs(Napi::Env env, Napi::Function, void*, AsyncWait* job) {
  if (env != nullptr) job->Settle(env);
  delete job;
}

WaitOp ReadWaitpid(const Napi::CallbackInfo& info, int* timeout_ms) {
  WaitOp op;
  op.pid = ArgInt32(info, 0, "pid");
  op.options = ArgInt32(info, 1, "options");
  *timeout_ms = ArgInt32(info, 2, "timeoutMs");
  return op;
}

WaitOp ReadWaitid(const Napi::CallbackInfo& info, int* timeout_ms) {
  WaitOp op;
  op.is_waitid = true;
  op.idtype = ArgInt32(info, 0, "idtype");
  op.pid = ArgInt32(info, 1, "id");
  op.options = ArgInt32(info, 2, "options");
  *timeout_ms = ArgInt32(info, 3, "timeoutMs");
  return op;
}

Napi::Value SyncWait(const Napi::CallbackInfo& info, WaitOp op, int timeout_ms) {
  RunOnTracer([&] { RunSync(&op, timeout_ms); });
  return Finish(info.Env(), op);
}

Napi::Value StartAsync(const Napi::CallbackInfo& info, const WaitOp& op, int timeout_ms) {
  auto* job = new AsyncWait(info.Env(), op, timeout_ms);
  Napi::Promise p = job->Promise();
  PostToTracer(job);
  return p;
}

Napi::Value Waitpid(const Napi::CallbackInfo& info) {
  int timeout_ms;
  WaitOp op = ReadWaitpid(info, &timeout_ms);
  return SyncWait(info, op, timeout_ms);
}

Napi::Value WaitpidAsync(const Napi::CallbackInfo& info) {
  int timeout_ms;
  WaitOp op = ReadWaitpid(info, &timeout_ms);
  return StartAsync(info, op, timeout_ms);
}

Napi::Value Waitid(const Napi::CallbackInfo& info) {
  int timeout_ms;
  WaitOp op = ReadWaitid(info, &timeout_ms);
  return SyncWait(info, op, timeout_ms);
}

Napi::Value WaitidAsync(const Napi::CallbackInfo& info) {
  int timeout_ms;
  WaitOp op = ReadWaitid(info, &timeout_ms);
  return StartAsync(info, op, timeout_ms);
}

}  // namespace

WaitpidOutcome WaitpidOnTracer(int pid, int options, int timeout_ms) {
  WaitOp op;
  op.pid = pid;
  op.options = options;
  RunSync(&op, timeout_ms);
  return {op.got, op.err, op.ret_pid, op.status};
}

void InitWait(Napi::Env env, Napi::Object exports) {
  exports.Set("waitpid", Napi::Function::New(env, Waitpid, "waitpid"));
  exports.Set("waitpidAsync", Napi::Function::New(env, WaitpidAsync, "waitpidAsync"));
  exports.Set("waitid", Napi::Function::New(env, Waitid, "waitid"));
  exports.Set("waitidAsync", Napi::Function::New(env, WaitidAsync, "waitidAsync"));
}

}  // namespace criu
