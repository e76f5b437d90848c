// A small persistent std::thread pool implementing the parallel-for hook (parallel.h) for tests, benchmarks and
// the Python binding. Runtimes with their own pool (ExecuTorch, ONNX Runtime) supply their own hook instead.
//
// Decode calls a parallel loop about every 20-200 us, so waking sleeping threads through the kernel would cost
// a noticeable share: workers and the caller spin for a short while (kSpinTime) before falling back to a
// condition variable, which keeps an idle pool from burning a core.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bonsai/parallel.h"
#include "status.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace {

constexpr std::chrono::microseconds kSpinTime{200};
constexpr int kSpinsPerClockCheck = 64;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// Spins until pred() holds or kSpinTime passes; returns whether it holds.
template <typename Pred>
bool spin_until(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  for (;;) {
    for (int i = 0; i < kSpinsPerClockCheck; ++i) {
      if (pred()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() > deadline) return pred();
    // A thread just woken may have been placed on this very core (wake-affine scheduling): yielding lets it
    // run instead of making it wait until this spin times out.
    std::this_thread::yield();
  }
}

}  // namespace

// One loop is described by a single atomic word, so that a worker that wakes late (descheduled on a busy
// machine) can never claim a task of a loop that has finished or not started: [generation:32][tasks:16][next:16].
// The caller claims tasks too and returns as soon as every task has run, whether or not all workers woke up.
struct bonsai_threadpool {
  static constexpr int kIndexBits = 16;
  static constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;
  static constexpr int64_t kMaxTasks = int64_t(kIndexMask);

  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable wake, done_cv;
  std::atomic<uint64_t> state{0};
  std::atomic<bool> stop{false};
  // The current loop; written before `state` publishes it and stable until all its tasks are done.
  bonsai_task_fn task = nullptr;
  void* task_ctx = nullptr;
  std::atomic<int64_t> done{0};

  static uint32_t generation(uint64_t s) { return uint32_t(s >> 32); }

  // Claims the next task of loop `gen`; false once that loop has no unclaimed task (or is over).
  bool claim(uint32_t gen, int64_t* index, int64_t* count) {
    uint64_t s = state.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t next = s & kIndexMask, tasks = (s >> kIndexBits) & kIndexMask;
      if (generation(s) != gen || next >= tasks) return false;
      if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        *index = int64_t(next);
        *count = int64_t(tasks);
        return true;
      }
    }
  }

  void drain(uint32_t gen) {
    int64_t index, count;
    while (claim(gen, &index, &count)) {
      task(task_ctx, index);  // safe to read: the loop cannot end before this claimed task is done
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == count) {
        std::lock_guard<std::mutex> lock(mu);  // pairs with the caller's wait: no lost wake-up
        done_cv.notify_all();
      }
    }
  }

  void worker_main() {
    uint32_t seen = 0;
    for (;;) {
      auto changed = [&] { return generation(state.load(std::memory_order_acquire)) != seen || stop.load(); };
      if (!spin_until(changed)) {
        std::unique_lock<std::mutex> lock(mu);
        wake.wait(lock, changed);
      }
      if (stop.load()) return;
      seen = generation(state.load(std::memory_order_acquire));
      drain(seen);
    }
  }

  void parallel_for(int64_t count, bonsai_task_fn fn, void* ctx) {
    for (int64_t first = 0; first < count; first += kMaxTasks) {  // more tasks than one word holds: in rounds
      const int64_t round = count - first < kMaxTasks ? count - first : kMaxTasks;
      run_round(round, fn, ctx, first);
    }
  }

  // Task offsets of a round beyond the first kMaxTasks are added by this trampoline.
  struct Offset {
    bonsai_task_fn fn;
    void* ctx;
    int64_t first;
  };
  static void offset_task(void* ctx, int64_t i) {
    const Offset* o = static_cast<const Offset*>(ctx);
    o->fn(o->ctx, o->first + i);
  }

  void run_round(int64_t count, bonsai_task_fn fn, void* ctx, int64_t first) {
    Offset offset{fn, ctx, first};
    const uint32_t gen = generation(state.load(std::memory_order_relaxed)) + 1;
    {
      std::lock_guard<std::mutex> lock(mu);
      task = first ? offset_task : fn;
      task_ctx = first ? static_cast<void*>(&offset) : ctx;
      done.store(0, std::memory_order_relaxed);
      state.store((uint64_t(gen) << 32) | (uint64_t(count) << kIndexBits), std::memory_order_release);
    }
    wake.notify_all();
    drain(gen);  // the caller works too
    auto finished = [&] { return done.load(std::memory_order_acquire) == count; };
    if (!spin_until(finished)) {
      std::unique_lock<std::mutex> lock(mu);
      done_cv.wait(lock, finished);
    }
  }
};

namespace {
void pool_parallel_for(void* runtime_ctx, int64_t n_tasks, bonsai_task_fn task, void* task_ctx) {
  static_cast<bonsai_threadpool*>(runtime_ctx)->parallel_for(n_tasks, task, task_ctx);
}
}  // namespace

extern "C" {

bonsai_threadpool* bonsai_threadpool_create(int32_t num_threads) {
  if (num_threads < 1 || num_threads > 1024) {
    bonsai::fail(BONSAI_ERR_SHAPE, "bonsai_threadpool_create: expected 1..1024 threads, got " + std::to_string(num_threads));
    return nullptr;
  }
  auto* pool = new (std::nothrow) bonsai_threadpool;
  if (!pool) return nullptr;
  try {
    for (int32_t i = 1; i < num_threads; ++i) pool->workers.emplace_back([pool] { pool->worker_main(); });
  } catch (const std::exception& e) {
    bonsai_threadpool_destroy(pool);
    bonsai::fail(BONSAI_ERR_ALLOC, std::string("bonsai_threadpool_create: ") + e.what());
    return nullptr;
  }
  return pool;
}

void bonsai_threadpool_destroy(bonsai_threadpool* pool) {
  if (!pool) return;
  {
    std::lock_guard<std::mutex> lock(pool->mu);
    pool->stop.store(true);
  }
  pool->wake.notify_all();
  for (auto& t : pool->workers) t.join();
  delete pool;
}

bonsai_parallel bonsai_threadpool_parallel(bonsai_threadpool* pool) {
  bonsai_parallel p{};
  if (!pool) return p;  // a null hook runs inline
  p.parallel_for = pool_parallel_for;
  p.runtime_ctx = pool;
  p.num_threads = int32_t(pool->workers.size() + 1);
  return p;
}

}  // extern "C"
