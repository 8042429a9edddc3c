#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "leader/config.h"
#include "leader/connection.h"
#include "leader/telemetry.h"
#include "leader/types.h"

namespace leader {

namespace detail {
class ElectionDriver;
}  // namespace detail

/// One candidate for one role. Move-only; the destructor stops (and
/// releases) like `stop()` with default options.
///
/// Thread safety: every member may be called from any thread, including
/// from inside this election's own callbacks.
class Election {
 public:
  /// Validates `config` (throws `ConfigError`). Does not touch the network.
  /// `telemetry`: where metrics and logs go (see telemetry.h).
  Election(std::shared_ptr<Connection> connection, Config config, Callbacks callbacks = {},
           Telemetry telemetry = {});
  ~Election();
  Election(Election&&) noexcept;
  Election& operator=(Election&&) noexcept;
  Election(const Election&) = delete;
  Election& operator=(const Election&) = delete;

  /// Opens the bucket (creating it if missing: file or memory storage,
  /// History 1, Replicas and TTL from the config) and starts campaigning.
  /// Throws `leader::Error` if the bucket cannot be opened within
  /// `start_timeout` (e.g. `bucket_mismatch` when an existing bucket's TTL
  /// or storage differs, `jetstream_unavailable`). Calling it again while
  /// running does nothing; after `stop()` it starts a fresh campaign.
  void start();

  /// Ends leadership and campaigning. In order: the term ends locally
  /// (`is_leader()` false, `Term::lost()` true), `on_demote` runs and
  /// returns, then the key is deleted if its revision is still ours (only
  /// with `options.release`, and only if `on_demote` returned within
  /// `options.timeout`). Idempotent; never throws. Called from one of this
  /// election's callbacks it does not wait (it cannot: the callback thread
  /// is busy) and the rest happens after the callback returns.
  void stop(StopOptions options = {}) noexcept;

  /// Gives up leadership (like `stop()` with release) and does not campaign
  /// again for `cooldown`; then campaigns as usual. Does nothing if not
  /// leading. Returns without waiting for the release.
  void step_down(std::chrono::milliseconds cooldown = std::chrono::milliseconds{0});

  /// True while this instance leads and its lease deadline has not passed
  /// (checked against the steady clock on every call). Lock-free.
  bool is_leader() const noexcept;
  /// Waits until this instance leads or `timeout` passes; returns
  /// `is_leader()`.
  bool wait_for_leadership(std::chrono::milliseconds timeout) const;
  /// The current leader's instance id as last seen; nullopt when none is
  /// known; empty when the key holds an unreadable record.
  std::optional<std::string> leader_id() const;
  /// The current term's revision while leading, else nullopt.
  std::optional<std::uint64_t> token() const noexcept;
  /// The current term's fencing token while leading, else nullopt.
  std::optional<FencingToken> fencing_token() const noexcept;

  /// "Am I still the leader of the current term?", answered linearizably:
  /// by a leader-routed read of the key (never a replica's possibly stale
  /// copy), unless a renewal or read confirmed it within `max_staleness`
  /// (the cached mode for hot paths; 0: always read). Blocks for at most
  /// `call_timeout`. False when not leading, when the key is not ours, or
  /// when the answer cannot be had in time (fails closed). A mismatch seen
  /// here demotes the election at once.
  bool validate_token(std::chrono::milliseconds max_staleness = std::chrono::milliseconds{0}) const;
  /// As above, and `token` must be the current term's token.
  bool validate_token(const FencingToken& token,
                      std::chrono::milliseconds max_staleness = std::chrono::milliseconds{0}) const;
  /// A snapshot of the election.
  Status status() const;
  /// The validated configuration, with derived fields filled in.
  const Config& config() const noexcept;

 private:
  std::shared_ptr<detail::ElectionDriver> driver_;
};

}  // namespace leader
