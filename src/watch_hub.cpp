#include "watch_hub.h"

#include <utility>
#include <vector>

namespace leader::detail {

class WatchHub::KeyWatch final : public Watch {
 public:
  KeyWatch(std::weak_ptr<WatchHub> hub, std::uint64_t id) : hub_(std::move(hub)), id_(id) {}
  ~KeyWatch() override {
    if (auto hub = hub_.lock()) hub->unregister(id_);
  }

 private:
  std::weak_ptr<WatchHub> hub_;
  std::uint64_t id_;
};

WatchHub::~WatchHub() {
  // Destroyed outside mu_: a bucket watch's destructor waits for its
  // handler, which takes mu_ (through a weak reference that no longer
  // locks, but the wait itself must not hold the lock).
  std::unique_ptr<Watch> current;
  std::unique_ptr<Watch> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current = std::move(bucket_watch_);
    failed = std::move(failed_watch_);
  }
}

std::unique_ptr<Watch> WatchHub::watch(const std::string& key, WatchHandler handler, KvResult* error) {
  std::lock_guard<std::mutex> start(start_mu_);
  std::unique_ptr<Watch> failed;
  std::uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed = std::move(failed_watch_);
    if (!bucket_watch_) {
      generation = ++generation_;
      live_ = false;
      latest_.clear();
    }
  }
  failed.reset();
  if (generation != 0) {
    std::unique_ptr<Watch> w = store_->watch_all(
        [weak = weak_from_this(), generation](const WatchEvent& ev) {
          if (auto hub = weak.lock()) hub->on_event(generation, ev);
        },
        error);
    if (!w) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    ++started_;
    if (generation_ != generation) {
      // It failed while starting: the error reached no watcher of ours.
      failed_watch_ = std::move(w);
      if (error != nullptr) {
        error->outcome = KvOutcome::other;
        error->message = "the bucket watch failed while starting";
      }
      return nullptr;
    }
    bucket_watch_ = std::move(w);
  }
  std::lock_guard<std::mutex> lock(mu_);
  const std::uint64_t id = next_id_++;
  Watcher& w = watchers_.emplace(id, Watcher{key, std::move(handler)}).first->second;
  by_key_.emplace(key, id);
  if (live_) replay_to(w);
  return std::make_unique<KeyWatch>(weak_from_this(), id);
}

void WatchHub::replay_to(const Watcher& w) const {
  auto it = latest_.find(w.key);
  if (it != latest_.end()) {
    WatchEvent ev;
    ev.kind = WatchEvent::Kind::entry;
    ev.entry = it->second;
    w.handler(ev);
  }
  WatchEvent done;
  done.kind = WatchEvent::Kind::replay_done;
  w.handler(done);
}

void WatchHub::on_event(std::uint64_t generation, const WatchEvent& event) {
  std::lock_guard<std::mutex> lock(mu_);
  if (generation != generation_) return;
  switch (event.kind) {
    case WatchEvent::Kind::entry: {
      KvEntry& latest = latest_[event.entry.key];
      if (event.entry.revision <= latest.revision) return;
      latest = event.entry;
      if (!live_) return;
      auto [first, last] = by_key_.equal_range(event.entry.key);
      for (auto it = first; it != last; ++it) watchers_.at(it->second).handler(event);
      return;
    }
    case WatchEvent::Kind::replay_done:
      if (live_) return;
      live_ = true;
      for (const auto& [id, w] : watchers_) replay_to(w);
      return;
    case WatchEvent::Kind::error:
      for (const auto& [id, w] : watchers_) w.handler(event);
      // Every watcher is done with this watch; their handles unregister
      // nothing. The next watch() starts a new bucket watch.
      watchers_.clear();
      by_key_.clear();
      failed_watch_ = std::move(bucket_watch_);
      ++generation_;
      live_ = false;
      latest_.clear();
      return;
  }
}

void WatchHub::unregister(std::uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto w = watchers_.find(id);
  if (w == watchers_.end()) return;  // ended by an error already
  auto [first, last] = by_key_.equal_range(w->second.key);
  for (auto it = first; it != last; ++it) {
    if (it->second == id) {
      by_key_.erase(it);
      break;
    }
  }
  watchers_.erase(w);
}

std::size_t WatchHub::watchers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return watchers_.size();
}

std::uint64_t WatchHub::bucket_watches() const {
  std::lock_guard<std::mutex> lock(mu_);
  return started_;
}

}  // namespace leader::detail
