#include "runtime.h"

namespace leader::detail {
namespace {

void join_or_detach(std::thread& t) {
  if (!t.joinable()) return;
  if (t.get_id() == std::this_thread::get_id()) {
    t.detach();
  } else {
    t.join();
  }
}

}  // namespace

struct Loop::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> tasks;
  std::multimap<TimePoint, std::pair<std::uint64_t, std::function<void()>>> timers;
  std::unordered_map<std::uint64_t, decltype(timers)::iterator> index;
  std::uint64_t next_timer = 1;
  bool stop = false;
};

Loop::Loop() : state_(std::make_shared<State>()), thread_([s = state_] { run(s); }) {}

Loop::~Loop() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->cv.notify_all();
  join_or_detach(thread_);
}

void Loop::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->tasks.push_back(std::move(task));
  }
  state_->cv.notify_one();
}

std::uint64_t Loop::schedule(TimePoint when, std::function<void()> task) {
  std::uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    id = state_->next_timer++;
    auto it = state_->timers.emplace(when, std::make_pair(id, std::move(task)));
    state_->index.emplace(id, it);
  }
  state_->cv.notify_one();
  return id;
}

void Loop::cancel(std::uint64_t timer) {
  std::function<void()> victim;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(state_->mu);
  auto it = state_->index.find(timer);
  if (it == state_->index.end()) return;
  victim = std::move(it->second->second.second);
  state_->timers.erase(it->second);
  state_->index.erase(it);
}

void Loop::run(const std::shared_ptr<State>& s) {
  std::unique_lock<std::mutex> lock(s->mu);
  while (true) {
    std::function<void()> task;
    if (!s->tasks.empty()) {
      task = std::move(s->tasks.front());
      s->tasks.pop_front();
    } else if (s->stop) {
      return;
    } else if (!s->timers.empty() && s->timers.begin()->first <= SteadyClock::now()) {
      const auto first = s->timers.begin();
      task = std::move(first->second.second);
      s->index.erase(first->second.first);
      s->timers.erase(first);
    } else if (!s->timers.empty()) {
      s->cv.wait_until(lock, s->timers.begin()->first);
      continue;
    } else {
      s->cv.wait(lock);
      continue;
    }
    lock.unlock();
    task();
    task = nullptr;  // captures die outside the lock
    lock.lock();
  }
}

struct ThreadPool::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> tasks;
  bool stop = false;
};

ThreadPool::ThreadPool(int threads) : state_(std::make_shared<State>()) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([s = state_] { run(s); });
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::shutdown() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->cv.notify_all();
  for (auto& t : threads_) join_or_detach(t);
}

void ThreadPool::shutdown_detached() noexcept {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
    state_->tasks.clear();
  }
  state_->cv.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.detach();
  }
}

bool ThreadPool::in_pool_thread() const noexcept {
  for (const auto& t : threads_) {
    if (t.get_id() == std::this_thread::get_id()) return true;
  }
  return false;
}

void ThreadPool::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->tasks.push_back(std::move(task));
  }
  state_->cv.notify_one();
}

void ThreadPool::run(const std::shared_ptr<State>& s) {
  std::unique_lock<std::mutex> lock(s->mu);
  while (true) {
    s->cv.wait(lock, [&s] { return s->stop || !s->tasks.empty(); });
    if (s->tasks.empty()) return;  // stopping and drained
    auto task = std::move(s->tasks.front());
    s->tasks.pop_front();
    lock.unlock();
    task();
    task = nullptr;
    lock.lock();
  }
}

struct Strand::State {
  std::shared_ptr<ThreadPool> pool;
  mutable std::mutex mu;
  std::condition_variable idle;
  std::deque<std::function<void()>> tasks;
  bool scheduled = false;  // a drain is queued on the pool or running
  bool stopped = false;
};

namespace {
// The strand whose task runs on this thread, if any.
thread_local const void* current_strand = nullptr;
// Tasks one drain runs before it yields its pool thread to other strands.
constexpr int kStrandBatch = 16;
}  // namespace

Strand::Strand(std::shared_ptr<ThreadPool> pool) : state_(std::make_shared<State>()) {
  state_->pool = std::move(pool);
}

Strand::~Strand() { shutdown(); }

void Strand::post(std::function<void()> task) {
  bool schedule = false;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->stopped) return;
    state_->tasks.push_back(std::move(task));
    schedule = !state_->scheduled;
    state_->scheduled = true;
  }
  if (schedule) state_->pool->post([s = state_] { drain(s); });
}

void Strand::drain(const std::shared_ptr<State>& s) {
  const void* outer = current_strand;
  current_strand = s.get();
  for (int n = 0; n < kStrandBatch; ++n) {
    std::function<void()> task;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->tasks.empty()) {
        s->scheduled = false;
        s->idle.notify_all();
        current_strand = outer;
        return;
      }
      task = std::move(s->tasks.front());
      s->tasks.pop_front();
    }
    task();
  }
  current_strand = outer;
  // More to do: go to the back of the pool's queue, behind other strands.
  s->pool->post([s] { drain(s); });
}

bool Strand::in_strand() const noexcept { return current_strand == state_.get(); }

bool Strand::busy() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->scheduled;
}

void Strand::shutdown() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->stopped = true;
  if (in_strand()) return;
  state_->idle.wait(lock, [this] { return !state_->scheduled; });
}

}  // namespace leader::detail
