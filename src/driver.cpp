#include "driver.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <future>
#include <random>

#include "leader/error.h"
#include "log.h"

namespace leader::detail {
namespace {

std::uint64_t make_seed(const std::string& instance) {
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ std::hash<std::string>{}(instance) ^
         static_cast<std::uint64_t>(SteadyClock::now().time_since_epoch().count());
}

// Runs a user callback, timed; an exception is logged and counted, never
// propagated.
template <typename F>
void guarded(const std::shared_ptr<spdlog::logger>& log, ElectionMetrics& metrics, const char* name,
             const std::string& who, F&& f) {
  const auto start = SteadyClock::now();
  bool threw = true;
  try {
    f();
    threw = false;
  } catch (const std::exception& e) {
    log->error("{} callback {} threw: {}", who, name, e.what());
  } catch (...) {
    log->error("{} callback {} threw a non-standard exception", who, name);
  }
  metrics.callback(name, SteadyClock::now() - start, threw);
}

}  // namespace

ElectionDriver::ElectionDriver(std::shared_ptr<Connection> connection, Config config, Callbacks callbacks,
                               Telemetry telemetry, std::shared_ptr<ElectionMetrics> metrics,
                               bool observe_only, std::chrono::milliseconds requested_grace,
                               DriverShared shared)
    : connection_(std::move(connection)),
      runtime_(connection_->runtime()),
      config_(std::move(config)),
      callbacks_(std::move(callbacks)),
      log_(telemetry.logger ? std::move(telemetry.logger) : default_logger()),
      // Without a registry, the no-op sink (not owned: it is static).
      metrics_(metrics
                   ? std::move(metrics)
                   : std::shared_ptr<ElectionMetrics>(std::shared_ptr<ElectionMetrics>{}, &null_metrics())),
      shared_(std::move(shared)),
      own_callback_thread_(shared_.callback_pool ? nullptr : std::make_shared<ThreadPool>(1)),
      callback_strand_(shared_.callback_pool ? shared_.callback_pool : own_callback_thread_),
      core_(config_, make_seed(config_.instance_id), log_) {
  core_.set_metrics(metrics_.get());
  core_.set_observe_only(observe_only);
  if (callbacks_.health_check && !observe_only) {
    core_.set_health_enabled(true);
    health_pool_ = shared_.health_pool;
    if (!health_pool_) {
      health_pool_ = std::make_shared<ThreadPool>(1);
      own_health_thread_ = true;
    }
  }
  if (requested_grace.count() > 0 && requested_grace > config_.disconnect_grace) {
    log_->warn("role={} instance={} disconnect_grace {} ms is longer than the lease allows; clamped to {} ms",
               config_.role, config_.instance_id, requested_grace.count(), config_.disconnect_grace.count());
  }
}

ElectionDriver::~ElectionDriver() { shutdown(); }

void ElectionDriver::post(Event event) {
  runtime_->loop().post([weak = weak_from_this(), event = std::move(event)] {
    if (auto self = weak.lock()) self->step(event);
  });
}

void ElectionDriver::step(const Event& event) {
  event(SteadyClock::now());
  std::vector<Action> actions = core_.take_actions();
  // The lease is published before any callback runs, so is_leader() is
  // already true in on_promote and already false in on_demote.
  publish();
  for (Action& a : actions) execute(a);
  rearm();
}

void ElectionDriver::publish() {
  const std::uint64_t term = core_.term();
  if (term != 0) {
    lease_->deadline_ns.store(core_.lease_deadline().time_since_epoch().count(), std::memory_order_release);
    lease_->term.store(term, std::memory_order_release);
  } else {
    lease_->term.store(0, std::memory_order_release);
    lease_->deadline_ns.store(0, std::memory_order_release);
  }
  {
    const auto now = SteadyClock::now();
    metrics_->lease_remaining(term != 0 && core_.lease_deadline() > now ? core_.lease_deadline() - now
                                                                        : Duration(0));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_at_ = SteadyClock::now();
    status_ = core_.status(status_at_);
    lease_nonce_ = core_.lease_nonce();
    validated_at_ = core_.validated_at();
  }
  cv_.notify_all();
}

void ElectionDriver::rearm() {
  const std::optional<TimePoint> next = core_.next_wakeup();
  if (next == timer_at_) return;
  if (timer_ != 0) runtime_->loop().cancel(timer_);
  timer_ = 0;
  timer_at_ = next;
  if (!next) return;
  timer_ = runtime_->loop().schedule(*next, [weak = weak_from_this()] {
    auto self = weak.lock();
    if (!self) return;
    self->timer_ = 0;
    self->timer_at_.reset();
    self->step([self = self.get()](TimePoint now) { self->core_.on_tick(now); });
  });
}

void ElectionDriver::execute(Action& action) {
  if (auto* call = std::get_if<KvCall>(&action)) {
    run_call(*call);
  } else if (auto* watch = std::get_if<WatchControl>(&action)) {
    if (watch->start) {
      start_watch();
    } else {
      stop_watch();
    }
  } else if (auto* n = std::get_if<Notify>(&action)) {
    notify(*n);
  } else if (std::holds_alternative<RefreshBucket>(action)) {
    refresh_bucket();
  } else if (auto* check = std::get_if<HealthCheck>(&action)) {
    run_health_check(check->id);
  } else if (std::holds_alternative<Finished>(action)) {
    if (timer_ != 0) runtime_->loop().cancel(timer_);
    timer_ = 0;
    timer_at_.reset();
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_ = false;
      ++finished_count_;
    }
    cv_.notify_all();
  }
}

void ElectionDriver::run_call(const KvCall& call) {
  auto deliver = [weak = weak_from_this(), runtime = std::weak_ptr<Runtime>(runtime_),
                  id = call.id](KvResult r) {
    auto rt = runtime.lock();
    if (!rt) return;
    rt->loop().post([weak, id, r = std::move(r)] {
      if (auto self = weak.lock()) {
        self->step([self = self.get(), id, &r](TimePoint now) { self->core_.on_kv_result(id, r, now); });
      }
    });
  };
  if (!store_) {
    KvResult r;
    r.outcome = KvOutcome::closed;
    r.message = "bucket not open";
    deliver(std::move(r));
    return;
  }
  // The call's timeout runs from now, when the core sent it, not from when
  // an I/O thread is free: with every thread busy (thousands of roles, or
  // hung calls) a call could otherwise be sent long after the core counted
  // it as timed out, and a renewal or create land stale.
  runtime_->io().post([store = store_, key = call.key.empty() ? config_.role : call.key, call,
                       queued = SteadyClock::now(), deliver = std::move(deliver)] {
    const Duration waited = SteadyClock::now() - queued;
    KvResult r;
    if (waited >= call.timeout) {
      // Not sending is the safe side: the core already treats a timeout
      // as "maybe applied".
      r.outcome = KvOutcome::timeout;
      r.message = fmt::format("not sent: waited {} ms for an I/O thread (all busy; see io_threads)",
                              std::chrono::duration_cast<std::chrono::milliseconds>(waited).count());
      deliver(std::move(r));
      return;
    }
    const Duration timeout = call.timeout - waited;
    switch (call.kind) {
      case OpKind::get:
        r = store->get(key, timeout);
        break;
      case OpKind::create:
        r = store->create(key, call.value, call.expected, timeout);
        break;
      case OpKind::update:
        r = store->update(key, call.value, call.expected.value_or(0), timeout);
        break;
      case OpKind::erase:
        r = store->erase(key, call.expected.value_or(0), timeout);
        break;
    }
    deliver(std::move(r));
  });
}

void ElectionDriver::start_watch() {
  stop_watch();
  const std::uint64_t generation = ++watch_generation_;
  if (!store_) return;
  // Events reach the core only while their watch is the current one.
  auto to_loop = [weak = weak_from_this(), runtime = std::weak_ptr<Runtime>(runtime_),
                  generation](WatchEvent ev) {
    auto rt = runtime.lock();
    if (!rt) return;
    rt->loop().post([weak, generation, ev = std::move(ev)] {
      auto self = weak.lock();
      if (!self || self->watch_generation_ != generation) return;
      self->step([self = self.get(), &ev](TimePoint now) { self->core_.on_watch(ev, now); });
    });
  };
  // Creating a watch blocks (a subscription round trip): not on the loop.
  runtime_->io().post([weak = weak_from_this(), runtime = std::weak_ptr<Runtime>(runtime_), store = store_,
                       key = config_.role, generation, to_loop] {
    KvResult error;
    std::unique_ptr<Watch> watch = store->watch(key, to_loop, &error);
    if (!watch) {
      WatchEvent ev;
      ev.kind = WatchEvent::Kind::error;
      ev.error = error.outcome;
      ev.message = error.message.empty() ? "watch could not be created" : error.message;
      to_loop(std::move(ev));
      return;
    }
    auto rt = runtime.lock();
    if (!rt) return;  // the runtime is gone: the watch dies here
    rt->loop().post([weak, runtime, generation, watch = std::shared_ptr<Watch>(std::move(watch))]() mutable {
      auto self = weak.lock();
      if (self && self->watch_generation_ == generation) {
        self->watch_ = std::move(watch);
        return;
      }
      // Stopped or replaced meanwhile: this watch is not wanted.
      if (auto owner = runtime.lock()) owner->io().post([w = std::move(watch)]() mutable { w.reset(); });
    });
  });
}

void ElectionDriver::stop_watch() {
  ++watch_generation_;
  if (!watch_) return;
  // Unsubscribing may block: hand the watch to the I/O pool to destroy.
  runtime_->io().post([watch = std::move(watch_)]() mutable { watch.reset(); });
}

void ElectionDriver::notify(const Notify& n) {
  const std::string who = fmt::format("role={} instance={}", config_.role, config_.instance_id);
  switch (n.kind) {
    case Notify::Kind::promote: {
      Term term(n.token, n.epoch, lease_);
      callback_strand_.post([cb = callbacks_.on_promote, term, log = log_, metrics = metrics_,
                             who = fmt::format("{} term={}", who, n.token)] {
        if (cb) guarded(log, *metrics, "on_promote", who, [&] { cb(term); });
      });
      break;
    }
    case Notify::Kind::demote:
      callback_strand_.post([cb = callbacks_.on_demote, reason = n.reason, log = log_, metrics = metrics_,
                             who, weak = weak_from_this(), runtime = std::weak_ptr<Runtime>(runtime_)] {
        if (cb) guarded(log, *metrics, "on_demote", who, [&] { cb(reason); });
        // Only now may the key be released: the leader's work has stopped.
        auto rt = runtime.lock();
        if (!rt) return;
        rt->loop().post([weak] {
          if (auto self = weak.lock()) {
            self->step([self = self.get()](TimePoint now) { self->core_.on_demote_returned(now); });
          }
        });
      });
      break;
    case Notify::Kind::leader_change:
      callback_strand_.post(
          [cb = callbacks_.on_leader_change, leader = n.leader, log = log_, metrics = metrics_, who] {
            if (cb) guarded(log, *metrics, "on_leader_change", who, [&] { cb(leader); });
          });
      break;
    case Notify::Kind::error:
      callback_strand_.post([cb = callbacks_.on_error, error = n.error, log = log_, metrics = metrics_, who] {
        if (cb) guarded(log, *metrics, "on_error", who, [&] { cb(error); });
      });
      break;
  }
}

void ElectionDriver::refresh_bucket() {
  const BucketSpec spec = bucket_spec(config_);
  runtime_->io().post([weak = weak_from_this(), runtime = std::weak_ptr<Runtime>(runtime_),
                       backend = connection_->backend(), spec, timeout = Duration(config_.call_timeout)] {
    OpenResult opened = backend->open_bucket(spec, timeout);
    auto rt = runtime.lock();
    if (!rt) return;
    rt->loop().post([weak, opened = std::move(opened)] {
      auto self = weak.lock();
      if (!self) return;
      self->step([self = self.get(), &opened](TimePoint now) {
        if (opened.store) self->store_ = self->wrap(opened.store);
        self->core_.on_bucket(opened.store ? std::optional<std::uint64_t>(opened.epoch) : std::nullopt,
                              opened.error, opened.message, now);
      });
    });
  });
}

void ElectionDriver::run_health_check(std::uint64_t id) {
  if (!callbacks_.health_check || !health_pool_) return;
  // A check still running (hung) is not queued behind: the core counts the
  // missing answer as a failure when health_timeout passes.
  if (health_running_->exchange(true)) return;
  health_pool_->post([check = callbacks_.health_check, running = health_running_, log = log_, id,
                      weak = weak_from_this(), runtime = std::weak_ptr<Runtime>(runtime_),
                      who = fmt::format("role={} instance={}", config_.role, config_.instance_id)] {
    bool healthy = false;
    try {
      healthy = check();
    } catch (const std::exception& e) {
      log->warn("{} health check threw: {}", who, e.what());
    } catch (...) {
      log->warn("{} health check threw a non-standard exception", who);
    }
    running->store(false);
    auto rt = runtime.lock();
    if (!rt) return;
    rt->loop().post([weak, id, healthy] {
      if (auto self = weak.lock()) {
        self->step(
            [self = self.get(), id, healthy](TimePoint now) { self->core_.on_health(id, healthy, now); });
      }
    });
  });
}

BucketSpec bucket_spec(const Config& config) {
  BucketSpec spec;
  spec.name = config.bucket;
  spec.ttl = config.ttl;
  spec.storage = config.storage;
  spec.replicas = config.replicas;
  return spec;
}

OpenResult open_bucket_or_throw(const Connection& connection, const Config& config) {
  const BucketSpec spec = bucket_spec(config);
  auto promise = std::make_shared<std::promise<OpenResult>>();
  std::future<OpenResult> future = promise->get_future();
  connection.runtime()->io().post([backend = connection.backend(), spec,
                                   timeout = Duration(config.start_timeout),
                                   promise] { promise->set_value(backend->open_bucket(spec, timeout)); });
  // The client's own timeout is not trusted: bound the wait ourselves.
  if (future.wait_for(config.start_timeout + std::chrono::seconds(1)) != std::future_status::ready) {
    throw Error(make_error_code(Errc::timeout),
                fmt::format("opening bucket \"{}\" did not finish within {} ms", config.bucket,
                            config.start_timeout.count()));
  }
  OpenResult opened = future.get();
  if (!opened.store) {
    throw Error(
        opened.error ? opened.error : make_error_code(Errc::other),
        opened.message.empty() ? fmt::format("cannot open bucket \"{}\"", config.bucket) : opened.message);
  }
  return opened;
}

std::shared_ptr<KvStore> ElectionDriver::wrap(std::shared_ptr<KvStore> store) const {
  return shared_.wrap_store ? shared_.wrap_store(std::move(store)) : store;
}

void ElectionDriver::start(std::optional<OpenResult> preopened) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_) return;
  }
  OpenResult opened =
      preopened && preopened->store ? std::move(*preopened) : open_bucket_or_throw(*connection_, config_);
  // A hung server is noticed through pings (about two intervals); past the
  // lease the leader would stop on its own deadline first, but the
  // disconnect (and the grace) would be learned late.
  const auto ping = connection_->backend()->ping_interval();
  if (ping.count() > 0 && ping * 2 > config_.ttl - config_.safety_margin) {
    log_->warn(
        "role={} instance={} the connection's ping_interval ({} ms) lets a hung server go unnoticed for "
        "about "
        "{} ms, longer than the lease ({} ms): use a ping_interval below {} ms",
        config_.role, config_.instance_id, ping.count(), ping.count() * 2, config_.ttl.count(),
        (config_.ttl - config_.safety_margin).count() / 2);
  }
  if (!state_subscribed_) {
    state_subscribed_ = true;
    state_listener_ = connection_->backend()->subscribe_state(
        [weak = weak_from_this(), runtime = std::weak_ptr<Runtime>(runtime_)](ConnectionState state) {
          auto rt = runtime.lock();
          if (!rt) return;
          rt->loop().post([weak, state] {
            if (auto self = weak.lock()) {
              self->step(
                  [self = self.get(), state](TimePoint now) { self->core_.on_connection(state, now); });
            }
          });
        });
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = true;
  }
  post([this, store = wrap(opened.store), epoch = opened.epoch,
        state = connection_->backend()->state()](TimePoint now) {
    store_ = store;
    core_.set_epoch(epoch);
    core_.on_connection(state, now);
    core_.start(now);
  });
}

void ElectionDriver::stop(const StopOptions& options) noexcept {
  const std::optional<std::uint64_t> ticket = begin_stop(options);
  // From a callback (or the loop) we cannot wait: on_demote needs this
  // thread. The stop completes after the callback returns.
  if (!ticket || callback_strand_.in_strand() || runtime_->loop().in_loop_thread()) return;
  wait_stopped(*ticket, options);
}

std::optional<std::uint64_t> ElectionDriver::begin_stop(const StopOptions& options) noexcept {
  try {
    std::uint64_t ticket = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!running_) return std::nullopt;
      ticket = finished_count_;
    }
    post([this, options](TimePoint now) { core_.request_stop(options.release, options.timeout, now); });
    return ticket;
  } catch (...) {
    // stop() never throws; a failure to post means the runtime is gone.
    return std::nullopt;
  }
}

void ElectionDriver::wait_stopped(std::uint64_t ticket, const StopOptions& options) noexcept {
  try {
    std::unique_lock<std::mutex> lock(mu_);
    const auto cap = options.timeout + config_.call_timeout + std::chrono::seconds(2);
    cv_.wait_for(lock, cap, [&] { return finished_count_ != ticket; });
  } catch (...) {
    // Never throws (a mutex error would end the wait early).
  }
}

void ElectionDriver::step_down(std::chrono::milliseconds cooldown) {
  post([this, cooldown](TimePoint now) { core_.request_step_down(cooldown, now); });
}

void ElectionDriver::shutdown() noexcept {
  stop(StopOptions{});
  if (state_subscribed_) {
    connection_->backend()->unsubscribe_state(state_listener_);
    state_subscribed_ = false;
  }
  // Queued callbacks (an on_demote at least) still run, then the thread
  // (when the driver has its own) ends.
  callback_strand_.shutdown();
  if (own_callback_thread_) own_callback_thread_->shutdown();
  // A hung health check is not waited for: its thread is left to finish.
  // A shared pool belongs to the manager, which outlives the driver.
  if (own_health_thread_ && health_pool_) {
    if (health_running_->load()) {
      health_pool_->shutdown_detached();
    } else {
      health_pool_->shutdown();
    }
  }
}

bool ElectionDriver::wait_for_leadership(std::chrono::milliseconds timeout) const {
  const auto deadline = SteadyClock::now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  while (!is_leader()) {
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) return is_leader();
  }
  return true;
}

std::optional<FencingToken> ElectionDriver::fencing_token() const noexcept {
  const std::uint64_t term = lease_->term.load(std::memory_order_acquire);
  if (term == 0 || !lease_->holds(term, SteadyClock::now())) return std::nullopt;
  std::lock_guard<std::mutex> lock(mu_);
  if (status_.fencing_token.revision != term) return std::nullopt;
  return status_.fencing_token;
}

bool ElectionDriver::validate_token(const std::optional<FencingToken>& token,
                                    std::chrono::milliseconds max_staleness) {
  const auto start = SteadyClock::now();
  const std::uint64_t term = lease_->term.load(std::memory_order_acquire);
  if (term == 0 || !lease_->holds(term, start)) return false;
  std::unique_lock<std::mutex> lock(mu_);
  if (status_.fencing_token.revision != term || (token && *token != status_.fencing_token)) return false;
  if (max_staleness.count() > 0 && start - validated_at_ <= max_staleness) {
    metrics_->token_validation("valid");
    return true;
  }
  lock.unlock();
  // Linearizable: a renewal sent after this call began must be
  // acknowledged (a compare-and-swap on our revision: a stale replica
  // cannot answer it). A conflict makes the core read and demote.
  const_cast<ElectionDriver*>(this)->post(
      [self = const_cast<ElectionDriver*>(this)](TimePoint) { self->core_.request_renewal(); });
  lock.lock();
  const bool confirmed = cv_.wait_for(lock, config_.call_timeout * 2, [&] {
    return validated_at_ >= start || !lease_->holds(term, SteadyClock::now());
  });
  const bool valid = confirmed && validated_at_ >= start && lease_->holds(term, SteadyClock::now());
  lock.unlock();
  metrics_->token_validation(valid ? "valid" : confirmed ? "invalid" : "error");
  return valid;
}

std::optional<std::uint64_t> ElectionDriver::token() const noexcept {
  const std::uint64_t term = lease_->term.load(std::memory_order_acquire);
  if (term == 0 || !lease_->holds(term, SteadyClock::now())) return std::nullopt;
  return term;
}

Status ElectionDriver::status() const {
  Status s;
  TimePoint at{};
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = status_;
    at = status_at_;
  }
  const auto now = SteadyClock::now();
  if (s.leader) {
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(now - at);
    s.leader->lease_remaining = std::max(std::chrono::milliseconds(0), s.leader->lease_remaining - elapsed);
  }
  const std::uint64_t term = lease_->term.load(std::memory_order_acquire);
  const auto deadline = TimePoint(Duration(lease_->deadline_ns.load(std::memory_order_acquire)));
  s.lease_remaining = term != 0 && deadline > now
                          ? std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now)
                          : std::chrono::milliseconds(0);
  return s;
}

}  // namespace leader::detail
