// A small persistent std::thread pool implementing the parallel-for hook (parallel.h) for tests, benchmarks and
// the Python binding. Runtimes with their own pool (ExecuTorch, ONNX Runtime) supply their own hook instead.
//
// Decode calls a parallel loop about every 50-200 us, so waking sleeping threads through the kernel would cost
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
  }
}

}  // namespace

struct bonsai_threadpool {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable wake, done;
  std::atomic<uint64_t> generation{0};  // bumped once per loop; workers run a loop when it changes
  std::atomic<bool> stop{false};
  // The current loop, published before `generation` is bumped.
  bonsai_task_fn task = nullptr;
  void* task_ctx = nullptr;
  int64_t n_tasks = 0;
  std::atomic<int64_t> next{0};     // next task index to claim
  std::atomic<int32_t> pending{0};  // workers that have not finished the current loop

  void drain() {
    for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < n_tasks;
         t = next.fetch_add(1, std::memory_order_relaxed))
      task(task_ctx, t);
  }

  void worker_main() {
    uint64_t seen = 0;
    for (;;) {
      auto changed = [&] { return generation.load(std::memory_order_acquire) != seen || stop.load(); };
      if (!spin_until(changed)) {
        std::unique_lock<std::mutex> lock(mu);
        wake.wait(lock, changed);
      }
      if (stop.load()) return;
      seen = generation.load(std::memory_order_acquire);
      drain();
      if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mu);  // pairs with the caller's wait: no lost wake-up
        done.notify_one();
      }
    }
  }

  void parallel_for(int64_t count, bonsai_task_fn fn, void* ctx) {
    {
      std::lock_guard<std::mutex> lock(mu);
      task = fn;
      task_ctx = ctx;
      n_tasks = count;
      next.store(0, std::memory_order_relaxed);
      pending.store(int32_t(workers.size()), std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_release);
    }
    wake.notify_all();
    drain();  // the caller works too
    auto finished = [&] { return pending.load(std::memory_order_acquire) == 0; };
    if (!spin_until(finished)) {
      std::unique_lock<std::mutex> lock(mu);
      done.wait(lock, finished);
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
