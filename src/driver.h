#pragma once

// Binds an ElectionCore to the threads: events are posted to the
// connection's loop thread (the only thread that touches the core), KV calls
// run on the connection's I/O pool, callbacks on the election's own serial
// executor. The lease (for is_leader() and Term::lost()) and a status
// snapshot are published for any thread to read.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "core.h"
#include "kv.h"
#include "leader/connection.h"
#include "leader/telemetry.h"
#include "leader/types.h"
#include "lease_state.h"
#include "metrics_sink.h"
#include "runtime.h"

namespace leader::detail {

/// What a driver may share with other drivers (a RoleManager's roles).
/// Everything null/empty: a standalone election with threads of its own.
struct DriverShared {
  /// Runs the callbacks (through a strand per driver); null: one thread of
  /// the driver's own.
  std::shared_ptr<ThreadPool> callback_pool;
  /// Runs health checks; null: one thread of the driver's own when the
  /// election has a check.
  std::shared_ptr<ThreadPool> health_pool;
  /// Wraps every store the driver opens (the RoleManager's shared watch).
  std::function<std::shared_ptr<KvStore>(std::shared_ptr<KvStore>)> wrap_store;
};

class ElectionDriver : public std::enable_shared_from_this<ElectionDriver> {
 public:
  /// `config` must be validated and resolved. `metrics` (optional) must be
  /// thread-safe: the loop and the callback thread report to it.
  /// `observe_only`: never campaign (Observer). `requested_grace`: the
  /// disconnect_grace as configured, to warn when it was clamped.
  ElectionDriver(std::shared_ptr<Connection> connection, Config config, Callbacks callbacks,
                 Telemetry telemetry = {}, std::shared_ptr<ElectionMetrics> metrics = nullptr,
                 bool observe_only = false, std::chrono::milliseconds requested_grace = {},
                 DriverShared shared = {});
  ~ElectionDriver();

  /// Opens the bucket (or uses `opened`, a successful open_bucket() of the
  /// config's bucket) and starts campaigning. Throws leader::Error.
  void start(std::optional<OpenResult> opened = std::nullopt);
  void stop(const StopOptions& options) noexcept;
  /// The first half of stop(): asks for the stop and returns at once.
  /// Returns what to pass to wait_stopped(), or nullopt if not running.
  std::optional<std::uint64_t> begin_stop(const StopOptions& options) noexcept;
  /// The second half: waits (bounded by the options' timeout plus a call)
  /// until the stop begun with `ticket` finished.
  void wait_stopped(std::uint64_t ticket, const StopOptions& options) noexcept;
  /// True on the thread running one of this election's callbacks.
  bool in_callback() const noexcept { return callback_strand_.in_strand(); }
  void step_down(std::chrono::milliseconds cooldown);
  /// stop() plus: no callback runs after this returns (unless called from
  /// a callback, which cannot wait for itself).
  void shutdown() noexcept;

  bool is_leader() const noexcept { return lease_->leading(); }
  bool wait_for_leadership(std::chrono::milliseconds timeout) const;
  std::optional<std::uint64_t> token() const noexcept;
  std::optional<FencingToken> fencing_token() const noexcept;
  bool validate_token(const std::optional<FencingToken>& token, std::chrono::milliseconds max_staleness);
  Status status() const;
  const Config& config() const noexcept { return config_; }

 private:
  using Event = std::function<void(TimePoint)>;
  /// Runs `event` on the loop thread, then the core's actions.
  void post(Event event);
  void step(const Event& event);
  void execute(Action& action);
  void run_call(const KvCall& call);
  void start_watch();
  void stop_watch();
  void notify(const Notify& n);
  void refresh_bucket();
  void run_health_check(std::uint64_t id);
  void publish();
  void rearm();
  std::shared_ptr<KvStore> wrap(std::shared_ptr<KvStore> store) const;

  const std::shared_ptr<Connection> connection_;
  const std::shared_ptr<Runtime> runtime_;
  const Config config_;
  const Callbacks callbacks_;
  const std::shared_ptr<LeaseState> lease_ = std::make_shared<LeaseState>();
  std::shared_ptr<spdlog::logger> log_;
  std::shared_ptr<ElectionMetrics> metrics_;
  const DriverShared shared_;
  std::shared_ptr<ThreadPool> own_callback_thread_;  // standalone only
  Strand callback_strand_;
  std::shared_ptr<ThreadPool> health_pool_;  // only with a health check
  bool own_health_thread_ = false;
  std::shared_ptr<std::atomic<bool>> health_running_ = std::make_shared<std::atomic<bool>>(false);

  // Loop thread only.
  ElectionCore core_;
  std::shared_ptr<KvStore> store_;
  std::shared_ptr<Watch> watch_;
  std::uint64_t watch_generation_ = 0;
  std::uint64_t timer_ = 0;
  std::optional<TimePoint> timer_at_;

  std::uint64_t state_listener_ = 0;
  bool state_subscribed_ = false;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  Status status_;
  TimePoint status_at_{};
  std::string lease_nonce_;
  TimePoint validated_at_{};
  bool running_ = false;  // between start() and the core's Finished
  std::uint64_t finished_count_ = 0;
};

/// The bucket `config` asks for.
BucketSpec bucket_spec(const Config& config);

/// Opens the config's bucket through the connection's I/O pool, bounded by
/// start_timeout. Throws leader::Error.
OpenResult open_bucket_or_throw(const Connection& connection, const Config& config);

/// Validates `config`, builds the metrics (when a registry is given) and
/// the driver. Throws ConfigError.
std::shared_ptr<ElectionDriver> make_driver(std::shared_ptr<Connection> connection, Config config,
                                            Callbacks callbacks, Telemetry telemetry, bool observe_only,
                                            DriverShared shared = {});
/// shutdown(), then drops the driver on this thread (see election.cpp).
void release_driver(std::shared_ptr<ElectionDriver>& driver) noexcept;

}  // namespace leader::detail
