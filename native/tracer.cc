// The tracer thread (see tracer.h): a FIFO of synchronous jobs, a time-ordered heap of polling
// jobs, and the hand-off between JS threads and the tracer.
//
// Hand-off cost matters: a restore issues thousands of ptrace calls back to back. A caller waits
// actively on the job's done flag for a while before sleeping on it (futex), and the tracer waits
// actively for the next job for a while after each synchronous job before sleeping on its
// condition variable, so a burst of calls costs a few microseconds per call instead of two
// thread wake-ups (50-100 us each here).

#include "tracer.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

namespace criu {

namespace {

using Clock = std::chrono::steady_clock;

// How long a JS caller waits actively for its job, and how long the tracer waits actively for
// the next job after a synchronous one. Waking a sleeping thread costs 50-100 us on this VM
// (measured), a burst of calls about 4 us each. Both are bounded, so an idle process costs
// nothing.
constexpr auto kCallerSpin = std::chrono::microseconds(200);
constexpr auto kTracerSpin = std::chrono::microseconds(200);

// Waits actively until ready() or the time is up; returns ready(). Each turn is a sched_yield:
// on an idle machine it returns at once (a spin), on a busy one it hands the core to whoever
// needs it, the other side of the hand-off included when both share a core. (Measured: a pause
// loop was as fast idle but 2-10x slower with the cores loaded.)
template <class F>
bool SpinUntil(F&& ready, std::chrono::microseconds limit) {
  auto until = Clock::now() + limit;
  for (;;) {
    if (ready()) return true;
    if (Clock::now() >= until) return ready();
    sched_yield();
  }
}

void FutexWait(std::atomic<uint32_t>* addr, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

class SyncJob : public TracerJob {
 public:
  SyncJob(void (*fn)(void*), void* ctx) : fn_(fn), ctx_(ctx) {}

  int64_t Run() override {
    fn_(ctx_);
    done_.store(1, std::memory_order_release);
    // The caller may already have seen done_ and returned; waking a futex on its (still mapped)
    // stack is harmless, and it never touches the job again.
    FutexWake(&done_);
    return -1;
  }

  void Await() {
    auto done = [this] { return done_.load(std::memory_order_acquire) != 0; };
    if (SpinUntil(done, kCallerSpin)) return;
    while (!done()) FutexWait(&done_, 0);
  }

 private:
  void (*fn_)(void*);
  void* ctx_;
  std::atomic<uint32_t> done_{0};
};

struct Timed {
  Clock::time_point due;
  uint64_t seq;  // keeps equal due times in posting order
  TracerJob* job;
  bool operator>(const Timed& o) const { return due != o.due ? due > o.due : seq > o.seq; }
};

class Tracer {
 public:
  static Tracer& Get() {
    // Leaked on purpose: the detached thread may still be parked on these members while the
    // process runs its static destructors.
    static Tracer* tracer = new Tracer();
    return *tracer;
  }

  void PostSync(SyncJob* job) {
    Post(job, true);
    job->Await();
  }

  void PostPoll(TracerJob* job) { Post(job, false); }

  int Tid() {
    EnsureStarted();
    return tid_.load();
  }

 private:
  void EnsureStarted() {
    std::call_once(started_, [this] {
      std::thread t([this] { Loop(); });
      t.detach();
      while (tid_.load() == 0) std::this_thread::yield();
    });
  }

  void Post(TracerJob* job, bool sync) {
    EnsureStarted();
    bool wake;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (sync) {
        ready_.push_back(job);
      } else {
        timed_.push(Timed{Clock::now(), seq_++, job});
      }
      if (sync) nready_.fetch_add(1, std::memory_order_release);
      wake = sleeping_;
    }
    if (wake) cv_.notify_one();
  }

  void Loop() {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    pthread_setname_np(pthread_self(), "criu-tracer");
    tid_.store(static_cast<int>(syscall(SYS_gettid)));

    bool spin = false;
    for (;;) {
      TracerJob* job = nullptr;
      bool is_sync = false;
      if (spin) {
        // Just ran a synchronous job: the next one is likely microseconds away.
        SpinUntil([this] { return nready_.load(std::memory_order_acquire) != 0; }, kTracerSpin);
      }
      {
        std::unique_lock<std::mutex> lk(mu_);
        for (;;) {
          if (!ready_.empty()) {
            job = ready_.front();
            ready_.pop_front();
            nready_.fetch_sub(1, std::memory_order_relaxed);
            is_sync = true;
            break;
          }
          if (!timed_.empty() && timed_.top().due <= Clock::now()) {
            job = timed_.top().job;
            timed_.pop();
            break;
          }
          sleeping_ = true;
          if (timed_.empty()) {
            cv_.wait(lk);
          } else {
            cv_.wait_until(lk, timed_.top().due);
          }
          sleeping_ = false;
        }
      }
      int64_t again_ns = job->Run();
      spin = is_sync;
      if (again_ns >= 0) {
        std::lock_guard<std::mutex> lk(mu_);
        timed_.push(Timed{Clock::now() + std::chrono::nanoseconds(again_ns), seq_++, job});
      }
    }
  }

  std::once_flag started_;
  std::atomic<int> tid_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool sleeping_ = false;
  std::deque<TracerJob*> ready_;
  std::priority_queue<Timed, std::vector<Timed>, std::greater<Timed>> timed_;
  uint64_t seq_ = 0;
  std::atomic<uint32_t> nready_{0};  // ready_.size(), read without the lock while spinning
};

}  // namespace

void RunOnTracerRaw(void (*fn)(void*), void* ctx) {
  SyncJob job(fn, ctx);
  Tracer::Get().PostSync(&job);
}

void PostToTracer(TracerJob* job) { Tracer::Get().PostPoll(job); }

int TracerTid() { return Tracer::Get().Tid(); }

}  // namespace criu
