#include "core.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace leader::detail {
namespace {

constexpr std::size_t kMaxRemembered = 32;
constexpr int kMaxEraseAttempts = 3;
constexpr int kMaxConflictsWithoutHolder = 16;

// For cores built without a logger (tests): no sinks, nothing formatted.
std::shared_ptr<spdlog::logger> silent_logger() {
  static const auto logger = [] {
    auto l = std::make_shared<spdlog::logger>("leader-silent");
    l->set_level(spdlog::level::off);
    return l;
  }();
  return logger;
}

bool same_leader(const std::optional<LeaderInfo>& a, const std::optional<LeaderInfo>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  return a->instance_id == b->instance_id && a->term == b->term;
}

}  // namespace

const char* to_string(OpKind k) noexcept {
  switch (k) {
    case OpKind::get:
      return "get";
    case OpKind::create:
      return "create";
    case OpKind::update:
      return "update";
    case OpKind::erase:
      return "erase";
  }
  return "?";
}

ElectionCore::ElectionCore(Config config, std::uint64_t seed, std::shared_ptr<spdlog::logger> logger)
    : cfg_(std::move(config)),
      rng_(seed),
      log_(logger ? std::move(logger) : silent_logger()),
      disconnect_grace_(cfg_.storage == Storage::memory && cfg_.replicas == 1
                            ? Duration(0)
                            : Duration(cfg_.disconnect_grace)),
      request_key_("_leader.handover." + cfg_.role) {}

ElectionCore::~ElectionCore() = default;

std::string ElectionCore::who() const {
  if (lease_) return fmt::format("role={} instance={} term={}", cfg_.role, cfg_.instance_id, lease_->term);
  return fmt::format("role={} instance={}", cfg_.role, cfg_.instance_id);
}

std::vector<Action> ElectionCore::take_actions() {
  std::vector<Action> out;
  out.swap(actions_);
  return out;
}

// ---------------------------------------------------------------- events

void ElectionCore::start(TimePoint now) {
  if (running_) return;
  running_ = true;
  stopping_ = false;
  cooldown_until_ = {};
  acquire_failures_ = renew_failures_ = erase_attempts_ = expiry_retries_ = watch_failures_ = 0;
  known_.reset();
  newest_rev_ = 0;
  reported_leader_.reset();
  leader_reported_ = false;
  set_state(ElectionState::campaigning);
  watch_active_ = true;
  actions_.emplace_back(WatchControl{true});
  // Optimistic: a create costs one round trip when the key is free and
  // answers with the holder when it is not.
  acquire_at_ = now;
  log_->info("{} campaign started (bucket={})", who(), cfg_.bucket);
}

void ElectionCore::on_tick(TimePoint now) {
  std::vector<OpId> expired;
  for (const auto& [id, op] : ops_) {
    if (!op.timed_out && now >= op.deadline) expired.push_back(id);
  }
  for (OpId id : expired) on_op_timeout(id, ops_.at(id), now);
  if (!running_) return;

  if (stopping_ && now >= stop_deadline_) {
    if (demote_pending_ || !release_queue_.empty()) {
      log_->warn("{} stop timeout: {}; the key is left to expire", who(),
                 demote_pending_ ? "on_demote has not returned" : "release not confirmed");
    }
    finish(now);
    return;
  }
  if (lease_) {
    if (now >= lease_->deadline) {
      demote(DemoteReason::lease_expired, /*release=*/true, now);
    } else if (grace_deadline_ && now >= *grace_deadline_) {
      demote(DemoteReason::disconnected, /*release=*/true, now);
    } else {
      if (!renew_op_ && (now >= next_renew_at_ || urgent_renew_)) {
        urgent_renew_ = false;
        send_renew(now);
      }
      if (cfg_.validation_interval.count() > 0 && now >= next_validation_at_ && !read_op_) {
        next_validation_at_ = now + cfg_.validation_interval;
        send_read(now);
      }
    }
  }
  if (health_enabled_ && !observe_only_) {
    if (health_deadline_ && now >= *health_deadline_) {
      health_deadline_.reset();
      log_->warn("{} health check did not answer within {} ms", who(), cfg_.health_timeout.count());
      health_result(false, now);
    }
    if (!health_deadline_ && now >= next_health_at_) {
      health_deadline_ = now + cfg_.health_timeout;
      next_health_at_ = now + cfg_.heartbeat_interval;
      actions_.emplace_back(HealthCheck{++health_id_});
    }
  }
  if (state_ == ElectionState::cooling_down && now >= cooldown_until_)
    campaign_now(now, /*with_jitter=*/false);
  // While disconnected a create would only wait in the client's reconnect
  // buffer and land later, stale; the reconnect triggers a read instead.
  if (acquire_at_ && now >= *acquire_at_ && !create_op_ && connection_ == ConnectionState::connected) {
    if (can_campaign(now)) {
      if (!gone_since_ && known_ && known_->op == EntryOp::put) gone_since_ = known_->first_seen + cfg_.ttl;
      send_create(now);
    } else if (!lease_ && !read_op_) {
      // Not allowed to campaign (cooling down): just learn the state.
      acquire_at_.reset();
      send_read(now);
    }
  }
  if (!erase_op_ && !release_queue_.empty() && now >= erase_retry_at_) pump_release(now);
  if (!watch_active_ && watch_retry_at_ && now >= *watch_retry_at_) {
    watch_retry_at_.reset();
    watch_active_ = true;
    actions_.emplace_back(WatchControl{true});
  }
  ensure_progress(now);
  maybe_finish(now);
}

void ElectionCore::ensure_progress(TimePoint now) {
  // Liveness: a running core that does not lead always has a create in
  // flight or an acquire timer armed (which also serves as the slow poll).
  // Without it an answer that turned out stale could leave it waiting for
  // an event that never comes.
  if (!running_ || stopping_ || lease_ || create_op_ || acquire_at_ || demote_pending_ ||
      pending_promotion_ || confirming_ || state_ == ElectionState::releasing) {
    return;
  }
  if (known_ && known_->op == EntryOp::put) {
    const TimePoint expiry = known_->first_seen + cfg_.ttl;
    acquire_at_ = expiry > now ? expiry : now + backoff(++acquire_failures_);
  } else if (can_campaign(now)) {
    acquire_at_ = std::max(now + jitter(), not_before_);
  } else {
    acquire_at_ = now + cfg_.ttl;
  }
}

std::optional<TimePoint> ElectionCore::next_wakeup() const {
  std::optional<TimePoint> next;
  auto consider = [&next](TimePoint t) {
    if (!next || t < *next) next = t;
  };
  for (const auto& [id, op] : ops_) {
    if (!op.timed_out) consider(op.deadline);
  }
  if (!running_) return next;
  if (stopping_) consider(stop_deadline_);
  if (lease_) {
    consider(lease_->deadline);
    if (grace_deadline_) consider(*grace_deadline_);
    if (!renew_op_) consider(urgent_renew_ ? TimePoint{} : next_renew_at_);
    if (cfg_.validation_interval.count() > 0 && !read_op_) consider(next_validation_at_);
  }
  if (health_enabled_ && !observe_only_) consider(health_deadline_ ? *health_deadline_ : next_health_at_);
  if (state_ == ElectionState::cooling_down) consider(cooldown_until_);
  if (acquire_at_ && !create_op_ && !lease_ && connection_ == ConnectionState::connected &&
      (!read_op_ || can_campaign(*acquire_at_))) {
    consider(*acquire_at_);
  }
  if (!erase_op_ && !release_queue_.empty() && !demote_pending_) consider(erase_retry_at_);
  if (!watch_active_ && watch_retry_at_) consider(*watch_retry_at_);
  return next;
}

void ElectionCore::on_kv_result(OpId id, const KvResult& result, TimePoint now) {
  auto it = ops_.find(id);
  if (it == ops_.end()) return;
  const PendingOp op = it->second;
  ops_.erase(it);
  auto clear = [id](std::optional<OpId>& slot) {
    if (slot == id) slot.reset();
  };
  clear(create_op_);
  clear(renew_op_);
  clear(read_op_);
  clear(erase_op_);
  clear(request_op_);
  clear(request_read_op_);
  struct Progress {  // runs ensure_progress() however the handler returns
    ElectionCore* core;
    TimePoint now;
    ~Progress() { core->ensure_progress(now); }
  } progress{this, now};
  if (!result.ok()) {
    log_->debug("{} {} -> {}{}{}", who(), to_string(op.kind), to_string(result.outcome),
                op.timed_out ? " (late)" : "", result.message.empty() ? "" : ": " + result.message);
  }
  switch (op.purpose) {
    case Purpose::release:
      on_erase_result(op, result, now);
      maybe_finish(now);
      return;
    case Purpose::request:
      on_request_result(op, result, now);
      return;
    case Purpose::request_read:
      on_request_read(result, now);
      return;
    case Purpose::confirm:
      on_confirm_result(op, result, now);
      maybe_finish(now);
      return;
    case Purpose::normal:
      break;
  }
  switch (op.kind) {
    case OpKind::create:
      on_create_result(op, result, now);
      break;
    case OpKind::update:
      on_renew_result(op, result, now);
      break;
    case OpKind::get:
      on_read_result(op, result, now);
      break;
    case OpKind::erase:
      on_erase_result(op, result, now);
      break;
  }
  maybe_finish(now);
}

void ElectionCore::on_watch(const WatchEvent& event, TimePoint now) {
  if (!running_ || !watch_active_) return;
  switch (event.kind) {
    case WatchEvent::Kind::entry:
      observe(event.entry, now, std::nullopt);
      break;
    case WatchEvent::Kind::replay_done:
      watch_failures_ = 0;
      break;
    case WatchEvent::Kind::error:
      watch_active_ = false;
      actions_.emplace_back(WatchControl{false});
      ++watch_failures_;
      watch_retry_at_ = now + backoff(watch_failures_);
      log_->debug("{} watch failed ({}): {}; recreating", who(), to_string(event.error), event.message);
      // Catch up on what the watch may have missed.
      if (!lease_) send_read(now);
      break;
  }
  ensure_progress(now);
  maybe_finish(now);
}

void ElectionCore::on_connection(ConnectionState state, TimePoint now) {
  if (state == connection_) return;
  connection_ = state;
  metrics_->connection(state);
  log_->info("{} connection {}", who(), leader::to_string(state));
  if (state != ConnectionState::connected) {
    if (lease_ && !grace_deadline_) {
      grace_deadline_ = now + disconnect_grace_;
      if (disconnect_grace_.count() == 0) {
        // Memory storage, one replica: a restarted server has lost the key.
        demote(DemoteReason::disconnected, /*release=*/false, now);
        return;
      }
      log_->warn("{} disconnected: keeping the role for at most {} ms", who(),
                 std::chrono::duration_cast<std::chrono::milliseconds>(lease_deadline() - now).count());
    }
    return;
  }
  grace_deadline_.reset();
  if (!running_) return;
  if (lease_) {
    // Verify the key before going on: a leader-routed read (observe()
    // demotes unless it is still ours) and a renewal right away.
    log_->info("{} reconnected: verifying the key", who());
    next_renew_at_ = now;
  }
  send_read(now);
}

void ElectionCore::on_demote_returned(TimePoint now) {
  demote_pending_ = false;
  if (!running_) return;
  if (!release_queue_.empty()) {
    pump_release(now);
  } else {
    after_release(now);
  }
  maybe_finish(now);
}

void ElectionCore::request_stop(bool release, Duration timeout, TimePoint now) {
  if (!running_) {
    actions_.emplace_back(Finished{});
    return;
  }
  if (stopping_) return;
  stopping_ = true;
  stop_release_ = release;
  stop_deadline_ = now + timeout;
  acquire_at_.reset();
  if (!release) release_queue_.clear();
  if (lease_) demote(DemoteReason::stopped, release, now);
  maybe_finish(now);
}

void ElectionCore::request_step_down(Duration cooldown, TimePoint now) {
  if (!lease_ || stopping_) return;
  // At least one heartbeat, so the followers that see the delete get the
  // key rather than this instance taking it straight back.
  cooldown_until_ = now + std::max<Duration>(cooldown, cfg_.heartbeat_interval);
  demote(DemoteReason::stepped_down, /*release=*/true, now);
}

// ---------------------------------------------------------------- sending

OpId ElectionCore::send(OpKind kind, std::string value, std::optional<std::uint64_t> expected,
                        std::string nonce, TimePoint now, TimePoint deadline) {
  return send_on({}, Purpose::normal, kind, std::move(value), expected, std::move(nonce), now, deadline);
}

OpId ElectionCore::send_on(const std::string& key, Purpose purpose, OpKind kind, std::string value,
                           std::optional<std::uint64_t> expected, std::string nonce, TimePoint now,
                           TimePoint deadline) {
  const OpId id = next_op_++;
  PendingOp op;
  op.purpose = purpose;
  op.kind = kind;
  op.sent = now;
  op.deadline = deadline;
  op.nonce = std::move(nonce);
  op.expected = expected.value_or(0);
  ops_.emplace(id, std::move(op));
  // Forget the oldest ops whose answer never came (a call can block far
  // past its deadline; its late answer is then only lost knowledge).
  while (ops_.size() > 256) {
    auto victim = std::find_if(ops_.begin(), ops_.end(), [](const auto& p) { return p.second.timed_out; });
    if (victim == ops_.end()) break;
    ops_.erase(victim);
  }
  if (log_->should_log(spdlog::level::trace)) {
    log_->trace("{} -> {} op={} expected={}", who(), to_string(kind), id, expected.value_or(0));
  }
  KvCall call;
  call.id = id;
  call.kind = kind;
  call.value = std::move(value);
  call.expected = expected;
  call.timeout = std::max<Duration>(deadline - now, std::chrono::milliseconds(1));
  call.key = key;
  actions_.emplace_back(std::move(call));
  return id;
}

void ElectionCore::send_create(TimePoint now) {
  acquire_at_.reset();
  std::string nonce = new_nonce();
  std::optional<std::uint64_t> marker;
  if (known_ && known_->op != EntryOp::put) marker = known_->revision;
  create_op_ = send(OpKind::create, make_record(nonce, 0, wall_clock_now()), marker, nonce, now,
                    now + cfg_.call_timeout);
  unresolved_creates_[nonce] = now;
  while (unresolved_creates_.size() > kMaxRemembered) {
    auto oldest = std::min_element(unresolved_creates_.begin(), unresolved_creates_.end(),
                                   [](const auto& a, const auto& b) { return a.second < b.second; });
    unresolved_creates_.erase(oldest);
  }
}

void ElectionCore::send_renew(TimePoint now) {
  const TimePoint deadline = std::min(now + cfg_.call_timeout, lease_->deadline);
  renew_op_ = send(OpKind::update, make_record(lease_->nonce, lease_->term, lease_->acquired_at),
                   lease_->revision, lease_->nonce, now, deadline);
  if (cfg_.priority_handover && !request_read_op_) {
    request_read_op_ = send_on(request_key_, Purpose::request_read, OpKind::get, {}, std::nullopt, {}, now,
                               now + cfg_.call_timeout);
  }
}

void ElectionCore::send_read(TimePoint now) {
  if (read_op_) return;
  read_op_ = send(OpKind::get, {}, std::nullopt, lease_ ? lease_->nonce : std::string(), now,
                  now + cfg_.call_timeout);
}

void ElectionCore::queue_release(const std::string& nonce, std::uint64_t revision, TimePoint now) {
  const bool queued = std::any_of(release_queue_.begin(), release_queue_.end(),
                                  [&](const ReleaseTarget& t) { return t.revision == revision; });
  if (queued) return;
  if (!lease_) log_->debug("{} releasing a write of ours (revision {})", who(), revision);
  release_queue_.push_back({nonce, revision, {}});
  pump_release(now);
}

void ElectionCore::pump_release(TimePoint now) {
  if (demote_pending_ || erase_op_ || release_queue_.empty()) return;
  const ReleaseTarget& t = release_queue_.front();
  if (t.handover_value.empty()) {
    erase_op_ =
        send_on({}, Purpose::release, OpKind::erase, {}, t.revision, t.nonce, now, now + cfg_.call_timeout);
  } else {
    erase_op_ = send_on({}, Purpose::release, OpKind::update, t.handover_value, t.revision, t.nonce, now,
                        now + cfg_.call_timeout);
  }
}

// ---------------------------------------------------------------- results

void ElectionCore::on_create_result(const PendingOp& op, const KvResult& r, TimePoint now) {
  switch (r.outcome) {
    case KvOutcome::ok: {
      unresolved_creates_.erase(op.nonce);
      if (!op.timed_out) metrics_->acquire_attempt("won");
      // Already adopted when the watch showed this create before its ack
      // (and maybe already ended: its release was decided then).
      if ((lease_ && lease_->nonce == op.nonce) || is_ended(op.nonce)) return;
      if (pending_promotion_ && pending_promotion_->nonce == op.nonce) return;
      if (confirming_ && confirming_->nonce == op.nonce) return;
      breaker_failures_ = conflicts_without_holder_ = 0;
      const bool fresh = op.sent + cfg_.ttl - cfg_.safety_margin > now;
      const std::uint64_t prior = newest_rev_;
      if (r.revision > newest_rev_) {
        newest_rev_ = r.revision;
        newest_rev_at_ = now;
      }
      if (!lease_ && fresh && can_campaign(now)) {
        try_promote(r.revision, op.nonce, op.sent, now, prior);
      } else {
        // We hold a key we may not keep (stopping, or the ack came too
        // late): release it so it does not stay held by nobody.
        remember_ended(op.nonce);
        queue_release(op.nonce, r.revision, now);
      }
      return;
    }
    case KvOutcome::conflict:
      unresolved_creates_.erase(op.nonce);
      if (!op.timed_out) metrics_->acquire_attempt("held");
      // A conflict means someone holds the key, so it is not a failure,
      // unless no holder ever shows (reads find the key absent): then the
      // server's answers are wrong, and only the breaker stops a storm.
      if (++conflicts_without_holder_ >= kMaxConflictsWithoutHolder) {
        breaker_failures_ = std::max(breaker_failures_, cfg_.breaker_threshold - 1);
        count_acquire_failure(now, fmt::format("{} creates in a row answered \"conflict\" but no holder "
                                               "of the key was seen",
                                               conflicts_without_holder_));
        return;
      }
      acquire_failures_ = 0;
      breaker_failures_ = 0;
      if (r.entry) {
        observe(*r.entry, now, op.sent);
      } else {
        send_read(now);
      }
      return;
    case KvOutcome::no_responders:
    case KvOutcome::permission_denied:
      // Definitely not applied.
      unresolved_creates_.erase(op.nonce);
      if (!op.timed_out) metrics_->acquire_attempt("error");
      break;
    default:
      // timeout / disconnected / other: it may still be applied; the nonce
      // stays remembered so we recognise it when we see it.
      if (!op.timed_out) metrics_->acquire_attempt("unknown");
      break;
  }
  if (r.outcome == KvOutcome::not_found || r.outcome == KvOutcome::no_responders) {
    // The bucket's stream is gone (deleted, or lost by a memory-storage
    // server's restart: then nothing listens on its subjects), or has no
    // leader right now: re-open it, which re-creates it or says why not.
    request_refresh();
  } else if (r.outcome == KvOutcome::permission_denied || r.outcome == KvOutcome::other ||
             r.outcome == KvOutcome::closed) {
    error(to_error_code(r.outcome),
          fmt::format("acquire of key \"{}\" in bucket \"{}\" failed: {}", cfg_.role, cfg_.bucket,
                      r.message.empty() ? to_string(r.outcome) : r.message));
  }
  if (!running_ || lease_) return;
  if (op.timed_out) {
    // Its timeout was counted already. A late "permission denied" still
    // says that retrying cannot help: without this, every create that
    // outlives call_timeout would only back off, and they would storm.
    if (r.outcome == KvOutcome::permission_denied) {
      open_breaker(now, r.message.empty() ? to_string(r.outcome) : r.message, to_error_code(r.outcome));
    }
    return;
  }
  if (r.outcome == KvOutcome::no_responders) {
    // Nobody serves the stream at the moment (a stream-leader election, a
    // restart): it ends by itself and the next create is the probe that
    // notices, so back off without counting towards the breaker.
    acquire_at_ = now + backoff(++acquire_failures_);
    return;
  }
  if (r.outcome == KvOutcome::permission_denied) {
    // Retrying cannot help until an operator changes the permissions: open
    // the breaker now, one probe per breaker_open.
    ++acquire_failures_;
    open_breaker(now, r.message.empty() ? to_string(r.outcome) : r.message, to_error_code(r.outcome));
    return;
  }
  count_acquire_failure(now, r.message.empty() ? to_string(r.outcome) : r.message, to_error_code(r.outcome));
}

void ElectionCore::open_breaker(TimePoint now, const std::string& why, std::error_code code) {
  if (!acquire_at_ || *acquire_at_ < now + cfg_.breaker_open) acquire_at_ = now + cfg_.breaker_open;
  if (breaker_failures_ >= cfg_.breaker_threshold) return;  // open already, and reported
  breaker_failures_ = cfg_.breaker_threshold;
  error(code, fmt::format("campaign for key \"{}\" in bucket \"{}\" paused for {} ms: {}", cfg_.role,
                          cfg_.bucket, cfg_.breaker_open.count(), why));
}

void ElectionCore::count_acquire_failure(TimePoint now, const std::string& what, std::error_code code) {
  ++acquire_failures_;
  ++breaker_failures_;
  if (breaker_failures_ < cfg_.breaker_threshold) {
    acquire_at_ = now + backoff(acquire_failures_);
    return;
  }
  // Circuit open: stop hammering; after breaker_open one attempt probes
  // (half-open); it closes on an answer, or opens again on a failure.
  acquire_at_ = now + cfg_.breaker_open;
  if (breaker_failures_ == cfg_.breaker_threshold) {
    error(code,
          fmt::format("campaign for key \"{}\" in bucket \"{}\" paused for {} ms after {} failed attempts "
                      "in a row (last: {})",
                      cfg_.role, cfg_.bucket, cfg_.breaker_open.count(), breaker_failures_, what));
  }
}

void ElectionCore::on_renew_result(const PendingOp& op, const KvResult& r, TimePoint now) {
  const bool ours = lease_ && op.nonce == lease_->nonce;
  if (r.outcome == KvOutcome::ok) {
    if (r.revision > newest_rev_) {
      newest_rev_ = r.revision;
      newest_rev_at_ = now;
    }
    if (ours) {
      lease_->revision = std::max(lease_->revision, r.revision);
      // The server applied the write after op.sent, so it expires no
      // earlier than op.sent + ttl: that holds for a late answer too.
      const TimePoint deadline = op.sent + cfg_.ttl - cfg_.safety_margin;
      if (deadline > lease_->deadline) {
        lease_->deadline = deadline;
        lease_->last_send = op.sent;
        last_renewal_ = op.sent;
      }
      lease_->confirmed_at = now;
      lease_->validated_at = std::max(lease_->validated_at, op.sent);
      if (!op.timed_out) {
        metrics_->heartbeat(now - op.sent);
        renew_failures_ = 0;
        next_renew_at_ = op.sent + cfg_.heartbeat_interval;
      }
      if (known_ && known_->mine) known_->revision = std::max(known_->revision, r.revision);
    } else if (is_ended(op.nonce)) {
      // A renewal of an ended term landed after all: give the key back.
      queue_release(op.nonce, r.revision, now);
    }
    return;
  }
  if (!ours) return;
  if (!op.timed_out) metrics_->heartbeat_failure(to_string(r.outcome));
  if (r.outcome == KvOutcome::conflict) {
    // Someone else may hold the key, or a timed-out renewal of ours was
    // applied: a leader-routed read decides (observe()).
    next_renew_at_ = now + backoff(++renew_failures_);
    send_read(now);
    return;
  }
  if (r.outcome == KvOutcome::not_found || r.outcome == KvOutcome::no_responders) request_refresh();
  if (r.outcome == KvOutcome::permission_denied || r.outcome == KvOutcome::other) {
    error(to_error_code(r.outcome),
          fmt::format("renewal of key \"{}\" in bucket \"{}\" failed: {}", cfg_.role, cfg_.bucket,
                      r.message.empty() ? to_string(r.outcome) : r.message));
  }
  if (op.timed_out) return;
  ++renew_failures_;
  const Duration remaining = lease_->deadline - now;
  next_renew_at_ = now + std::max<Duration>(std::min(backoff(renew_failures_), remaining / 2),
                                            std::chrono::milliseconds(1));
}

void ElectionCore::on_read_result(const PendingOp& op, const KvResult& r, TimePoint now) {
  // A read sent while leading validates the term.
  const bool validating = !op.nonce.empty() && lease_ && lease_->nonce == op.nonce;
  if (r.outcome == KvOutcome::ok && r.entry) {
    observe(*r.entry, now, op.sent);
  } else if (r.outcome == KvOutcome::not_found) {
    observe_absent(now, op.sent);
  }
  if (validating) {
    const bool held = lease_ && lease_->nonce == op.nonce;
    if (r.outcome != KvOutcome::ok && r.outcome != KvOutcome::not_found) {
      metrics_->token_validation("error");
    } else {
      metrics_->token_validation(held ? "valid" : "invalid");
    }
    return;
  }
  if (r.outcome == KvOutcome::ok || r.outcome == KvOutcome::not_found) return;
  if (running_ && !lease_ && !acquire_at_ && !create_op_) {
    acquire_at_ = now + backoff(++acquire_failures_);
  }
}

void ElectionCore::on_erase_result(const PendingOp& op, const KvResult& r, TimePoint now) {
  const bool current = !release_queue_.empty() && release_queue_.front().nonce == op.nonce &&
                       release_queue_.front().revision == op.expected;
  if (r.outcome == KvOutcome::ok && op.kind == OpKind::update) {
    log_->info("{} handed the key over (revision {} -> {})", who(), op.expected, r.revision);
    known_.reset();
    send_read(now);  // learn the new holder (the watch tells too)
  } else if (r.outcome == KvOutcome::ok) {
    log_->info("{} released key (revision {} -> delete marker {})", who(), op.expected, r.revision);
    if (r.revision > newest_rev_) {
      newest_rev_ = r.revision;
      newest_rev_at_ = now;
      Known k;
      k.revision = r.revision;
      k.op = EntryOp::del;
      k.first_seen = now;
      known_ = k;
      no_leader(now);
    }
  } else if (r.outcome == KvOutcome::conflict) {
    // Not our revision any more: either someone else's key (leave it) or a
    // late write of ours; the read tells, and observe() queues it again.
    send_read(now);
  } else if (r.outcome != KvOutcome::not_found && current && !op.timed_out) {
    if (++erase_attempts_ < kMaxEraseAttempts && !(stopping_ && now >= stop_deadline_)) {
      erase_retry_at_ = now + backoff(erase_attempts_);
      return;
    }
    log_->warn("{} could not release key (revision {}): {}; its lease runs out", who(), op.expected,
               to_string(r.outcome));
  }
  if (!current) return;
  release_queue_.pop_front();
  erase_attempts_ = 0;
  if (!release_queue_.empty()) {
    pump_release(now);
  } else {
    after_release(now);
  }
}

void ElectionCore::on_op_timeout(OpId /*id*/, PendingOp& op, TimePoint now) {
  op.timed_out = true;
  if (op.purpose == Purpose::confirm) {
    if (confirming_ && confirming_->nonce == op.nonce) abandon_confirmation("the read timed out", now);
    return;
  }
  KvResult timeout;
  timeout.outcome = KvOutcome::timeout;
  timeout.message = "no answer within the call deadline";
  log_->debug("{} {} timed out after {} ms", who(), to_string(op.kind),
              std::chrono::duration_cast<std::chrono::milliseconds>(now - op.sent).count());
  switch (op.kind) {
    case OpKind::create:
      create_op_.reset();
      metrics_->acquire_attempt("unknown");
      if (running_ && !lease_) count_acquire_failure(now, "no answer within the call deadline");
      break;
    case OpKind::update:
      renew_op_.reset();
      if (lease_ && op.nonce == lease_->nonce) {
        metrics_->heartbeat_failure("timeout");
        ++renew_failures_;
        next_renew_at_ =
            now + std::max<Duration>(std::min(backoff(renew_failures_), (lease_->deadline - now) / 2),
                                     std::chrono::milliseconds(1));
      }
      break;
    case OpKind::get:
      read_op_.reset();
      if (running_ && !lease_ && !acquire_at_ && !create_op_) {
        acquire_at_ = now + backoff(++acquire_failures_);
      }
      break;
    case OpKind::erase: {
      erase_op_.reset();
      const bool current = !release_queue_.empty() && release_queue_.front().nonce == op.nonce &&
                           release_queue_.front().revision == op.expected;
      if (!current) break;
      if (++erase_attempts_ < kMaxEraseAttempts && !(stopping_ && now >= stop_deadline_)) {
        erase_retry_at_ = now + backoff(erase_attempts_);
        break;
      }
      log_->warn("{} release of revision {} timed out; its lease runs out", who(), op.expected);
      release_queue_.pop_front();
      erase_attempts_ = 0;
      if (!release_queue_.empty()) {
        pump_release(now);
      } else {
        after_release(now);
      }
      break;
    }
  }
}

// ---------------------------------------------------------------- knowledge

void ElectionCore::observe(const KvEntry& entry, TimePoint now, std::optional<TimePoint> read_sent) {
  const std::uint64_t prior = newest_rev_;
  if (entry.revision < newest_rev_ && read_sent && *read_sent > newest_rev_at_ && lease_ &&
      cfg_.replicas > 1 && entry.op == EntryOp::put && entry.revision == lease_->revision) {
    // Replicas of a replicated stream may number a message differently
    // from its leader around a leader change, and the watch can show their
    // numbering. A leader-routed read of our own last acknowledged write is
    // the truth: adopt its revision. A lower one is still a lost write.
    const auto record = decode_record(entry.value);
    if (record && record->nonce == lease_->nonce) {
      newest_rev_ = entry.revision;
      newest_rev_at_ = now;
    }
  }
  if (entry.revision < newest_rev_) {
    // Older than what we know. A leader-routed read sent after we learned
    // the newer revision cannot be stale: the revisions went backwards
    // (bucket re-created, or writes lost on the server).
    if (!read_sent || *read_sent <= newest_rev_at_) return;
    log_->error("{} revisions of the key went backwards: {} after {}", who(), entry.revision, newest_rev_);
    metrics_->revision_regression();
    request_refresh();
    error(make_error_code(Errc::other),
          fmt::format("revisions of key \"{}\" in bucket \"{}\" went backwards: {} after {}", cfg_.role,
                      cfg_.bucket, entry.revision, newest_rev_));
    // What we knew of the key is void: start over from this entry. A
    // leader's lease revision is meaningless now; the key is not ours.
    known_.reset();
    newest_rev_ = entry.revision;
    newest_rev_at_ = now;
    if (lease_) demote(DemoteReason::lost, /*release=*/false, now);
  }
  if (entry.revision >= newest_rev_) {
    if (entry.revision > newest_rev_) newest_rev_at_ = now;
    newest_rev_ = entry.revision;
  }

  if (entry.op != EntryOp::put) {
    if (lease_) {
      if (entry.revision > lease_->revision) demote(DemoteReason::lost, /*release=*/false, now);
      if (lease_) return;
    }
    if (!known_ || known_->revision != entry.revision) {
      Known k;
      k.revision = entry.revision;
      k.op = entry.op;
      k.first_seen = now;
      known_ = k;
    }
    no_leader(now);
    return;
  }

  const std::optional<Record> record = decode_record(entry.value);
  const bool mine = record && record->holder == cfg_.instance_id;
  if (mine && pending_promotion_ && record->nonce == pending_promotion_->nonce) return;  // epoch on the way
  if (mine && confirming_ && record->nonce == confirming_->nonce) return;                // being read back
  if (lease_) {
    if (mine && record->nonce == lease_->nonce) {
      // On a replicated bucket only the stream leader's numbering (acks,
      // leader-routed reads) may move the revision our renewals expect.
      if (cfg_.replicas > 1 && !read_sent) return;
      lease_->revision = std::max(lease_->revision, entry.revision);
      if (known_ && known_->mine) known_->revision = std::max(known_->revision, entry.revision);
      return;
    }
    if (entry.revision <= lease_->revision) return;
    // Someone else wrote the key after our last revision: it is not ours.
    demote(DemoteReason::lost, /*release=*/false, now);
  }
  if (mine) {
    auto u = unresolved_creates_.find(record->nonce);
    if (u != unresolved_creates_.end()) {
      const TimePoint sent = u->second;
      unresolved_creates_.erase(u);
      // Seeing our own create applied proves we hold the key, whether its
      // ack is still on the way or was lost.
      if (sent + cfg_.ttl - cfg_.safety_margin > now && can_campaign(now)) {
        const bool in_flight = std::any_of(ops_.begin(), ops_.end(), [&](const auto& p) {
          return p.second.kind == OpKind::create && p.second.nonce == record->nonce && !p.second.timed_out;
        });
        if (!in_flight) {
          log_->info("{} a create whose answer was lost was applied (revision {}); adopting it", who(),
                     entry.revision);
        }
        try_promote(entry.revision, record->nonce, sent, now, prior);
        return;
      }
      remember_ended(record->nonce);
    }
    if (is_ended(record->nonce)) queue_release(record->nonce, entry.revision, now);
  }
  follow(entry, record, now);
}

void ElectionCore::observe_absent(TimePoint now, TimePoint read_sent) {
  if (lease_) {
    // Only a read sent after our last confirmed write speaks of our key.
    if (read_sent <= lease_->confirmed_at) return;
    demote(DemoteReason::lost, /*release=*/false, now);
  }
  if (known_ && known_->op == EntryOp::put) {
    if (known_->first_seen >= read_sent) return;
    // Gone without a delete marker before its lease could have run out
    // (the bucket was deleted, or the server lost it): its holder may still
    // believe it leads until then, so no campaign before.
    not_before_ = std::max(not_before_, known_->first_seen + cfg_.ttl);
  }
  known_.reset();
  no_leader(now);
}

void ElectionCore::follow(const KvEntry& entry, const std::optional<Record>& record, TimePoint now) {
  conflicts_without_holder_ = 0;  // a holder: the conflicts were real
  LeaderInfo info;
  if (record) {
    info.instance_id = record->holder;
    info.term = record->term != 0 ? record->term : entry.revision;
    info.priority = record->priority;
  }
  if (!known_ || known_->revision != entry.revision || known_->op != EntryOp::put) {
    Known k;
    k.revision = entry.revision;
    k.op = EntryOp::put;
    k.mine = record && record->holder == cfg_.instance_id;
    k.holder = info;
    k.first_seen = now;
    known_ = k;
    expiry_retries_ = 0;
    gone_since_.reset();
  }
  report_leader(info);
  if (state_ == ElectionState::campaigning) set_state(ElectionState::following);
  if (cfg_.priority_handover && record && record->holder != cfg_.instance_id &&
      record->priority < cfg_.priority && can_campaign(now) && !request_op_ &&
      (!request_sent_at_ || now - *request_sent_at_ >= cfg_.ttl / 2)) {
    send_handover_request(std::nullopt, now);
  }
  if (create_op_) return;
  // The key was written before we first saw it, so it expires before
  // first_seen + ttl (the server sends no event when it does). If it is
  // still there past that, the server is a little late: retry soon.
  const TimePoint expiry = known_->first_seen + cfg_.ttl;
  if (expiry > now) {
    acquire_at_ = expiry;
  } else {
    const Duration retry = std::min<Duration>(
        std::chrono::milliseconds(2) * (1 << std::min(expiry_retries_, 9)), cfg_.retry_max);
    ++expiry_retries_;
    acquire_at_ = now + retry;
  }
}

void ElectionCore::no_leader(TimePoint now) {
  if (!gone_since_) gone_since_ = now;
  report_leader(std::nullopt);
  if (state_ == ElectionState::following) set_state(ElectionState::campaigning);
  if (create_op_) return;
  if (can_campaign(now)) {
    acquire_at_ = std::max(now + jitter(), not_before_);
  } else if (!lease_) {
    // Not campaigning (observer, unhealthy, cooling down): look again now
    // and then, in case the watch misses the next holder.
    acquire_at_ = now + cfg_.ttl;
  }
}

void ElectionCore::report_leader(const std::optional<LeaderInfo>& leader) {
  if (leader_reported_ && same_leader(reported_leader_, leader)) return;
  leader_reported_ = true;
  reported_leader_ = leader;
  Notify n;
  n.kind = Notify::Kind::leader_change;
  n.leader = leader;
  actions_.emplace_back(std::move(n));
}

// ---------------------------------------------------------------- transitions

void ElectionCore::become_leader(std::uint64_t revision, const std::string& nonce, TimePoint sent,
                                 TimePoint now) {
  Lease l;
  l.term = revision;
  l.revision = revision;
  l.nonce = nonce;
  l.acquired_at = wall_clock_now();
  l.deadline = sent + cfg_.ttl - cfg_.safety_margin;
  l.last_send = sent;
  l.confirmed_at = now;
  l.promoted_at = now;
  l.validated_at = sent;
  l.epoch = epoch_;
  lease_ = l;
  next_validation_at_ = now + cfg_.validation_interval;
  if (connection_ != ConnectionState::connected) grace_deadline_ = now + disconnect_grace_;
  if (revision > newest_rev_) {
    newest_rev_ = revision;
    newest_rev_at_ = now;
  }
  LeaderInfo me;
  me.instance_id = cfg_.instance_id;
  me.term = revision;
  me.priority = cfg_.priority;
  Known k;
  k.revision = revision;
  k.op = EntryOp::put;
  k.mine = true;
  k.holder = me;
  k.first_seen = now;
  known_ = k;
  acquire_at_.reset();
  acquire_failures_ = renew_failures_ = breaker_failures_ = 0;
  request_sent_at_.reset();
  next_renew_at_ = sent + cfg_.heartbeat_interval;
  last_renewal_ = sent;
  set_state(ElectionState::leading);
  log_->info("{} promoted: leader with token {}", who(), revision);
  std::optional<Duration> failover;
  if (gone_since_ && *gone_since_ <= now) failover = now - *gone_since_;
  gone_since_.reset();
  metrics_->promoted(revision, failover);
  Notify n;
  n.kind = Notify::Kind::promote;
  n.token = revision;
  n.epoch = epoch_;
  actions_.emplace_back(std::move(n));
  report_leader(me);
}

void ElectionCore::demote(DemoteReason reason, bool release, TimePoint now) {
  if (!lease_) return;
  const Lease old = *lease_;
  log_->warn("{} demoted: {} (lease {} ms {})", who(), leader::to_string(reason),
             std::chrono::duration_cast<std::chrono::milliseconds>(old.deadline > now ? old.deadline - now
                                                                                      : now - old.deadline)
                 .count(),
             old.deadline > now ? "left" : "past its deadline");
  metrics_->demoted(reason, now >= old.promoted_at ? now - old.promoted_at : Duration(0));
  lease_.reset();
  renew_op_.reset();
  grace_deadline_.reset();
  remember_ended(old.nonce);
  demote_pending_ = true;
  if (release) queue_release(old.nonce, old.revision, now);
  set_state(ElectionState::releasing);
  Notify n;
  n.kind = Notify::Kind::demote;
  n.reason = reason;
  actions_.emplace_back(std::move(n));
}

void ElectionCore::after_release(TimePoint now) {
  if (state_ != ElectionState::releasing || demote_pending_) return;
  if (stopping_) {
    finish(now);
    return;
  }
  if (now < cooldown_until_) {
    set_state(ElectionState::cooling_down);
    return;
  }
  campaign_now(now, /*with_jitter=*/true);
}

void ElectionCore::campaign_now(TimePoint now, bool with_jitter) {
  if (known_ && known_->op == EntryOp::put) {
    set_state(ElectionState::following);
    // Re-arm the expiry timer of the holder we know.
    const TimePoint expiry = known_->first_seen + cfg_.ttl;
    acquire_at_ = expiry > now ? expiry : now;
  } else {
    set_state(ElectionState::campaigning);
    acquire_at_ = now + (with_jitter ? jitter() : Duration(0));
  }
}

void ElectionCore::maybe_finish(TimePoint now) {
  if (!running_ || !stopping_) return;
  if (now >= stop_deadline_ ||
      (!demote_pending_ && release_queue_.empty() && !erase_op_ && !create_op_ && !confirming_)) {
    finish(now);
  }
}

void ElectionCore::finish(TimePoint now) {
  if (lease_) {
    // Only reachable when the stop deadline passes mid-term; never leave a
    // term running past stop().
    demote(DemoteReason::stopped, /*release=*/false, now);
  }
  running_ = false;
  stopping_ = false;
  set_state(ElectionState::stopped);
  if (watch_active_) actions_.emplace_back(WatchControl{false});
  watch_active_ = false;
  watch_retry_at_.reset();
  acquire_at_.reset();
  release_queue_.clear();
  create_op_.reset();
  read_op_.reset();
  erase_op_.reset();
  confirming_.reset();
  log_->info("{} stopped", who());
  actions_.emplace_back(Finished{});
}

void ElectionCore::set_state(ElectionState s) { state_ = s; }

// ---------------------------------------------------------------- helpers

bool ElectionCore::can_campaign(TimePoint now) const {
  return running_ && !stopping_ && !lease_ && !demote_pending_ && !observe_only_ && healthy_ &&
         !pending_promotion_ && !confirming_ && state_ != ElectionState::releasing &&
         state_ != ElectionState::cooling_down && now >= cooldown_until_;
}

Duration ElectionCore::backoff(int failures) {
  // Exponential with full jitter, capped at retry_max; at least 1 ms so an
  // instant failure cannot spin.
  const int shift = std::clamp(failures - 1, 0, 20);
  const Duration cap = std::min<Duration>(Duration(cfg_.retry_initial) * (1LL << shift), cfg_.retry_max);
  std::uniform_int_distribution<Duration::rep> dist(0, cap.count());
  return std::max<Duration>(Duration(dist(rng_)), std::chrono::milliseconds(1));
}

Duration ElectionCore::jitter() {
  const Duration max = cfg_.acquire_jitter;
  if (max.count() <= 0) return Duration(0);
  std::uniform_int_distribution<Duration::rep> dist(0, max.count());
  return Duration(dist(rng_));
}

std::string ElectionCore::new_nonce() { return fmt::format("{:016x}{:016x}", rng_(), rng_()); }

std::string ElectionCore::make_record(const std::string& nonce, std::uint64_t term,
                                      const std::string& acquired_at) const {
  Record r;
  r.holder = cfg_.instance_id;
  r.nonce = nonce;
  r.term = term;
  r.priority = cfg_.priority;
  r.metadata = cfg_.metadata;
  r.acquired_at = acquired_at;
  r.renewed_at = wall_clock_now();
  return encode_record(r);
}

void ElectionCore::error(std::error_code code, std::string message) {
  log_->warn("{} {}", who(), message);
  last_error_ = ErrorInfo{code, message};
  Notify n;
  n.kind = Notify::Kind::error;
  n.error = ErrorInfo{code, std::move(message)};
  actions_.emplace_back(std::move(n));
}

void ElectionCore::remember_ended(const std::string& nonce) {
  if (is_ended(nonce)) return;
  ended_nonces_.push_back(nonce);
  while (ended_nonces_.size() > kMaxRemembered) ended_nonces_.pop_front();
}

bool ElectionCore::is_ended(const std::string& nonce) const {
  return std::find(ended_nonces_.begin(), ended_nonces_.end(), nonce) != ended_nonces_.end();
}

void ElectionCore::send_handover_request(const std::optional<KvEntry>& existing, TimePoint now) {
  // The request is a record naming us with a fresh nonce; the leader writes
  // it into the role's key, where we recognise the nonce and adopt the
  // lease as if our own create had landed (sent now: a safe deadline).
  std::string nonce = new_nonce();
  std::string value = make_record(nonce, 0, wall_clock_now());
  unresolved_creates_[nonce] = now;
  request_sent_at_ = now;
  log_->info("{} asking the leader to hand over (priority {})", who(), cfg_.priority);
  if (existing) {
    request_op_ = send_on(request_key_, Purpose::request, OpKind::update, std::move(value),
                          existing->revision, std::move(nonce), now, now + cfg_.call_timeout);
  } else {
    request_op_ = send_on(request_key_, Purpose::request, OpKind::create, std::move(value), std::nullopt,
                          std::move(nonce), now, now + cfg_.call_timeout);
  }
}

void ElectionCore::on_request_result(const PendingOp& op, const KvResult& r, TimePoint now) {
  if (r.outcome != KvOutcome::conflict || !r.entry || op.timed_out) return;
  // Another request is there: replace it only if ours has the higher
  // priority (or it is an old one of ours).
  const auto other = r.entry->op == EntryOp::put ? decode_record(r.entry->value) : std::nullopt;
  if (!other || other->priority < cfg_.priority || other->holder == cfg_.instance_id) {
    unresolved_creates_.erase(op.nonce);
    send_handover_request(r.entry, now);
  }
}

void ElectionCore::on_request_read(const KvResult& r, TimePoint now) {
  if (!lease_ || demote_pending_ || r.outcome != KvOutcome::ok || !r.entry || r.entry->op != EntryOp::put) {
    return;
  }
  const auto request = decode_record(r.entry->value);
  if (!request || request->holder == cfg_.instance_id || request->priority <= cfg_.priority) return;
  log_->info("{} handing over to {} (priority {} > {})", who(), request->holder, request->priority,
             cfg_.priority);
  Record handed;
  handed.holder = request->holder;
  handed.nonce = request->nonce;
  handed.priority = request->priority;
  handed.metadata = request->metadata;
  handed.acquired_at = handed.renewed_at = wall_clock_now();
  const std::string nonce = lease_->nonce;
  const std::uint64_t revision = lease_->revision;
  // The term ends first (on_demote returns); then the key is written over
  // to the requester with a compare-and-swap on our revision.
  cooldown_until_ = now + cfg_.heartbeat_interval;
  demote(DemoteReason::handover, /*release=*/false, now);
  release_queue_.push_back({nonce, revision, encode_record(handed)});
}

TimePoint ElectionCore::lease_deadline() const noexcept {
  if (!lease_) return TimePoint{};
  return grace_deadline_ ? std::min(lease_->deadline, *grace_deadline_) : lease_->deadline;
}

void ElectionCore::try_promote(std::uint64_t revision, const std::string& nonce, TimePoint sent,
                               TimePoint now, std::uint64_t prior_revision) {
  if (cfg_.replicas > 1) {
    Confirming c;
    c.revision = revision;
    c.nonce = nonce;
    c.sent = sent;
    c.prior_revision = prior_revision;
    // Bounded by the lease: a confirmation later than that is worthless.
    c.op = send_on({}, Purpose::confirm, OpKind::get, {}, std::nullopt, nonce, now,
                   std::min(now + cfg_.call_timeout, sent + cfg_.ttl - cfg_.safety_margin));
    confirming_ = c;
    return;
  }
  promote_with_epoch(revision, nonce, sent, now, prior_revision);
}

void ElectionCore::on_confirm_result(const PendingOp& op, const KvResult& r, TimePoint now) {
  if (!confirming_ || confirming_->nonce != op.nonce || op.timed_out) return;
  Confirming c = *confirming_;
  // Ours if it is the key's latest message; its revision as the stream
  // leader numbers it (a watch event may have shown a replica's number).
  const bool latest = r.ok() && r.entry && r.entry->op == EntryOp::put && [&] {
    const auto record = decode_record(r.entry->value);
    return record && record->nonce == c.nonce;
  }();
  if (latest) c.revision = r.entry->revision;
  if (!latest) {
    abandon_confirmation(r.ok() && r.entry
                             ? fmt::format("the key's latest message is revision {}", r.entry->revision)
                             : fmt::format("the read answered {}", to_string(r.outcome)),
                         now);
    // Learn who holds it instead (a leader-routed read).
    if (r.ok() && r.entry) observe(*r.entry, now, op.sent);
    return;
  }
  confirming_.reset();
  if (!(c.sent + cfg_.ttl - cfg_.safety_margin > now && can_campaign(now))) {
    remember_ended(c.nonce);
    queue_release(c.nonce, c.revision, now);
    return;
  }
  promote_with_epoch(c.revision, c.nonce, c.sent, now, c.prior_revision);
}

void ElectionCore::abandon_confirmation(const std::string& why, TimePoint now) {
  const Confirming c = *confirming_;
  confirming_.reset();
  log_->warn(
      "{} create of revision {} was acknowledged but not confirmed by the stream leader ({}): not "
      "leading",
      who(), c.revision, why);
  remember_ended(c.nonce);
  // A compare-and-delete of our revision: a no-op conflict unless the key
  // is ours after all.
  queue_release(c.nonce, c.revision, now);
  if (running_ && !lease_ && !acquire_at_ && !create_op_) acquire_at_ = now + backoff(++acquire_failures_);
}

void ElectionCore::promote_with_epoch(std::uint64_t revision, const std::string& nonce, TimePoint sent,
                                      TimePoint now, std::uint64_t prior_revision) {
  // A revision that does not extend what we saw of the key may come from a
  // re-created bucket (revisions restart at 1): learn the bucket's epoch
  // before handing out a token, so tokens never go backwards.
  if (epoch_ == 0 || prior_revision == 0 || revision <= prior_revision) {
    pending_promotion_ = PendingPromotion{revision, nonce, sent};
    request_refresh();
    return;
  }
  become_leader(revision, nonce, sent, now);
}

void ElectionCore::request_refresh() {
  if (refresh_pending_) return;
  refresh_pending_ = true;
  actions_.emplace_back(RefreshBucket{});
}

void ElectionCore::on_bucket(std::optional<std::uint64_t> epoch, std::error_code error_code,
                             const std::string& message, TimePoint now) {
  refresh_pending_ = false;
  if (epoch) {
    if (*epoch != epoch_ && epoch_ != 0) {
      log_->warn("{} bucket \"{}\" was re-created (epoch {} -> {}); revisions restart", who(), cfg_.bucket,
                 epoch_, *epoch);
      if (!pending_promotion_) {
        newest_rev_ = 0;
        known_.reset();
      }
    }
    epoch_ = *epoch;
  } else {
    error(error_code ? error_code : make_error_code(Errc::bucket_missing),
          message.empty() ? fmt::format("bucket \"{}\" cannot be opened", cfg_.bucket) : message);
  }
  if (!pending_promotion_) return;
  const PendingPromotion p = *pending_promotion_;
  pending_promotion_.reset();
  if (epoch && !lease_ && p.sent + cfg_.ttl - cfg_.safety_margin > now && can_campaign(now)) {
    become_leader(p.revision, p.nonce, p.sent, now);
    return;
  }
  remember_ended(p.nonce);
  queue_release(p.nonce, p.revision, now);
  if (running_ && !lease_ && !acquire_at_) acquire_at_ = now + backoff(++acquire_failures_);
}

void ElectionCore::on_health(std::uint64_t id, bool healthy, TimePoint now) {
  if (id != health_id_ || !health_deadline_) return;  // late: already counted as a timeout
  health_deadline_.reset();
  health_result(healthy, now);
}

void ElectionCore::health_result(bool healthy, TimePoint now) {
  if (healthy) {
    health_failures_ = 0;
    if (!healthy_) {
      healthy_ = true;
      log_->info("{} healthy again: campaigning", who());
      if (running_ && !lease_ &&
          (state_ == ElectionState::campaigning || state_ == ElectionState::following)) {
        campaign_now(now, /*with_jitter=*/true);
      }
    }
    return;
  }
  ++health_failures_;
  metrics_->health_check_failure();
  log_->warn("{} health check failed ({} in a row, limit {})", who(), health_failures_,
             cfg_.max_health_failures);
  if (health_failures_ < cfg_.max_health_failures || !healthy_) return;
  healthy_ = false;
  error(make_error_code(Errc::other),
        fmt::format(
            "key \"{}\" in bucket \"{}\": {} health checks failed in a row; not leading until one passes",
            cfg_.role, cfg_.bucket, health_failures_));
  if (lease_) demote(DemoteReason::unhealthy, /*release=*/true, now);
}

void ElectionCore::request_renewal() {
  if (lease_) urgent_renew_ = true;
}

Status ElectionCore::status(TimePoint now) const {
  Status s;
  s.state = state_;
  s.leader = reported_leader_;
  s.term = term();
  s.last_renewal = last_renewal_;
  if (lease_ && lease_->deadline > now) {
    s.lease_remaining = std::chrono::duration_cast<std::chrono::milliseconds>(lease_->deadline - now);
  }
  s.connection = connection_;
  s.last_error = last_error_;
  s.healthy = healthy_;
  s.circuit_open = breaker_failures_ >= cfg_.breaker_threshold;
  s.fencing_token = fencing_token();
  if (s.leader) {
    TimePoint end{};
    if (lease_) {
      end = lease_deadline();
    } else if (known_ && known_->op == EntryOp::put) {
      end = known_->first_seen + cfg_.ttl;
    }
    if (end > now) {
      s.leader->lease_remaining = std::chrono::duration_cast<std::chrono::milliseconds>(end - now);
    }
  }
  return s;
}

}  // namespace leader::detail
