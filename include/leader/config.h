#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace leader {

/// Storage of the bucket's stream. File storage keeps revisions (and so
/// fencing tokens) increasing across server restarts; memory storage does not.
enum class Storage { file, memory };

/// Configuration of one election (one role in one bucket).
///
/// Fields left at zero where the comment says "0: derived" take a value
/// derived from `ttl`. `validate()` (called by `Election`'s constructor)
/// checks the resolved values and throws `ConfigError` naming the field,
/// the value and the rule. No duration may be negative; one not marked
/// "0: derived" or "0: off" must be positive unless its range starts at 0.
struct Config {
  /// KV bucket holding the roles. Letters, digits, '-' and '_' only,
  /// 1..64 characters. Default "leaders".
  std::string bucket = "leaders";
  /// The role (election group): a key of the bucket. Letters, digits and
  /// `- _ = / .`, 1..256 characters, not starting or ending with '.',
  /// no "..", not starting with "_leader." (reserved). Required.
  std::string role;
  /// This candidate's identity, shown to the other candidates: 1..128
  /// bytes of valid UTF-8 without control characters (U+0000..U+001F,
  /// U+007F..U+009F). Required; unique per process.
  std::string instance_id;

  /// Lease length: the bucket's MaxAge. A crashed leader is replaced about
  /// `ttl` after its last renewal. All roles of a bucket share it; an
  /// existing bucket with another TTL is an error. 100 ms .. 24 h.
  /// Default 10 s.
  std::chrono::milliseconds ttl{10000};
  /// How often the leader renews. 0: derived as ttl / 5. Must leave two
  /// renewals inside the usable lease: heartbeat <= ttl / 3 and
  /// heartbeat <= (ttl - safety_margin) / 2.
  std::chrono::milliseconds heartbeat_interval{0};
  /// The leader considers itself leader only until
  /// (send time of its last successful renewal) + ttl - safety_margin.
  /// Covers clock-rate drift and the time leader-only work needs to notice
  /// `Term::lost()`. 0: derived as ttl / 20 (at least 1 ms). At most ttl / 3.
  std::chrono::milliseconds safety_margin{0};
  /// Deadline of each KV call the library makes (it never trusts the
  /// client's own). 0: derived as heartbeat_interval / 2 (at least 1 ms).
  /// Must be below ttl - safety_margin.
  std::chrono::milliseconds call_timeout{0};
  /// A follower that sees the key deleted waits a random 0..acquire_jitter
  /// before it tries to acquire, to spread a herd. The compare-and-swap
  /// already keeps the race safe. 0 .. ttl / 10. Default 5 ms.
  std::chrono::milliseconds acquire_jitter{5};
  /// First retry delay after a transient failure (timeout, no responders,
  /// disconnected); doubles per failure with full jitter. Positive, at most
  /// 1 h. Default 20 ms.
  std::chrono::milliseconds retry_initial{20};
  /// Cap of the retry delay. 0: derived as heartbeat_interval. At least
  /// retry_initial, at most ttl.
  std::chrono::milliseconds retry_max{0};
  /// How long `start()` waits to open (or create) the bucket. Positive, at
  /// most 24 h. Default 5 s.
  std::chrono::milliseconds start_timeout{5000};

  /// While disconnected from NATS a leader keeps its role for this long,
  /// never past its lease deadline (a longer value is clamped to
  /// ttl - safety_margin, with a warning at start). On reconnect it reads
  /// the key (leader-routed) and demotes unless it still holds it.
  /// 0: derived as ttl - safety_margin (the lease decides).
  std::chrono::milliseconds disconnect_grace{0};
  /// While leading, also validate the key with a leader-routed read this
  /// often, and demote on a mismatch (validate-or-demote); renewals
  /// validate too. 0: off; else 10 ms .. 24 h.
  std::chrono::milliseconds validation_interval{0};
  /// Bound of one health check run. 0: derived as heartbeat_interval / 2
  /// (at least 1 ms). At most ttl.
  std::chrono::milliseconds health_timeout{0};
  /// After this many failed health checks in a row the leader steps down
  /// (releasing the key) and the instance does not campaign until a check
  /// passes again. 1..1000. Default 3.
  int max_health_failures = 3;
  /// After this many failed acquire attempts in a row (errors, not a key
  /// held by someone else) campaigning pauses for `breaker_open`, then one
  /// probe is let through (half-open). 1..1000. Default 5.
  int breaker_threshold = 5;
  /// How long the breaker stays open. 0: derived as ttl. At most 1 h.
  std::chrono::milliseconds breaker_open{0};

  /// Storage used when `start()` creates the bucket; an existing bucket
  /// with other storage is an error. Default file.
  Storage storage = Storage::file;
  /// Replicas used when `start()` creates the bucket (1..5). Default 1;
  /// R3 is recommended for production.
  int replicas = 1;
  /// Priority stored in the record (-1000000..1000000). Default 0. With
  /// `priority_handover`, a higher priority takes the role over.
  int priority = 0;
  /// A follower whose priority is higher than the leader's asks it to hand
  /// over (a request in the key `_leader.handover.<role>`); the leader, at
  /// its next renewal, ends its term (on_demote returns first) and writes
  /// the role's key over to the requester with a compare-and-swap. Never an
  /// overwrite of a live lease. Default false.
  bool priority_handover = false;
  /// Free-form metadata stored in the record, shown to other candidates
  /// and operators. At most 4096 bytes of keys and values together; never
  /// put secrets here.
  std::map<std::string, std::string> metadata;

  /// Checks every field; throws `ConfigError` on the first violation.
  void validate() const;
  /// Returns a copy with every "0: derived" field filled in.
  Config resolved() const;
};

/// Parses durations like "3s", "500ms", "1m", "2h" (a non-negative
/// integer and a unit; "0" alone needs none). Throws `ConfigError` with
/// `field` on bad input.
std::chrono::milliseconds parse_duration(const std::string& text, const std::string& field = "duration");

}  // namespace leader
