#pragma once

// One watch of a whole bucket shared by many per-key watchers: a
// RoleManager's roles each watch their own key, but the server sees one
// consumer per bucket and process instead of one per role.
//
// The hub keeps the latest entry of every key it has seen. A watcher that
// joins before the bucket watch finished its replay gets its key's entry
// and `replay_done` when the replay ends; one that joins later gets them at
// once; then every new entry of its key, live. When the bucket watch fails,
// every watcher gets the error (and, as with any watch, recreates itself);
// the next watcher to join starts a new bucket watch.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "kv.h"

namespace leader::detail {

class WatchHub : public std::enable_shared_from_this<WatchHub> {
 public:
  explicit WatchHub(std::shared_ptr<KvStore> store) : store_(std::move(store)) {}
  ~WatchHub();
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  /// As KvStore::watch(), served from the bucket watch (started on first
  /// use, or after a failure). Blocks while it starts.
  std::unique_ptr<Watch> watch(const std::string& key, WatchHandler handler, KvResult* error);

  /// Watchers registered now.
  std::size_t watchers() const;
  /// Bucket watches started so far.
  std::uint64_t bucket_watches() const;

 private:
  class KeyWatch;
  struct Watcher {
    std::string key;
    WatchHandler handler;
  };
  void on_event(std::uint64_t generation, const WatchEvent& event);
  void unregister(std::uint64_t id);
  /// Replays `key`'s latest entry (if any) and replay_done; `mu_` held.
  void replay_to(const Watcher& w) const;

  const std::shared_ptr<KvStore> store_;
  std::mutex start_mu_;  // one bucket watch starts at a time
  mutable std::mutex mu_;
  std::unique_ptr<Watch> bucket_watch_;
  std::unique_ptr<Watch> failed_watch_;  // destroyed off the delivery thread
  std::uint64_t generation_ = 0;         // of the current bucket watch
  std::uint64_t started_ = 0;
  bool live_ = false;  // the current bucket watch finished its replay
  std::unordered_map<std::string, KvEntry> latest_;
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, Watcher> watchers_;
  std::unordered_multimap<std::string, std::uint64_t> by_key_;
};

/// A store that forwards everything to `inner` except watch(), which goes
/// through `hub`.
class HubStore final : public KvStore {
 public:
  HubStore(std::shared_ptr<KvStore> inner, std::shared_ptr<WatchHub> hub)
      : inner_(std::move(inner)), hub_(std::move(hub)) {}
  KvResult get(const std::string& key, Duration timeout) override { return inner_->get(key, timeout); }
  KvResult create(const std::string& key, const std::string& value, std::optional<std::uint64_t> last_marker,
                  Duration timeout) override {
    return inner_->create(key, value, last_marker, timeout);
  }
  KvResult update(const std::string& key, const std::string& value, std::uint64_t expected,
                  Duration timeout) override {
    return inner_->update(key, value, expected, timeout);
  }
  KvResult erase(const std::string& key, std::uint64_t expected, Duration timeout) override {
    return inner_->erase(key, expected, timeout);
  }
  std::unique_ptr<Watch> watch(const std::string& key, WatchHandler handler, KvResult* error) override {
    return hub_->watch(key, std::move(handler), error);
  }
  std::unique_ptr<Watch> watch_all(WatchHandler handler, KvResult* error) override {
    return inner_->watch_all(std::move(handler), error);
  }

 private:
  const std::shared_ptr<KvStore> inner_;
  const std::shared_ptr<WatchHub> hub_;
};

}  // namespace leader::detail
