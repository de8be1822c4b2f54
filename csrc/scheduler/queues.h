// Blocking queues of the pipeline scheduler. Every wait happens here, never
// with the GIL held (callers release it before they block).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace rv2 {

// One attempt of one prompt moving through the stages; `token` names its
// payload on the Python side.
struct WorkItem {
  int64_t token;
  int64_t prompt;
  int32_t attempt;
};

// A FIFO of at most `capacity` items (0: unbounded). push() blocks while full
// (backpressure); pop_batch() blocks until an item is there or the queue is
// closed. close() lets the consumer drain what is left; abort() wakes every
// waiter and makes pushes fail and pops return nothing.
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : cap_(capacity) {}

  bool push(const WorkItem& v) {
    std::unique_lock<std::mutex> lk(mu_);
    not_full_.wait(lk, [&] { return aborted_ || cap_ == 0 || q_.size() < cap_; });
    if (aborted_ || closed_) return false;
    q_.push_back(v);
    note_depth();
    not_empty_.notify_one();
    return true;
  }

  // Up to `max` items; with block, waits for the first one. Empty result:
  // closed and drained, aborted, or (without block) nothing queued.
  std::vector<WorkItem> pop_batch(size_t max, bool block) {
    std::unique_lock<std::mutex> lk(mu_);
    if (block) not_empty_.wait(lk, [&] { return aborted_ || closed_ || !q_.empty(); });
    std::vector<WorkItem> out;
    if (aborted_) return out;
    while (!q_.empty() && out.size() < max) {
      out.push_back(q_.front());
      q_.pop_front();
    }
    if (!out.empty()) not_full_.notify_all();
    return out;
  }

  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  void abort() {
    std::lock_guard<std::mutex> lk(mu_);
    aborted_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  size_t depth() {
    std::lock_guard<std::mutex> lk(mu_);
    return q_.size();
  }
  size_t max_depth() {
    std::lock_guard<std::mutex> lk(mu_);
    return max_depth_;
  }
  double mean_depth() {
    std::lock_guard<std::mutex> lk(mu_);
    return pushes_ ? static_cast<double>(depth_sum_) / static_cast<double>(pushes_) : 0.0;
  }
  size_t capacity() const { return cap_; }

 private:
  void note_depth() {
    ++pushes_;
    depth_sum_ += q_.size();
    if (q_.size() > max_depth_) max_depth_ = q_.size();
  }

  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<WorkItem> q_;
  size_t cap_;
  bool closed_ = false, aborted_ = false;
  size_t max_depth_ = 0;
  uint64_t pushes_ = 0, depth_sum_ = 0;
};

// The work queue: fresh items in input order, retries before them (FIFO), so a
// prompt's fate is settled soon. Open until `settle` has been called for every
// item that will not come back (then pop returns nothing).
class WorkQueue {
 public:
  explicit WorkQueue(std::vector<WorkItem> fresh) : fresh_(fresh.begin(), fresh.end()) {
    outstanding_ = static_cast<int64_t>(fresh_.size());
  }

  std::vector<WorkItem> pop_batch(size_t max) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return aborted_ || outstanding_ == 0 || !retry_.empty() || !fresh_.empty(); });
    std::vector<WorkItem> out;
    if (aborted_) return out;
    while (out.size() < max && (!retry_.empty() || !fresh_.empty())) {
      auto& q = retry_.empty() ? fresh_ : retry_;
      out.push_back(q.front());
      q.pop_front();
    }
    return out;
  }

  void retry(const WorkItem& v) {
    std::lock_guard<std::mutex> lk(mu_);
    retry_.push_back(v);
    ++retries_;
    cv_.notify_all();
  }

  // One attempt ended its prompt's work; returns true when nothing is left.
  bool settle() {
    std::lock_guard<std::mutex> lk(mu_);
    --outstanding_;
    cv_.notify_all();
    return outstanding_ == 0;
  }

  void abort() {
    std::lock_guard<std::mutex> lk(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

  int64_t retries() {
    std::lock_guard<std::mutex> lk(mu_);
    return retries_;
  }
  size_t depth() {
    std::lock_guard<std::mutex> lk(mu_);
    return retry_.size() + fresh_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<WorkItem> fresh_, retry_;
  int64_t outstanding_ = 0, retries_ = 0;
  bool aborted_ = false;
};

}  // namespace rv2
