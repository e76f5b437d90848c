// Internal: the one work splitter of the C entry points (api.cpp's ternary matmuls, dense.cpp's head, attention.cpp):
// how an [M, N] output is cut into tasks for the runtime's parallel-for hook, and how the tasks are run.
// Compiled only into translation units without ISA flags.
#ifndef BONSAI_WORK_SPLIT_H
#define BONSAI_WORK_SPLIT_H

#include <stdint.h>

#include "bonsai/parallel.h"

namespace bonsai {

// Output rows per task are a multiple of this, so every task but the last runs whole kernel tiles (and no two
// tasks share a cache line of y).
constexpr int64_t kRowGrain = 16;
// Tokens per task when a GEMM is also split over M (the GEMM kernels' largest token tile).
constexpr int64_t kTokenGrain = 4;
// Tasks per thread over N when the work allows: the runtimes' pools hand tasks to whichever thread is free, so a
// thread slowed by another process on its core (a shared machine, a phone's background work) takes fewer tasks
// instead of holding back the whole loop, as it does with one fixed share per thread.
constexpr int64_t kTasksPerThread = 4;

// How a [M, N] output is cut into n_chunks x m_chunks tasks.
struct Split {
  int64_t m, n, n_chunks, m_chunks;
  int64_t tasks() const { return n_chunks * m_chunks; }
  // [begin, end) of chunk `c` of `count` units in whole grains.
  static void range(int64_t count, int64_t grain, int64_t chunks, int64_t c, int64_t* begin, int64_t* end) {
    const int64_t grains = (count + grain - 1) / grain;
    *begin = grains * c / chunks * grain;
    *end = c + 1 == chunks ? count : grains * (c + 1) / chunks * grain;
    if (*begin > count) *begin = count;
    if (*end > count) *end = count;
  }
  void task_range(int64_t task, int64_t* m0, int64_t* m1, int64_t* n0, int64_t* n1) const {
    range(n, kRowGrain, n_chunks, task % n_chunks, n0, n1);
    range(m, kTokenGrain, m_chunks, task / n_chunks, m0, m1);
  }
};

inline bool runs_parallel(const bonsai_parallel* par) { return par && par->parallel_for && par->num_threads > 1; }

// Split over N first (each weight row is then read by one thread only); over M too when N alone leaves threads
// idle and `split_tokens` allows it. `row_bytes`: weight bytes of one output row; a task gets at least
// `min_task_bytes` of weight bytes x tokens, below which waking another thread costs more than the work it
// would take over.
inline Split make_split(int64_t m, int64_t n, int64_t row_bytes, int64_t min_task_bytes, bool split_tokens,
                        const bonsai_parallel* par) {
  int64_t workers = runs_parallel(par) ? par->num_threads : 1;
  // In double: M * N * row bytes may pass 2^63 for the largest valid shapes.
  const double work = double(m) * double(n) * double(row_bytes) / double(min_task_bytes);
  const int64_t useful = work < double(workers) ? int64_t(work) : workers;
  if (useful < workers) workers = useful > 1 ? useful : 1;
  Split s{m, n, 1, 1};
  const int64_t row_grains = (n + kRowGrain - 1) / kRowGrain;
  const double most = work < double(workers * kTasksPerThread) ? work : double(workers * kTasksPerThread);
  const int64_t n_tasks = workers > 1 && most > double(workers) ? int64_t(most) : workers;
  s.n_chunks = n_tasks < row_grains ? n_tasks : row_grains;
  const int64_t token_grains = (m + kTokenGrain - 1) / kTokenGrain;
  const int64_t spare = workers / s.n_chunks;
  s.m_chunks = split_tokens && m > 1 && spare > 1 ? (spare < token_grains ? spare : token_grains) : 1;
  return s;
}

// Runs fn(ctx, 0 .. n_tasks - 1) on the runtime's threads, or inline without a hook.
inline void run_tasks(const bonsai_parallel* par, int64_t n_tasks, bonsai_task_fn fn, void* ctx) {
  if (n_tasks > 1 && runs_parallel(par)) {
    par->parallel_for(par->runtime_ctx, n_tasks, fn, ctx);
    return;
  }
  for (int64_t t = 0; t < n_tasks; ++t) fn(ctx, t);
}

}  // namespace bonsai

#endif  // BONSAI_WORK_SPLIT_H
