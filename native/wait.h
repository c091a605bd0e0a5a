// waitpid(2) as the tracer thread runs it, for native code that is already on that thread (the
// ptrace chain, chain.cc). JS calls go through waitpid/waitpidAsync (wait.cc).

#ifndef CRIU_NATIVE_WAIT_H_
#define CRIU_NATIVE_WAIT_H_

namespace criu {

struct WaitpidOutcome {
  bool got;    // a state change was reported (false: timed out)
  int err;     // errno when waitpid failed
  int pid;     // the waited-for pid that changed
  int status;  // its raw wait status
};

// waitpid(pid, options) with waitpid()'s timeout rules (wait.cc). Call only on the tracer thread.
WaitpidOutcome WaitpidOnTracer(int pid, int options, int timeout_ms);

}  // namespace criu

#endif  // CRIU_NATIVE_WAIT_H_
