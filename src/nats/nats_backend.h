#pragma once

// The nats.c implementation of the KV boundary (kv.h). This header does not
// include nats.h; only the .cpp files under src/nats/ do.
//
// Threads: watch messages arrive on nats.c's global message delivery pool
// (shared by every watch of the process), connection events and watch
// errors on nats.c's callback thread, so a watch costs a subscription (an
// ordered push consumer), never a thread. One extra thread per connection,
// started on first need, delivers replay_done for keys without messages
// and re-checks replays whose last message expired before delivery. A
// handler never runs on the thread calling watch(). Handlers of one watch
// never run concurrently; ~Watch waits for a running one (except when called
// from that handler), so never hold a lock that a handler or state listener
// takes while calling watch(), destroying a Watch or unsubscribe_state().
//
// Watches: the replay is the key's latest message (or nothing), ended by
// replay_done. Afterwards every message is delivered in revision order, but
// with History 1 a message superseded before the consumer sent it is gone
// from the stream, so back-to-back writes may skip revisions; the latest is
// always delivered. A watch reports one error and then nothing more on a
// subscription error (missed heartbeats, slow consumer), after a reconnect
// (messages may have been lost) and when the connection closes: recreate
// it. Expiry (TTL) produces no event. Creating a watch takes up to 5 s.
//
// Calls while the client is not connected fail at once as `disconnected`
// instead of queuing a request into the reconnect buffer.
//
// Lifetimes: the backend, its KvStores and their Watches share the nats.c
// handles through reference counts, so any destruction order is memory
// safe. Destroying the backend closes the connection: calls on stores that
// are still alive then return `closed`, and live watches get one
// `WatchEvent::Kind::error` (closed). The recommended order is watches, then
// stores, then the backend; none of them may be destroyed from a watch
// handler or a state listener other than the watch itself.
//
// Adopted connections (make_adopted_nats_backend) behave the same, except:
// the application owns the connection and its callbacks, so the state
// comes from polling (natsConnection_Status and the reconnect counter,
// every `state_poll`, on the extra thread above, which then always runs):
// listeners and watches learn of a change up to one poll later, and later
// still while that thread runs a replay re-check (a read of at most 1 s).
// Watches that dropped messages (slow consumer) fail at the next poll too;
// missed heartbeats reach the application's error handler (if it has one),
// never the watch. Whether watch handlers share a delivery pool or get a
// thread per subscription is the application's connection option.
// Destroying the backend leaves the connection open: stores that are left
// return `closed` and live watches get one error (closed) at the next poll.

#include <chrono>
#include <memory>
#include <string>
#include <system_error>

#include "kv.h"
#include "leader/connection.h"

// nats.c's connection, declared exactly as nats.h does (which only the
// files under src/nats/ include).
typedef struct __natsConnection natsConnection;

namespace leader::detail {

/// Connects to `options.url` (comma-separated URLs of a cluster) and creates
/// a JetStream context. Connection settings: name, connect timeout,
/// reconnect wait and ping interval from `options`; reconnects forever; 2
/// pings outstanding; no retry of a failed initial connect; watch handlers
/// run on nats.c's global delivery pool.
///
/// Returns nullptr on failure and sets `*error` (a `leader::Errc`:
/// disconnected when no server could be reached, timeout, permission_denied,
/// or other) and `*message` (names the URL and the client's reason). Either
/// pointer may be null. Never throws.
std::shared_ptr<Backend> make_nats_backend(const ConnectionOptions& options, std::error_code* error,
                                           std::string* message);

/// Uses `nc`, a connection the application created and keeps: creates a
/// JetStream context on it and learns its state by polling every
/// `state_poll`. Installs and replaces no callback of the connection, and
/// never closes or destroys it (the JetStream context keeps its memory
/// valid until the backend, its stores and watches are gone, even if the
/// application destroys it first; then they see `closed`). `options` is not
/// used: the connection's settings are the application's.
///
/// Returns nullptr on failure and sets `*error` (`closed` for a closed
/// connection, else `other`) and `*message`. Either pointer may be null.
/// Never throws.
std::shared_ptr<Backend> make_adopted_nats_backend(natsConnection* nc, const ConnectionOptions& options,
                                                   std::chrono::milliseconds state_poll,
                                                   std::error_code* error, std::string* message);

}  // namespace leader::detail
