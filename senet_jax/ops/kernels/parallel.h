// A fixed number of work chunks run on the calling thread and XLA's intra-op thread pool.
#ifndef SENET_JAX_KERNELS_PARALLEL_H_
#define SENET_JAX_KERNELS_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace senet {

// The caller only waits for chunks another thread has started, so it cannot deadlock on a busy
// pool; tasks that start after all chunks are taken return at once (the queue is shared, so it
// outlives the call).
struct ChunkQueue {
  std::atomic<int64_t> next{0}, done{0};
  int64_t total = 0;
  std::function<void(int64_t)> fn;
  std::mutex mu;
  std::condition_variable cv;

  void Drain() {
    for (int64_t i; (i = next.fetch_add(1)) < total;) {
      fn(i);
      if (done.fetch_add(1) + 1 == total) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

// Runs fn(0), ..., fn(total - 1), each exactly once, and returns when all have finished.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t total,
                        std::function<void(int64_t)> fn) {
  auto queue = std::make_shared<ChunkQueue>();
  queue->total = total;
  queue->fn = std::move(fn);
  // The calling thread is usually one of the pool's own, so it counts as one worker.
  const int64_t helpers = std::max<int64_t>(0, std::min(pool.num_threads() - 1, total - 1));
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([queue] { queue->Drain(); });
  queue->Drain();
  std::unique_lock<std::mutex> lock(queue->mu);
  queue->cv.wait(lock, [&] { return queue->done.load() == total; });
}

// out[0 .. size) = sum over chunks of what fn(chunk, partial) accumulates into its own zeroed
// partial buffer of `size` floats; the partials are added in chunk order, so the result does
// not depend on which thread ran which chunk.
inline void ChunkedSum(xla::ffi::ThreadPool& pool, int64_t chunks, int64_t size, float* out,
                       std::function<void(int64_t, float*)> fn) {
  std::vector<float> partial(chunks * size, 0.0f);
  ParallelFor(pool, chunks, [&](int64_t chunk) { fn(chunk, partial.data() + chunk * size); });
  std::copy(partial.begin(), partial.begin() + size, out);
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const float* p = partial.data() + chunk * size;
    for (int64_t k = 0; k < size; ++k) out[k] += p[k];
  }
}

}  // namespace senet

#endif  // SENET_JAX_KERNELS_PARALLEL_H_
