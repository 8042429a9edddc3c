#pragma once

// The threads that drive elections: one loop thread (timers and the
// elections' state machines) and a small pool for blocking KV calls, shared
// by every election on a connection; plus a one-thread pool per election
// for its callbacks.
//
// Each thread shares its queue state through a shared_ptr, so an owner
// destroyed from one of its own threads (the last reference dropped inside
// a task) detaches that thread safely instead of joining itself.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "clock.h"

namespace leader::detail {

/// One thread running posted tasks and timers in order.
class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void post(std::function<void()> task);
  /// Runs `task` on the loop thread at `when` (steady clock) or soon after.
  std::uint64_t schedule(TimePoint when, std::function<void()> task);
  /// A timer cancelled before it started never runs.
  void cancel(std::uint64_t timer);
  bool in_loop_thread() const noexcept { return std::this_thread::get_id() == thread_.get_id(); }

 private:
  struct State;
  static void run(const std::shared_ptr<State>& state);
  std::shared_ptr<State> state_;
  std::thread thread_;
};

/// A fixed pool of threads running posted tasks; with one thread, a serial
/// executor. The destructor lets queued tasks finish, then joins.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void post(std::function<void()> task);
  bool in_pool_thread() const noexcept;
  /// Drains the queue and joins (idempotent; detaches the calling thread
  /// if it is one of the pool's).
  void shutdown();
  /// Stops taking tasks and lets the threads end by themselves, without
  /// waiting (for a thread that may be stuck in user code). The threads
  /// keep what they need alive; this object may be destroyed at once.
  void shutdown_detached() noexcept;

 private:
  struct State;
  static void run(const std::shared_ptr<State>& state);
  std::shared_ptr<State> state_;
  std::vector<std::thread> threads_;
};

/// A serial executor over a shared pool: tasks posted to one strand run
/// one at a time and in order, on any of the pool's threads; different
/// strands run in parallel. Lets many elections share a few callback
/// threads while each keeps its callbacks in order.
class Strand {
 public:
  explicit Strand(std::shared_ptr<ThreadPool> pool);
  ~Strand();
  Strand(const Strand&) = delete;
  Strand& operator=(const Strand&) = delete;

  /// Ignored after shutdown().
  void post(std::function<void()> task);
  /// True on the thread running one of this strand's tasks.
  bool in_strand() const noexcept;
  /// True while a task runs or waits.
  bool busy() const;
  /// Stops taking tasks, lets the queued ones run and waits for them
  /// (unless called from one of them, which cannot wait for itself).
  void shutdown();

 private:
  struct State;
  static void drain(const std::shared_ptr<State>& state);
  std::shared_ptr<State> state_;
};

/// What a connection owns to drive its elections. Tasks and handlers hold
/// it only weakly, so it dies with its connection on the owner's thread.
/// The I/O pool goes first (its in-flight calls finish, their results find
/// the runtime gone and are dropped), then the loop.
class Runtime {
 public:
  explicit Runtime(int io_threads) : io_(io_threads) {}
  Loop& loop() noexcept { return loop_; }
  ThreadPool& io() noexcept { return io_; }

 private:
  Loop loop_;
  ThreadPool io_;
};

}  // namespace leader::detail
