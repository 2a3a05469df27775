#include "core/thread_pool.h"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"

namespace dsq {

namespace {

thread_local bool t_inside_pool = false;

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    done_ = false;
    // New workers start at the current generation: a job that finished before they
    // existed must not look new to them.
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, g = generation_] { worker(i, g); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
    const int parts = int(std::min<int64_t>(size(), max_chunks));
    if (parts <= 1 || t_inside_pool) {
      fn(0, n);
      return;
    }
    // One parallel region at a time: callers on other threads queue here.
    std::lock_guard<std::mutex> serial(run_mu_);
    std::unique_lock<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    parts_ = parts;
    pending_ = parts - 1;
    error_ = nullptr;
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    run_part(0);
    lock.lock();
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_part(int part) {
    const int64_t begin = n_ * part / parts_;
    const int64_t end = n_ * (part + 1) / parts_;
    t_inside_pool = true;
    try {
      if (begin < end) (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> g(mu_);
      if (!error_) error_ = std::current_exception();
    }
    t_inside_pool = false;
  }

  void worker(int index, uint64_t seen) {
    for (;;) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return done_ || generation_ != seen; });
      if (done_) return;
      seen = generation_;
      if (index >= parts_) continue;
      lock.unlock();
      run_part(index);
      lock.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool done_ = false;
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p(std::max(1u, std::thread::hardware_concurrency()));
  return p;
}

}  // namespace

void set_num_threads(int n) {
  DSQ_CHECK(n >= 1, "--threads must be >= 1, got ", n);
  if (n != pool().size()) pool().resize(n);
}

int num_threads() { return pool().size(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  pool().run(n, grain, fn);
}

}  // namespace dsq
