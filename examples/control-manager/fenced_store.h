#pragma once

// The downstream resource of the control-manager example: one key in a KV
// bucket of its own that the reconcile loop writes its result to, guarded
// by the fencing token of the writer's term. The key holds the highest token
// it ever accepted; a write carrying a lower token (a stale leader's) is
// rejected, and compare-and-swap on the key's revision makes "check the
// highest token, then write" atomic.
//
// This file is application code: it talks to NATS through nats.c directly,
// on a connection of its own (a downstream system is not the election's).

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "leader/connection.h"
#include "leader/fencing.h"

namespace control_manager {

/// The fencing rule of a downstream resource: a write carrying `mine` is
/// accepted unless the resource already accepted a higher token. Tokens
/// compare lexicographically, epoch first: after the election bucket was
/// re-created (a new epoch, revisions restarting at 1), a token of the new
/// epoch wins over any token of the old one however high its revision.
/// An equal token is the same term writing again.
inline bool write_allowed(const leader::FencingToken& mine,
                          const std::optional<leader::FencingToken>& highest) {
  return !highest || !(*highest > mine);
}

/// What one `FencedStore::write` did.
struct WriteOutcome {
  enum class Kind {
    /// Written: the key now holds `mine` and count `n`.
    written,
    /// Rejected: the key holds the higher token `highest`; the caller is a
    /// stale leader and must stop writing for this term.
    fenced,
    /// Not written (or unknown: a timed-out write may still land, which is
    /// safe, as the compare-and-swap it carries still applies); `error`
    /// says why. Retry later.
    failed,
  };
  Kind kind = Kind::failed;
  /// written: the count the key now holds.
  std::uint64_t n = 0;
  /// written: the key's new revision.
  std::uint64_t revision = 0;
  /// fenced: the token the key holds.
  leader::FencingToken highest;
  /// failed: what went wrong, for a person.
  std::string error;
};

/// The state key: `<bucket>/<key>`, created (with its bucket) if missing.
/// Its value is JSON:
///   {"token":"<epoch>.<revision>","holder":"<id>","n":<count>,
///    "nonce":"<unique per write>","at_ms":<unix ms of the write>}
/// `n` counts the writes accepted over all terms. Not thread-safe: one
/// writer thread per store.
class FencedStore {
 public:
  struct Options {
    /// NATS server URL(s), comma-separated.
    std::string url;
    /// Credentials and TLS, the election connection's (the fields from
    /// `user` on are used).
    leader::ConnectionOptions security;
    /// Connection name shown by the server.
    std::string name = "control-manager state";
    /// The state bucket; created (file storage, one replica, no TTL) when
    /// it does not exist; an existing bucket is used as it is.
    std::string bucket;
    /// The state key (the role name).
    std::string key;
    /// Written into each record as "holder".
    std::string holder;
    /// Bound of each read and write (nats.c's own timeouts; a hung server
    /// can hold a call somewhat longer).
    std::chrono::milliseconds timeout{1000};
    /// How many read-check-write attempts one write makes while each loses
    /// a compare-and-swap race to another writer, before it gives up
    /// (failed).
    int max_attempts = 8;
  };

  /// Connects and opens (or creates) the bucket. Throws std::runtime_error,
  /// or leader::ConfigError / leader::Error for bad credentials or TLS
  /// options.
  static std::unique_ptr<FencedStore> open(const Options& options);
  ~FencedStore();
  FencedStore(const FencedStore&) = delete;
  FencedStore& operator=(const FencedStore&) = delete;

  /// One fenced write: reads the key with its revision (a read routed to
  /// the stream leader), rejects if it holds a token above `mine`, else
  /// writes the next record with compare-and-swap on the revision read
  /// (create-if-absent when there is none); on a lost race, re-reads and
  /// checks again.
  WriteOutcome write(const leader::FencingToken& mine);

  struct Impl;

 private:
  explicit FencedStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace control_manager
