// A Promise-returning job on the libuv thread pool, for bulk copies (process_vm_*, pread/pwrite,
// splice, PAGEMAP_SCAN) that must not hold up the JS thread. Never for ptrace or wait: the pool
// threads are not the tracer thread.

#ifndef CRIU_NATIVE_ASYNC_H_
#define CRIU_NATIVE_ASYNC_H_

#include <napi.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace criu {

class PromiseWorker : public Napi::AsyncWorker {
 public:
  // `work` runs on a pool thread and returns the syscall's result, or -1 with *err set.
  // `to_js` runs on the JS thread and turns a successful result into the resolved value.
  // `keep` are the Buffers and arrays the work touches: referenced until the Promise settles.
  PromiseWorker(Napi::Env env, std::string syscall, ErrArgs args, std::vector<Napi::Value> keep,
                std::function<long(int* err)> work,
                std::function<Napi::Value(Napi::Env, long)> to_js)
      : Napi::AsyncWorker(env, "criu_native.io"),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(std::move(syscall)),
        args_(std::move(args)),
        work_(std::move(work)),
        to_js_(std::move(to_js)) {
    for (Napi::Value& v : keep) keep_.push_back(Napi::Persistent(v));
  }

  // Queues the work and returns its Promise; the worker deletes itself once settled.
  static Napi::Promise Start(PromiseWorker* w) {
    Napi::Promise p = w->deferred_.Promise();
    w->Queue();
    return p;
  }

 protected:
  void Execute() override {
    err_ = 0;
    result_ = work_(&err_);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (result_ < 0) {
      deferred_.Reject(MakeSyscallError(env, syscall_, err_, args_));
      return;
    }
    try {
      deferred_.Resolve(to_js_(env, result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  // For a work whose error arguments are known only after it ran (call before OnOK's rejection).
  void SetErrArgs(ErrArgs args) { args_ = std::move(args); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string syscall_;
  ErrArgs args_;
  std::vector<Napi::Reference<Napi::Value>> keep_;
  std::function<long(int* err)> work_;
  std::function<Napi::Value(Napi::Env, long)> to_js_;
  long result_ = 0;
  int err_ = 0;
};

// Resolves with the result as a number (byte counts).
inline Napi::Value NumberResult(Napi::Env env, long r) {
  return Napi::Number::New(env, static_cast<double>(r));
}

}  // namespace criu

#endif  // CRIU_NATIVE_ASYNC_H_
