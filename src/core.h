#pragma once

// The election as a deterministic state machine: events in (start, tick, KV
// results, watch events, connection changes, "on_demote returned", stop,
// step-down), actions out (KV calls, watch control, callbacks). No threads,
// no clocks of its own, no I/O: the driver (driver.h) runs the actions and
// feeds the results back; unit tests drive it with natsmock and a fake clock.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "clock.h"
#include "kv.h"
#include "leader/config.h"
#include "leader/types.h"
#include "metrics_sink.h"
#include "record.h"

namespace spdlog {
class logger;
}

namespace leader::detail {

using OpId = std::uint64_t;

enum class OpKind { get, create, update, erase };
const char* to_string(OpKind k) noexcept;

/// Run a KV call on the role's key and report the result with `on_kv_result`.
struct KvCall {
  OpId id = 0;
  OpKind kind = OpKind::get;
  std::string value;                      // create / update
  std::optional<std::uint64_t> expected;  // update / erase: expected revision; create: last marker
  Duration timeout{0};
  std::string key;  // empty: the role's key
};

/// Start (true) or stop (false) the watch on the role's key.
struct WatchControl {
  bool start = true;
};

/// Run a user callback (in order, on the callback thread). A demote must be
/// answered with `on_demote_returned` once the callback has returned.
struct Notify {
  enum class Kind { promote, demote, leader_change, error };
  Kind kind = Kind::error;
  std::uint64_t token = 0;                   // promote
  std::uint64_t epoch = 0;                   // promote
  DemoteReason reason = DemoteReason::lost;  // demote
  std::optional<LeaderInfo> leader;          // leader_change
  ErrorInfo error;                           // error
};

/// The election has fully stopped (after `request_stop`).
struct Finished {};

/// Re-open the bucket (re-creating it if it is gone) and answer with
/// `on_bucket`: its epoch may have changed.
struct RefreshBucket {};

/// Run the health check and answer with `on_health(id, ...)`.
struct HealthCheck {
  std::uint64_t id = 0;
};

using Action = std::variant<KvCall, WatchControl, Notify, Finished, RefreshBucket, HealthCheck>;

class ElectionCore {
 public:
  /// `config` must be validated and resolved. `seed` drives jitter and
  /// nonces (tests pass a fixed one).
  ElectionCore(Config config, std::uint64_t seed, std::shared_ptr<spdlog::logger> logger);
  ~ElectionCore();

  /// Where metrics go (default: nowhere). Must outlive the core.
  void set_metrics(ElectionMetrics* metrics) noexcept { metrics_ = metrics ? metrics : &null_metrics(); }
  /// The bucket's epoch as opened by start() (see OpenResult::epoch).
  void set_epoch(std::uint64_t epoch) noexcept { epoch_ = epoch; }
  /// Whether a health check is configured (then HealthCheck actions come).
  void set_health_enabled(bool enabled) noexcept { health_enabled_ = enabled; }
  /// Observe only: never campaign (the Observer).
  void set_observe_only(bool observe) noexcept { observe_only_ = observe; }

  // Events.
  void start(TimePoint now);
  void on_tick(TimePoint now);
  void on_kv_result(OpId id, const KvResult& result, TimePoint now);
  void on_watch(const WatchEvent& event, TimePoint now);
  void on_connection(ConnectionState state, TimePoint now);
  void on_demote_returned(TimePoint now);
  void request_stop(bool release, Duration timeout, TimePoint now);
  void request_step_down(Duration cooldown, TimePoint now);
  /// The answer to RefreshBucket: the epoch, or the error.
  void on_bucket(std::optional<std::uint64_t> epoch, std::error_code error, const std::string& message,
                 TimePoint now);
  /// The answer to HealthCheck `id`.
  void on_health(std::uint64_t id, bool healthy, TimePoint now);
  /// Renew now (validate_token): a compare-and-swap on our revision either
  /// lands, proving the key ours, or conflicts. Reads can be stale; it cannot.
  void request_renewal();

  // Outputs.
  std::vector<Action> take_actions();
  /// When `on_tick` must be called next; nullopt: no timer pending.
  std::optional<TimePoint> next_wakeup() const;

  // Queries (loop thread only).
  bool running() const noexcept { return running_; }
  /// Term held now (0: none) and its lease deadline.
  std::uint64_t term() const noexcept { return lease_ ? lease_->term : 0; }
  /// The lease deadline, shortened by the disconnect grace while
  /// disconnected.
  TimePoint lease_deadline() const noexcept;
  FencingToken fencing_token() const noexcept {
    return lease_ ? FencingToken{lease_->epoch, lease_->term} : FencingToken{};
  }
  /// The nonce of the current term ("" when not leading).
  std::string lease_nonce() const { return lease_ ? lease_->nonce : std::string(); }
  /// Send time of the last acknowledged renewal: the key was ours then.
  TimePoint validated_at() const noexcept { return lease_ ? lease_->validated_at : TimePoint{}; }
  ElectionState state() const noexcept { return state_; }
  Status status(TimePoint now) const;
  const Config& config() const noexcept { return cfg_; }

 private:
  struct Lease {
    std::uint64_t term = 0;
    std::uint64_t revision = 0;  // latest revision of ours
    std::string nonce;
    std::string acquired_at;
    TimePoint deadline{};
    TimePoint last_send{};
    TimePoint confirmed_at{};  // when we last learned the key was ours
    TimePoint promoted_at{};
    TimePoint validated_at{};  // send time of the last acknowledged renewal (or the create)
    std::uint64_t epoch = 0;
  };
  struct PendingPromotion {  // a won create waiting for the bucket's epoch
    std::uint64_t revision = 0;
    std::string nonce;
    TimePoint sent{};
  };
  struct Confirming {  // a won create on a replicated bucket, being read back
    std::uint64_t revision = 0;
    std::string nonce;
    TimePoint sent{};
    std::uint64_t prior_revision = 0;
    OpId op = 0;
  };
  struct Known {  // newest message of the key we have seen
    std::uint64_t revision = 0;
    EntryOp op = EntryOp::put;
    bool mine = false;
    std::optional<LeaderInfo> holder;
    TimePoint first_seen{};
  };
  // What an op is for, when it is not the plain acquire/renew/read.
  enum class Purpose { normal, release, request, request_read, confirm };
  struct PendingOp {
    Purpose purpose = Purpose::normal;
    OpKind kind = OpKind::get;
    TimePoint sent{};
    TimePoint deadline{};
    std::string nonce;
    std::uint64_t expected = 0;
    bool timed_out = false;
  };
  struct ReleaseTarget {
    std::string nonce;
    std::uint64_t revision = 0;
    std::string handover_value;  // set: write this record over ours instead of deleting
  };

  // Sending.
  OpId send(OpKind kind, std::string value, std::optional<std::uint64_t> expected, std::string nonce,
            TimePoint now, TimePoint deadline);
  OpId send_on(const std::string& key, Purpose purpose, OpKind kind, std::string value,
               std::optional<std::uint64_t> expected, std::string nonce, TimePoint now, TimePoint deadline);
  void send_create(TimePoint now);
  void send_handover_request(const std::optional<KvEntry>& existing, TimePoint now);
  void on_request_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_request_read(const KvResult& r, TimePoint now);
  void send_renew(TimePoint now);
  void send_read(TimePoint now);
  void queue_release(const std::string& nonce, std::uint64_t revision, TimePoint now);
  void pump_release(TimePoint now);

  // Results.
  void on_create_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_renew_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_read_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_erase_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_confirm_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void abandon_confirmation(const std::string& why, TimePoint now);
  void on_op_timeout(OpId id, PendingOp& op, TimePoint now);

  // Knowledge.
  void observe(const KvEntry& entry, TimePoint now, std::optional<TimePoint> read_sent);
  void observe_absent(TimePoint now, TimePoint read_sent);
  void follow(const KvEntry& entry, const std::optional<Record>& record, TimePoint now);
  void no_leader(TimePoint now);
  void report_leader(const std::optional<LeaderInfo>& leader);

  // Transitions.
  void try_promote(std::uint64_t revision, const std::string& nonce, TimePoint sent, TimePoint now,
                   std::uint64_t prior_revision);
  void promote_with_epoch(std::uint64_t revision, const std::string& nonce, TimePoint sent, TimePoint now,
                          std::uint64_t prior_revision);
  void become_leader(std::uint64_t revision, const std::string& nonce, TimePoint sent, TimePoint now);
  void request_refresh();
  void health_result(bool healthy, TimePoint now);
  /// `code`: what the breaker's error reports when this failure opens it.
  void count_acquire_failure(TimePoint now, const std::string& what,
                             std::error_code code = make_error_code(Errc::other));
  /// Opens the breaker at once: an answer that retrying cannot change.
  void open_breaker(TimePoint now, const std::string& why, std::error_code code);
  void demote(DemoteReason reason, bool release, TimePoint now);
  void after_release(TimePoint now);
  void maybe_finish(TimePoint now);
  void finish(TimePoint now);
  void ensure_progress(TimePoint now);
  void campaign_now(TimePoint now, bool with_jitter);
  void set_state(ElectionState s);

  // Helpers.
  bool can_campaign(TimePoint now) const;
  Duration backoff(int failures);
  Duration jitter();
  std::string new_nonce();
  std::string make_record(const std::string& nonce, std::uint64_t term, const std::string& acquired_at) const;
  void error(std::error_code code, std::string message);
  void remember_ended(const std::string& nonce);
  bool is_ended(const std::string& nonce) const;
  std::string who() const;

  Config cfg_;
  std::mt19937_64 rng_;
  std::shared_ptr<spdlog::logger> log_;
  ElectionMetrics* metrics_ = &null_metrics();
  std::vector<Action> actions_;

  bool running_ = false;
  ElectionState state_ = ElectionState::stopped;
  ConnectionState connection_ = ConnectionState::connected;

  // Stop / step-down.
  bool stopping_ = false;
  bool stop_release_ = true;
  TimePoint stop_deadline_{};
  TimePoint cooldown_until_{};

  // Leadership.
  std::optional<Lease> lease_;
  bool demote_pending_ = false;  // on_demote emitted, not yet returned
  std::optional<TimePoint> last_renewal_;
  TimePoint next_renew_at_{};
  bool urgent_renew_ = false;
  int renew_failures_ = 0;

  // Following / campaigning.
  std::optional<Known> known_;
  std::uint64_t newest_rev_ = 0;
  TimePoint newest_rev_at_{};
  std::optional<TimePoint> acquire_at_;
  TimePoint not_before_{};  // no create before this (a vanished holder's lease may still run)
  int acquire_failures_ = 0;
  int expiry_retries_ = 0;
  std::optional<LeaderInfo> reported_leader_;
  std::optional<TimePoint> gone_since_;  // when the last holder was known gone (failover metric)
  bool leader_reported_ = false;

  // In-flight work.
  OpId next_op_ = 1;
  std::map<OpId, PendingOp> ops_;
  std::optional<OpId> create_op_, renew_op_, read_op_, erase_op_;
  std::deque<ReleaseTarget> release_queue_;
  int erase_attempts_ = 0;
  TimePoint erase_retry_at_{};

  // Reconciliation by nonce.
  std::map<std::string, TimePoint> unresolved_creates_;  // nonce -> send time
  std::deque<std::string> ended_nonces_;

  // Watch.
  bool watch_active_ = false;
  std::optional<TimePoint> watch_retry_at_;
  int watch_failures_ = 0;

  ErrorInfo last_error_;

  // Fencing epoch.
  std::uint64_t epoch_ = 0;
  bool refresh_pending_ = false;
  std::optional<PendingPromotion> pending_promotion_;
  // Replicated buckets (nats-server issue 4320: the expected-last-subject-
  // sequence check is a pre-check outside Raft, so two creates of one key
  // can both be acknowledged, more so around a stream-leader change): a won create leads only
  // once a leader-routed read shows it as the key's latest message.
  std::optional<Confirming> confirming_;

  // Disconnect grace and validation. With memory storage on one replica a
  // server restart loses the bucket at once and another candidate can lead
  // within milliseconds, so no grace: the role ends with the connection.
  Duration disconnect_grace_{0};
  std::optional<TimePoint> grace_deadline_;
  TimePoint next_validation_at_{};

  // Health.
  bool health_enabled_ = false;
  bool healthy_ = true;
  int health_failures_ = 0;
  std::uint64_t health_id_ = 0;
  std::optional<TimePoint> health_deadline_;
  TimePoint next_health_at_{};

  // Circuit breaker over acquire attempts.
  int breaker_failures_ = 0;
  int conflicts_without_holder_ = 0;  // creates answered "conflict" since a holder was last seen

  bool observe_only_ = false;

  // Priority handover.
  std::string request_key_;
  std::optional<OpId> request_op_, request_read_op_;
  std::optional<TimePoint> request_sent_at_;
};

}  // namespace leader::detail
