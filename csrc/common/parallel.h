// Minimal fork-join parallel loop over [0, n) on std::thread.
// Kernels call parallel_for with a chunk function; the number of threads is
// rv2::num_threads() (RV2_NUM_THREADS, else hardware concurrency).
#pragma once

#include <cstdint>
#include <functional>

namespace rv2 {

int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n). Runs inline when
// n < grain or only one thread is configured. Exceptions from workers are
// re-thrown in the caller.
void parallel_for(int64_t n, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace rv2
