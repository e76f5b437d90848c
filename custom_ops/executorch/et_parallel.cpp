// The ops' parallel-for hook. Decode calls a parallel loop every 20-200 us. ExecuTorch's pthreadpool workers
// sleep after about 1000 spins (~30 us on the Xeon we measured), so each of those loops paid a futex wake-up (an
// inter-processor interrupt on a VM) and began on one thread; the core's own pool (threadpool.cpp) spins 200 us
// first. Single-token calls therefore run on a pool of this library's, as many threads as ExecuTorch's pool:
// Ternary-Bonsai-1.7B decoded 37.6 -> 40.5 tokens/s at 2 threads, Bonsai-500M 125 -> 138. Longer calls
// (prefill) stay on ExecuTorch's pool, which XNNPACK's ops share: on ours, prefill ran ~8% slower, its workers
// spinning while XNNPACK's needed the cores. A host that sets bonsai_et_set_threads (et_threads.h) runs every call
// on ours and ExecuTorch's pool at one thread: XNNPACK's small decode ops then run inline instead of waking a
// second pool that competes with ours for the cores (1.7B at 2 threads: decode +4%, prefill -3%).
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "et_common.h"
#include "et_threadpool.h"
#include "et_threads.h"

namespace bonsai_et {
namespace {

std::atomic<int32_t> g_own_threads{0};  // bonsai_et_set_threads; 0: ExecuTorch's pool decides

// The threads of a call: the host's setting, else ExecuTorch's pool's.
int32_t op_threads() {
  const int32_t own = g_own_threads.load(std::memory_order_relaxed);
  return own ? own : static_cast<int32_t>(executorch::extension::get_thread_count());
}

// Each task goes to pthreadpool as one item, which idle threads steal: extension::parallel_for would cut the
// tasks into one fixed chunk per thread, and a thread slowed by another process would then hold back the loop.
void et_parallel_for(void* /*runtime_ctx*/, int64_t n_tasks, bonsai_task_fn task, void* task_ctx) {
  executorch::extension::threadpool::get_threadpool()->run(
      [&](size_t i) { task(task_ctx, static_cast<int64_t>(i)); }, static_cast<size_t>(n_tasks));
}

struct PoolDeleter {
  void operator()(bonsai_threadpool* pool) const { bonsai_threadpool_destroy(pool); }
};

// The decode pool (every call's, with bonsai_et_set_threads), resized when the thread count changes. It runs one loop at a time: a loop that finds it busy (another
// thread's method running at the same time) runs inline instead of waiting.
struct DecodePool {
  std::mutex mu;
  std::unique_ptr<bonsai_threadpool, PoolDeleter> pool;
  int32_t threads() const { return pool ? bonsai_threadpool_parallel(pool.get()).num_threads : 0; }
};

DecodePool& decode_pool() {
  static DecodePool p;  // destroyed at exit, which joins its workers
  return p;
}

void decode_parallel_for(void* /*runtime_ctx*/, int64_t n_tasks, bonsai_task_fn task, void* task_ctx) {
  DecodePool& p = decode_pool();
  std::unique_lock<std::mutex> lock(p.mu, std::try_to_lock);
  const int32_t threads = op_threads();
  if (lock && p.threads() != threads) p.pool.reset(threads > 1 ? bonsai_threadpool_create(threads) : nullptr);
  if (lock && p.pool) {
    const bonsai_parallel par = bonsai_threadpool_parallel(p.pool.get());
    par.parallel_for(par.runtime_ctx, n_tasks, task, task_ctx);
    return;
  }
  for (int64_t t = 0; t < n_tasks; ++t) task(task_ctx, t);
}

}  // namespace

bonsai_parallel et_parallel(int64_t tokens) {
  const bool own = g_own_threads.load(std::memory_order_relaxed) > 0;
  return {tokens == 1 || own ? decode_parallel_for : et_parallel_for, nullptr, op_threads()};
}

}  // namespace bonsai_et

extern "C" void bonsai_et_set_threads(int32_t threads) {
  bonsai_et::g_own_threads.store(threads > 0 ? threads : 0, std::memory_order_relaxed);
}
