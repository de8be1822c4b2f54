// The pipeline scheduler of `rv2 generate --executor native`.
//
// Owns the work queue of (prompt, attempt) items and the retry rule, and runs
// five stages on their own threads, connected by bounded queues:
//
//   work --encode--> ready --denoise (fixed-capacity slots)--> decoded
//        --decode--> judged --qc--> written --write (+ native write pool)
//
// Stage bodies are Python callables on a `bodies` object (see
// rv2/runtime/pipeline_scheduler.py for the contract and the Python twin of this
// file). The GIL is taken only around a body call; every wait and queue
// operation runs without it. Items join the denoiser at step boundaries as
// soon as a slot is free. Image files are written on a pool of native threads
// (write to a temporary, fsync, rename, fsync the folder), then the batch is
// journaled by the `commit` body, then the retry rule re-queues failures.
// With `speculate`, slots that would idle start a prompt's next attempt early;
// the write stage holds it until its predecessor is journaled (WorkQueue).
#include <fcntl.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "registry.h"
#include "scheduler/queues.h"

namespace py = pybind11;

namespace rv2 {

// The one retry rule (twin: rv2.generate.executor.next_attempt): the attempt
// after `attempt`, or -1 when the prompt is settled.
int next_attempt(bool qc_pass, int attempt, int max_attempts) {
  if (qc_pass) return -1;
  const int nxt = attempt + 1;
  return nxt < max_attempts ? nxt : -1;
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A failed file write, with the errno and the file: Python receives it as an
// OSError (errno, message, filename), so rv2.files.is_disk_full sees ENOSPC
// exactly as it does for a write of its own.
class FileWriteError : public std::system_error {
 public:
  FileWriteError(int e, const std::string& path, const std::string& what)
      : std::system_error(e, std::generic_category(), "writing " + path + ": " + what),
        path_(path) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Durable write of one file: temporary `.name.tmp-PID` (the name
// rv2.files.clean_temporaries removes after a crash), fsync, rename, fsync dir.
void atomic_write_file(const std::string& path, const std::string& data) {
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  const std::string tmp = dir + "/." + name + ".tmp-" + std::to_string(::getpid());
  auto fail = [&](const char* what) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw FileWriteError(e, path, what);
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("open");
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      fail("write");
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    fail("fsync");
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename");
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

// A fixed pool of native threads running void() jobs; run_all() waits for a
// batch of jobs and rethrows the first failure.
class WritePool {
 public:
  explicit WritePool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~WritePool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run_all(std::vector<std::function<void()>> jobs) {
    if (jobs.empty()) return;
    std::mutex done_mu;
    std::condition_variable done_cv;
    size_t left = jobs.size();
    std::exception_ptr err;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& job : jobs) {
        jobs_.push_back([&, job] {
          std::exception_ptr e;
          try {
            job();
          } catch (...) {
            e = std::current_exception();
          }
          std::lock_guard<std::mutex> dl(done_mu);
          if (e && !err) err = e;
          if (--left == 0) done_cv.notify_all();
        });
      }
    }
    cv_.notify_all();
    std::unique_lock<std::mutex> dl(done_mu);
    done_cv.wait(dl, [&] { return left == 0; });
    if (err) std::rethrow_exception(err);
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
        if (stop_ && jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::vector<std::thread> threads_;
  std::deque<std::function<void()>> jobs_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

struct Options {
  int max_attempts = 4;
  int capacity = 8;
  int batch = 8;
  int queue_capacity = 16;
  int write_threads = 2;
  bool speculate = false;
};

class Pipeline {
 public:
  Pipeline(py::object bodies, std::vector<WorkItem> items, Options opt)
      : opt_(opt),
        work_(std::move(items), opt.max_attempts),
        ready_(opt.queue_capacity),
        decoded_(opt.queue_capacity),
        judged_(opt.queue_capacity),
        written_(opt.queue_capacity),
        encode_(bodies.attr("encode")),
        step_(bodies.attr("step")),
        decode_(bodies.attr("decode")),
        judge_(bodies.attr("judge")),
        prepare_write_(bodies.attr("prepare_write")),
        encode_image_(bodies.attr("encode_image")),
        commit_(bodies.attr("commit")),
        done_(bodies.attr("done")),
        drop_(opt.speculate ? py::object(bodies.attr("drop")) : py::object(py::none())) {}

  // Called with the GIL held; releases it while the stages run.
  py::dict run(bool empty) {
    const auto t0 = Clock::now();
    if (!empty) {
      py::gil_scoped_release nogil;
      WritePool pool(opt_.write_threads);
      pool_ = &pool;
      std::vector<std::thread> threads;
      threads.emplace_back([this] { guarded([this] { encode_loop(); }); });
      threads.emplace_back([this] { guarded([this] { denoise_loop(); }); });
      threads.emplace_back([this] { guarded([this] { stage_loop(decoded_, judged_, decode_, 2); }); });
      threads.emplace_back([this] { guarded([this] { stage_loop(judged_, written_, judge_, 3); }); });
      threads.emplace_back([this] { guarded([this] { write_loop(); }); });
      // Wait for the end, looking at Python's signals (Ctrl-C) now and then.
      {
        std::unique_lock<std::mutex> lk(end_mu_);
        while (!end_cv_.wait_for(lk, std::chrono::milliseconds(100), [&] { return running_ == 0; })) {
          lk.unlock();
          {
            py::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) {
              fail(std::make_exception_ptr(py::error_already_set()));
            }
          }
          lk.lock();
        }
      }
      for (auto& t : threads) t.join();
      pool_ = nullptr;
    }
    if (error_) std::rethrow_exception(error_);
    return stats(seconds_since(t0));
  }

 private:
  static constexpr int kStages = 5;

  void guarded(const std::function<void()>& body) {
    {
      std::lock_guard<std::mutex> lk(end_mu_);
      ++running_;
    }
    try {
      body();
    } catch (...) {
      fail(std::current_exception());
    }
    std::lock_guard<std::mutex> lk(end_mu_);
    --running_;
    end_cv_.notify_all();
  }

  // The first error stops every stage; what is journaled stays consistent.
  void fail(std::exception_ptr e) {
    {
      std::lock_guard<std::mutex> lk(err_mu_);
      if (!error_) error_ = e;
    }
    work_.abort();
    for (auto* q : {&ready_, &decoded_, &judged_, &written_}) q->abort();
  }

  bool failed() {
    std::lock_guard<std::mutex> lk(err_mu_);
    return static_cast<bool>(error_);
  }

  static py::list tokens_of(const std::vector<WorkItem>& items) {
    py::list out;
    for (const auto& it : items) out.append(it.token);
    return out;
  }

  void add_busy(int stage, double s) {
    std::lock_guard<std::mutex> lk(stat_mu_);
    busy_[stage] += s;
  }

  void encode_loop() {
    for (;;) {
      auto batch = work_.pop_batch(static_cast<size_t>(opt_.batch));
      if (batch.empty()) break;
      for (auto& it : batch) it.token = next_token_++;
      {
        py::gil_scoped_acquire gil;
        const auto t0 = Clock::now();
        py::list arg;
        for (const auto& it : batch) arg.append(py::make_tuple(it.token, it.prompt, it.attempt));
        encode_(arg);
        add_busy(0, seconds_since(t0));
      }
      for (const auto& it : batch)
        if (!ready_.push(it)) return;
    }
    ready_.close();
  }

  void denoise_loop() {
    const int cap = opt_.capacity;
    std::vector<WorkItem> slot_item(cap);
    std::vector<bool> used(cap, false);
    int active = 0;
    int64_t joined = 0;
    for (;;) {
      std::vector<WorkItem> joining;
      const size_t free_slots = static_cast<size_t>(cap - active);
      if (active == 0) {
        const auto t0 = Clock::now();
        joining = ready_.pop_batch(free_slots, true);
        add_wait(seconds_since(t0));
        if (joining.empty()) break;  // closed and drained, or aborted
      } else if (free_slots > 0) {
        joining = ready_.pop_batch(free_slots, false);
      }
      if (failed()) return;
      joined += static_cast<int64_t>(joining.size());
      if (opt_.speculate) {  // cancelled attempts leave (or never take) their slots
        std::vector<WorkItem> gone, keep;
        for (const auto& it : joining) (work_.cancelled(it.prompt, it.attempt) ? gone : keep).push_back(it);
        joining.swap(keep);
        for (int s = 0; s < cap; ++s) {
          if (used[s] && work_.cancelled(slot_item[s].prompt, slot_item[s].attempt)) {
            gone.push_back(slot_item[s]);
            used[s] = false;
            --active;
          }
        }
        drop(gone);
      }
      std::vector<std::pair<int, int64_t>> joins;
      for (const auto& it : joining) {
        int s = 0;
        while (used[s]) ++s;
        used[s] = true;
        slot_item[s] = it;
        ++active;
        joins.emplace_back(s, it.token);
      }
      if (opt_.speculate) work_.set_want(cap - active - (work_.popped() - joined));
      if (active == 0) continue;
      std::vector<std::pair<int, int64_t>> finished;
      {
        py::gil_scoped_acquire gil;
        const auto t0 = Clock::now();
        finished = step_(py::cast(joins)).cast<std::vector<std::pair<int, int64_t>>>();
        add_busy(1, seconds_since(t0));
      }
      {
        std::lock_guard<std::mutex> lk(stat_mu_);
        ++steps_;
        slot_steps_ += active;
      }
      for (int s = 0; s < cap; ++s)
        if (used[s]) ++slot_item[s].steps;
      for (const auto& f : finished) {
        const int s = f.first;
        if (s < 0 || s >= cap || !used[s] || slot_item[s].token != f.second)
          throw std::runtime_error("step() reported slot " + std::to_string(s) +
                                   " finished, which does not hold token " + std::to_string(f.second));
        used[s] = false;
        --active;
        const auto t0 = Clock::now();
        const bool ok = decoded_.push(slot_item[s]);
        add_wait(seconds_since(t0));
        if (!ok) return;
      }
      // slots that nothing on its way will fill
      if (opt_.speculate) work_.set_want(cap - active - (work_.popped() - joined));
    }
    decoded_.close();
  }

  // Forget cancelled speculative attempts (called by the stage holding them).
  void drop(const std::vector<WorkItem>& items) {
    if (items.empty()) return;
    {
      py::gil_scoped_acquire gil;
      drop_(tokens_of(items));
    }
    for (const auto& it : items) work_.forget(it.prompt, it.attempt);
    std::lock_guard<std::mutex> lk(stat_mu_);
    dropped_ += static_cast<int64_t>(items.size());
    for (const auto& it : items) wasted_ += it.steps;
  }

  void add_wait(double s) {
    std::lock_guard<std::mutex> lk(stat_mu_);
    denoise_wait_ += s;
  }

  void stage_loop(BoundedQueue& in, BoundedQueue& out, py::object& body, int stage) {
    for (;;) {
      auto batch = in.pop_batch(static_cast<size_t>(opt_.batch), true);
      if (batch.empty()) break;
      std::vector<WorkItem> live_items;
      for (const auto& it : batch)
        if (!opt_.speculate || !work_.cancelled(it.prompt, it.attempt)) live_items.push_back(it);
      if (!live_items.empty()) {
        py::gil_scoped_acquire gil;
        const auto t0 = Clock::now();
        body(tokens_of(live_items));
        add_busy(stage, seconds_since(t0));
      }
      for (const auto& it : batch)
        if (!out.push(it)) return;
    }
    if (!failed()) out.close();
  }

  // Write and journal `batch` (real attempts, in order); whether no prompt is left.
  bool journal(const std::vector<WorkItem>& batch) {
    const auto t0 = Clock::now();
    std::vector<std::pair<int64_t, std::string>> files;
    {
      py::gil_scoped_acquire gil;
      py::list paths = prepare_write_(tokens_of(batch));
      if (static_cast<size_t>(py::len(paths)) != batch.size())
        throw std::runtime_error("prepare_write() must return one path (or None) per token");
      for (size_t i = 0; i < batch.size(); ++i)
        if (!paths[i].is_none()) files.emplace_back(batch[i].token, paths[i].cast<std::string>());
    }
    std::vector<std::function<void()>> jobs;
    for (const auto& f : files) {
      jobs.push_back([this, f] {
        std::string data;
        {
          py::gil_scoped_acquire gil;  // the encoder (Pillow) releases it while compressing
          py::bytes b = encode_image_(f.first);
          data = static_cast<std::string>(b);
        }
        atomic_write_file(f.second, data);
      });
    }
    pool_->run_all(std::move(jobs));
    bool all_settled = false;
    py::gil_scoped_acquire gil;
    auto passed = commit_(tokens_of(batch)).cast<std::vector<bool>>();
    if (passed.size() != batch.size())
      throw std::runtime_error("commit() must return one verdict per token");
    py::list fin;
    for (size_t i = 0; i < batch.size(); ++i) {
      bool last = false;
      fin.append(py::bool_(work_.resolve(batch[i].prompt, batch[i].attempt, passed[i], &last)));
      all_settled = all_settled || last;
    }
    add_busy(4, seconds_since(t0));
    {
      std::lock_guard<std::mutex> lk(stat_mu_);
      attempts_ += static_cast<int64_t>(batch.size());
    }
    done_(tokens_of(batch), fin, live());
    return all_settled;
  }

  void write_loop() {
    // speculative attempts whose predecessor is not journaled yet, by (prompt, attempt)
    std::map<std::pair<int64_t, int>, WorkItem> held;
    for (;;) {
      auto got = written_.pop_batch(static_cast<size_t>(opt_.batch), true);
      if (got.empty()) break;
      bool settled = false;
      while (!got.empty()) {
        std::vector<WorkItem> real, gone;
        for (const auto& it : got) {
          const auto st = opt_.speculate ? work_.status(it.prompt, it.attempt) : WorkQueue::Status::kCommit;
          if (st == WorkQueue::Status::kHold)
            held.emplace(std::make_pair(it.prompt, it.attempt), it);
          else
            (st == WorkQueue::Status::kCommit ? real : gone).push_back(it);
        }
        drop(gone);
        if (!real.empty()) settled = journal(real) || settled;
        // the verdicts just journaled made held attempts real, or cancelled them
        got.clear();
        for (auto h = held.begin(); h != held.end();) {
          if (work_.status(h->first.first, h->first.second) != WorkQueue::Status::kHold) {
            got.push_back(h->second);
            h = held.erase(h);
          } else {
            ++h;
          }
        }
      }
      if (settled) work_.abort();  // wakes the encoder: nothing is left to start
    }
    if (!failed()) work_.abort();
  }

  // Queue depths and occupancy so far (progress bar); GIL held.
  py::dict live() {
    py::dict d;
    d["queued"] = work_.depth();
    d["ready"] = ready_.depth();
    d["decode"] = decoded_.depth();
    d["qc"] = judged_.depth();
    d["write"] = written_.depth();
    d["speculated"] = work_.speculated();
    std::lock_guard<std::mutex> lk(stat_mu_);
    d["speculation_dropped"] = dropped_;
    d["occupancy"] = steps_ ? static_cast<double>(slot_steps_) / (static_cast<double>(steps_) * opt_.capacity) : 0.0;
    return d;
  }

  py::dict stats(double wall) {
    static const char* names[kStages] = {"encode_text", "denoise", "decode", "qc", "write"};
    py::dict busy, depth_max, depth_mean;
    for (int i = 0; i < kStages; ++i) busy[names[i]] = busy_[i];
    const std::pair<const char*, BoundedQueue*> qs[] = {
        {"ready", &ready_}, {"decode", &decoded_}, {"qc", &judged_}, {"write", &written_}};
    for (const auto& q : qs) {
      depth_max[q.first] = q.second->max_depth();
      depth_mean[q.first] = q.second->mean_depth();
    }
    py::dict out;
    out["scheduler"] = "native";
    out["wall_s"] = wall;
    out["capacity"] = opt_.capacity;
    out["queue_capacity"] = opt_.queue_capacity;
    out["steps"] = steps_;
    out["slot_steps"] = slot_steps_;
    out["occupancy"] = steps_ ? static_cast<double>(slot_steps_) / (static_cast<double>(steps_) * opt_.capacity) : 0.0;
    out["denoiser_wait_s"] = denoise_wait_;
    out["attempts"] = attempts_;
    out["retries"] = work_.retries();
    out["busy_s"] = busy;
    out["queue_depth_max"] = depth_max;
    out["queue_depth_mean"] = depth_mean;
    out["speculated"] = work_.speculated();
    out["speculation_kept"] = work_.kept();
    out["speculation_dropped"] = dropped_;
    out["wasted_slot_steps"] = wasted_;
    out["useful_occupancy"] =
        steps_ ? static_cast<double>(slot_steps_ - wasted_) / (static_cast<double>(steps_) * opt_.capacity) : 0.0;
    return out;
  }

  Options opt_;
  WorkQueue work_;
  BoundedQueue ready_, decoded_, judged_, written_;
  py::object encode_, step_, decode_, judge_, prepare_write_, encode_image_, commit_, done_, drop_;
  WritePool* pool_ = nullptr;
  int64_t next_token_ = 0;

  std::mutex err_mu_;
  std::exception_ptr error_;
  std::mutex end_mu_;
  std::condition_variable end_cv_;
  int running_ = 0;

  std::mutex stat_mu_;
  double busy_[kStages] = {0, 0, 0, 0, 0};
  double denoise_wait_ = 0;
  int64_t steps_ = 0, slot_steps_ = 0, attempts_ = 0, dropped_ = 0, wasted_ = 0;
};

py::dict run_pipeline(py::object bodies, const std::vector<std::pair<int64_t, int>>& items,
                      int max_attempts, int capacity, int batch, int queue_capacity,
                      int write_threads, bool speculate) {
  if (max_attempts < 1 || capacity < 1 || batch < 1 || queue_capacity < 1 || write_threads < 1)
    throw py::value_error("max_attempts, capacity, batch, queue_capacity and write_threads must be >= 1");
  if (speculate && !PyCallable_Check(py::getattr(bodies, "drop", py::none()).ptr()))
    throw py::value_error("speculate needs a drop() stage body");
  std::vector<WorkItem> work;
  work.reserve(items.size());
  for (const auto& it : items) work.push_back(WorkItem{-1, it.first, it.second});
  Options opt{max_attempts, capacity, batch, queue_capacity, write_threads, speculate};
  Pipeline p(std::move(bodies), std::move(work), opt);
  return p.run(items.empty());
}

}  // namespace

void register_scheduler(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FileWriteError& e) {
      py::object err = py::module_::import("builtins").attr("OSError")(
          e.code().value(), std::string(e.what()), e.path());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
    }
  });
  m.def("next_attempt", &next_attempt, py::arg("qc_pass"), py::arg("attempt"),
        py::arg("max_attempts"),
        "The retry rule: the next attempt, or -1 when the prompt is settled.");
  m.def("run_pipeline", &run_pipeline, py::arg("bodies"), py::arg("items"),
        py::arg("max_attempts"), py::arg("capacity"), py::arg("batch"),
        py::arg("queue_capacity"), py::arg("write_threads"), py::arg("speculate") = false,
        "Run (prompt, attempt) items through the stage bodies with continuous batching; "
        "returns the run's stage, queue and slot statistics.");
  m.def("atomic_write_file", [](const std::string& path, py::bytes data) {
        std::string d = data;
        py::gil_scoped_release nogil;
        atomic_write_file(path, d);
      }, py::arg("path"), py::arg("data"),
      "Write a file durably (temporary, fsync, rename, fsync of the folder), without the GIL.");
}

}  // namespace rv2
