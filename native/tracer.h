// The tracer thread: one native thread that runs every ptrace and wait call, and clone3Exec.
//
// Linux lets only the thread that seized a tracee drive it (any other thread gets ESRCH), so all
// of them must come from one thread that outlives the JS calls. It is created on first use, runs
// jobs in the order they were queued, has every signal blocked (so blocking waits are not cut
// short by EINTR and process signals go to Node's threads), and is detached: it never keeps the
// process from exiting.
//
// Two kinds of jobs:
// - synchronous (RunOnTracer): the calling JS thread blocks until the job has run. After such a
//   job the tracer waits actively (up to 200 us) for the next one, because callers issue them
//   in bursts.
// - polling (PostToTracer): a TracerJob whose Run() returns the delay after which it wants to run
//   again, or a negative value when it is finished (it then owns its own completion).
//   Synchronous jobs always go before polling jobs that are merely due.

#ifndef CRIU_NATIVE_TRACER_H_
#define CRIU_NATIVE_TRACER_H_

#include <cstdint>
#include <utility>

namespace criu {

class TracerJob {
 public:
  virtual ~TracerJob() = default;
  // Runs on the tracer thread. Returns the nanoseconds after which to run again, or -1 when done.
  virtual int64_t Run() = 0;
};

// Runs fn(ctx) on the tracer thread; returns once it has run.
void RunOnTracerRaw(void (*fn)(void*), void* ctx);

// Runs a callable on the tracer thread; returns once it has run. Captured references stay valid
// because the caller is blocked meanwhile.
template <class F>
void RunOnTracer(F&& fn) {
  using Fn = std::remove_reference_t<F>;
  RunOnTracerRaw([](void* p) { (*static_cast<Fn*>(p))(); }, static_cast<void*>(&fn));
}

// Queues a polling job; the tracer runs it as soon as no synchronous job is waiting.
void PostToTracer(TracerJob* job);

// The kernel tid of the tracer thread (starting it if needed); for tests and diagnostics.
int TracerTid();

}  // namespace criu

#endif  // CRIU_NATIVE_TRACER_H_
