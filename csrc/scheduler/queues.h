// Blocking queues of the pipeline scheduler. Every wait happens here, never
// with the GIL held (callers release it before they block).
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

namespace rv2 {

// One attempt of one prompt moving through the stages; `token` names its
// payload on the Python side.
struct WorkItem {
  int64_t token;
  int64_t prompt;
  int32_t attempt;
  int64_t steps = 0;  // denoiser steps it took
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

// The retry rule (pipeline.cpp; twin: rv2.generate.executor.next_attempt).
int next_attempt(bool qc_pass, int attempt, int max_attempts);

// The work queue: fresh items in input order, retries before them (FIFO), so a
// prompt's fate is settled soon. Open until `resolve` has settled every prompt
// (then pop returns nothing).
//
// With `speculate`, it also hands out attempt a+1 of a prompt whose attempt a is
// still in flight, when the denoiser has slots that would idle (`set_want`) and
// nothing else is queued. The write stage journals an attempt only once its
// predecessor failed (`status`); when a prompt settles, its speculative attempts
// are cancelled and whichever stage holds one drops it. Twin: WorkQueue in
// rv2/runtime/pipeline_scheduler.py.
class WorkQueue {
 public:
  enum class Status { kCommit, kHold, kDrop };

  WorkQueue(std::vector<WorkItem> fresh, int max_attempts)
      : fresh_(fresh.begin(), fresh.end()), max_attempts_(max_attempts) {
    outstanding_ = static_cast<int64_t>(fresh_.size());
  }

  std::vector<WorkItem> pop_batch(size_t max) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] {
      return aborted_ || outstanding_ == 0 || !retry_.empty() || !fresh_.empty() || spec_ready();
    });
    std::vector<WorkItem> out;
    if (aborted_) return out;
    while (out.size() < max && (!retry_.empty() || !fresh_.empty())) {
      auto& q = retry_.empty() ? fresh_ : retry_;
      out.push_back(q.front());
      q.pop_front();
      launch(out.back());
    }
    while (out.size() < max && want_ > 0 && retry_.empty() && fresh_.empty()) {
      WorkItem it{-1, 0, 0};
      if (!candidate(&it)) break;
      out.push_back(it);
      --want_;
      ++speculated_;
    }
    popped_ += static_cast<int64_t>(out.size());
    return out;
  }

  // The denoiser could take `n` more items now than are on their way to it.
  void set_want(int64_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    want_ = std::max<int64_t>(0, n);
    if (want_ > 0) cv_.notify_all();
  }

  // kDrop: its prompt settled; kCommit: the prompt's real attempt; else kHold.
  Status status(int64_t p, int a) {
    std::lock_guard<std::mutex> lk(mu_);
    if (cancelled_.count({p, a})) return Status::kDrop;
    return flight_.at(p).first == a ? Status::kCommit : Status::kHold;
  }

  bool cancelled(int64_t p, int a) {
    std::lock_guard<std::mutex> lk(mu_);
    return cancelled_.count({p, a}) > 0;
  }

  // A cancelled attempt was dropped.
  void forget(int64_t p, int a) {
    std::lock_guard<std::mutex> lk(mu_);
    cancelled_.erase({p, a});
  }

  // The retry rule after attempt a of prompt p was journaled: whether it was the
  // prompt's last attempt; `*all_settled` when no prompt is left. A failure
  // re-queues the next attempt, unless it was started speculatively.
  bool resolve(int64_t p, int a, bool qc_pass, bool* all_settled) {
    const int nxt = next_attempt(qc_pass, a, max_attempts_);
    std::lock_guard<std::mutex> lk(mu_);
    *all_settled = false;
    if (nxt < 0) {
      auto f = flight_.find(p);
      for (int b = a + 1; b <= f->second.second; ++b) cancelled_.insert({p, b});
      erase_flight(f);
      --outstanding_;
      *all_settled = outstanding_ == 0;
      cv_.notify_all();
      return true;
    }
    ++retries_;
    auto& f = flight_.at(p);
    f.first = nxt;
    if (f.second >= nxt) {
      ++kept_;
    } else {
      f.second = nxt;
      retry_.push_back(WorkItem{-1, p, nxt});
      cv_.notify_all();
    }
    return false;
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
  int64_t popped() {
    std::lock_guard<std::mutex> lk(mu_);
    return popped_;
  }
  int64_t speculated() {
    std::lock_guard<std::mutex> lk(mu_);
    return speculated_;
  }
  int64_t kept() {
    std::lock_guard<std::mutex> lk(mu_);
    return kept_;
  }
  size_t depth() {
    std::lock_guard<std::mutex> lk(mu_);
    return retry_.size() + fresh_.size();
  }

 private:
  using Flight = std::map<int64_t, std::pair<int, int>>;  // prompt -> (real, last launched)

  void launch(const WorkItem& it) {
    auto f = flight_.find(it.prompt);
    if (f == flight_.end()) {
      flight_.emplace(it.prompt, std::make_pair(it.attempt, it.attempt));
      order_.push_back(it.prompt);
    } else {
      f->second.second = std::max(f->second.second, it.attempt);
    }
  }

  void erase_flight(Flight::iterator f) {
    order_.erase(std::find(order_.begin(), order_.end(), f->first));
    flight_.erase(f);
  }

  bool spec_ready() const {
    if (want_ <= 0) return false;
    for (const auto& f : flight_)
      if (f.second.second + 1 < max_attempts_) return true;
    return false;
  }

  // The speculative attempt to start: the prompt with the fewest attempts ahead of
  // its real one, the oldest first.
  bool candidate(WorkItem* out) {
    int64_t best = -1;
    int best_ahead = 0;
    for (int64_t p : order_) {
      const auto& f = flight_.at(p);
      if (f.second + 1 < max_attempts_ && (best < 0 || f.second - f.first < best_ahead)) {
        best = p;
        best_ahead = f.second - f.first;
      }
    }
    if (best < 0) return false;
    auto& f = flight_.at(best);
    *out = WorkItem{-1, best, ++f.second};
    return true;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<WorkItem> fresh_, retry_;
  int max_attempts_;
  Flight flight_;
  std::deque<int64_t> order_;  // the prompts of flight_, oldest first
  std::set<std::pair<int64_t, int>> cancelled_;
  int64_t outstanding_ = 0, retries_ = 0, want_ = 0, popped_ = 0, speculated_ = 0, kept_ = 0;
  bool aborted_ = false;
};

}  // namespace rv2
