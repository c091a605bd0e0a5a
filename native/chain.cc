// ptraceChain: a list of ptrace requests and waits that the tracer thread runs back to back, in
// one hand-off, like a chain of linked io_uring requests. Each step is one of the single
// wrappers of ptrace.cc/wait.cc with the same arguments; the chain adds no decision of its own
// beyond "stop at the first step that fails, or at a wait whose status is not the one the caller
// said it expects". What to do then is the caller's (src/inject/injector.ts).
//
// Why: an injected system call is six requests (SETREGSET, SYSCALL, wait, SYSCALL, wait,
// GETREGSET). Made one by one, each crosses from the JS thread to the tracer thread and back:
// 200-270 us per injected call measured here. In one chain the tracer thread polls for each
// stop itself as soon as it has resumed the tracee: 70-160 us (noisy). The same sequence in a
// plain C tracer takes 34 us; most of the rest is waking the tracee's vCPU.
//
// Steps (arrays, first element the kind):
//   ['setregset', pid, type, data: Buffer]     PTRACE_SETREGSET
//   ['getregset', pid, type, size]             PTRACE_GETREGSET: the Buffer goes to `regsets`
//   ['syscall', pid, sig]                      PTRACE_SYSCALL
//   ['cont', pid, sig]                         PTRACE_CONT
//   ['waitpid', pid, options, timeoutMs, expectedStatus]
// Result: { completed, waitStatus, regsets }: `completed` steps ran as expected; when a waitpid
// stopped the chain, waitStatus is its raw status (null: nothing in time) and `completed` is its
// index. A failing request throws SyscallError as its single wrapper would.

#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "tracer.h"
#include "wait.h"

namespace criu {

namespace {

enum class Kind { kSetRegset, kGetRegset, kSyscall, kCont, kWaitpid };

struct Step {
  Kind kind;
  int pid = 0;
  uint32_t a = 0;  // regset type, signal, or wait options
  uint32_t b = 0;  // getregset size
  int timeout_ms = 0;
  int expected = 0;
  uint8_t* data = nullptr;  // setregset
  size_t len = 0;
};

struct Outcome {
  size_t completed = 0;
  bool stopped_at_wait = false;
  bool wait_got = false;
  int wait_status = 0;
  int err = 0;  // errno of the failing step
  std::vector<std::vector<uint8_t>> regsets;
};

uint32_t ElemUint32(Napi::Env env, const Napi::Array& a, uint32_t i, const char* name) {
  Napi::Value v = a.Get(i);
  if (!v.IsNumber())
    throw Napi::TypeError::New(env, std::string("ptraceChain: ") + name + " must be a number");
  return v.As<Napi::Number>().Uint32Value();
}

int32_t ElemInt32(Napi::Env env, const Napi::Array& a, uint32_t i, const char* name) {
  Napi::Value v = a.Get(i);
  if (!v.IsNumber())
    throw Napi::TypeError::New(env, std::string("ptraceChain: ") + name + " must be a number");
  return v.As<Napi::Number>().Int32Value();
}

Step ReadStep(Napi::Env env, Napi::Value v) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, "ptraceChain: each step must be an array");
  Napi::Array a = v.As<Napi::Array>();
  Napi::Value k = a.Get(0u);
  if (!k.IsString()) throw Napi::TypeError::New(env, "ptraceChain: a step starts with its kind");
  std::string kind = k.As<Napi::String>().Utf8Value();
  Step s{};
  s.pid = ElemInt32(env, a, 1, "pid");
  if (kind == "setregset") {
    s.kind = Kind::kSetRegset;
    s.a = ElemUint32(env, a, 2, "type");
    Napi::Value d = a.Get(3u);
    if (!d.IsBuffer())
      throw Napi::TypeError::New(env, "ptraceChain: setregset data must be a Buffer");
    auto buf = d.As<Napi::Buffer<uint8_t>>();
    s.data = buf.Data();
    s.len = buf.Length();
  } else if (kind == "getregset") {
    s.kind = Kind::kGetRegset;
    s.a = ElemUint32(env, a, 2, "type");
    s.b = ElemUint32(env, a, 3, "size");
  } else if (kind == "syscall" || kind == "cont") {
    s.kind = kind == "syscall" ? Kind::kSyscall : Kind::kCont;
    s.a = ElemUint32(env, a, 2, "sig");
  } else if (kind == "waitpid") {
    s.kind = Kind::kWaitpid;
    s.a = ElemUint32(env, a, 2, "options");
    s.timeout_ms = ElemInt32(env, a, 3, "timeoutMs");
    s.expected = ElemInt32(env, a, 4, "expectedStatus");
  } else {
    throw Napi::TypeError::New(env, "ptraceChain: unknown step kind '" + kind + "'");
  }
  return s;
}

const char* StepName(Kind k) {
  switch (k) {
    case Kind::kSetRegset:
      return "ptrace(PTRACE_SETREGSET)";
    case Kind::kGetRegset:
      return "ptrace(PTRACE_GETREGSET)";
    case Kind::kSyscall:
      return "ptrace(PTRACE_SYSCALL)";
    case Kind::kCont:
      return "ptrace(PTRACE_CONT)";
    case Kind::kWaitpid:
      return "waitpid";
  }
  return "ptrace";
}

// On the tracer thread.
void RunSteps(const std::vector<Step>& steps, Outcome* out) {
  for (const Step& s : steps) {
    long r = 0;
    switch (s.kind) {
      case Kind::kSetRegset: {
        struct iovec iov = {s.data, s.len};
        r = syscall(SYS_ptrace, PTRACE_SETREGSET, s.pid, s.a, &iov);
        break;
      }
      case Kind::kGetRegset: {
        std::vector<uint8_t> buf(s.b);
        struct iovec iov = {buf.data(), buf.size()};
        r = syscall(SYS_ptrace, PTRACE_GETREGSET, s.pid, s.a, &iov);
        if (r >= 0) {
          buf.resize(iov.iov_len);
          out->regsets.push_back(std::move(buf));
        }
        break;
      }
      case Kind::kSyscall:
      case Kind::kCont:
        r = syscall(SYS_ptrace, s.kind == Kind::kSyscall ? PTRACE_SYSCALL : PTRACE_CONT, s.pid, 0,
                    s.a);
        break;
      case Kind::kWaitpid: {
        WaitpidOutcome w = WaitpidOnTracer(s.pid, static_cast<int>(s.a), s.timeout_ms);
        if (w.err != 0) {
          out->err = w.err;
          return;
        }
        if (!w.got || w.status != s.expected) {
          out->stopped_at_wait = true;
          out->wait_got = w.got;
          out->wait_status = w.status;
          return;
        }
        break;
      }
    }
    if (r < 0) {
      out->err = errno;
      return;
    }
    out->completed++;
  }
}

Napi::Value Chain(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "ptraceChain: steps must be an array");
  Napi::Array arr = info[0].As<Napi::Array>();
  std::vector<Step> steps;
  steps.reserve(arr.Length());
  // The setregset Buffers stay referenced by `arr` (held by the caller) while the chain runs.
  for (uint32_t i = 0; i < arr.Length(); i++) steps.push_back(ReadStep(env, arr.Get(i)));

  Outcome out;
  RunOnTracer([&] { RunSteps(steps, &out); });

  if (out.err != 0) {
    const Step& s = steps[out.completed];
    if (s.kind == Kind::kSetRegset || s.kind == Kind::kGetRegset)
      ThrowSyscall(env, StepName(s.kind), out.err, {s.pid, s.a});
    ThrowSyscall(env, StepName(s.kind), out.err, {s.pid});
  }
  Napi::Object res = Napi::Object::New(env);
  res.Set("completed", Napi::Number::New(env, static_cast<double>(out.completed)));
  if (out.stopped_at_wait && out.wait_got) {
    res.Set("waitStatus", Napi::Number::New(env, out.wait_status));
  } else {
    res.Set("waitStatus", env.Null());
  }
  Napi::Array regsets = Napi::Array::New(env, out.regsets.size());
  for (size_t i = 0; i < out.regsets.size(); i++)
    regsets.Set(static_cast<uint32_t>(i),
                Napi::Buffer<uint8_t>::Copy(env, out.regsets[i].data(), out.regsets[i].size()));
  res.Set("regsets", regsets);
  return res;
}

}  // namespace

void InitChain(Napi::Env env, Napi::Object exports) {
  exports.Set("ptraceChain", Napi::Function::New(env, Chain, "ptraceChain"));
}

}  // namespace criu
