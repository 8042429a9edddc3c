#include "sim.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>

#include "log.h"
#include "record.h"

namespace leader::testing {

std::string foreign_record(const std::string& holder) {
  detail::Record r;
  r.holder = holder;
  r.nonce = "0badc0de0badc0de";
  return detail::encode_record(r);
}

std::vector<natsmock::CallRecord> calls_of(Sim& sim, const std::string& client, const std::string& op) {
  std::vector<natsmock::CallRecord> out;
  for (const auto& c : sim.server().calls()) {
    if (c.client == client && c.op == op) out.push_back(c);
  }
  return out;
}

std::size_t count_calls(Sim& sim, const std::string& client, const std::string& op, TimePoint after) {
  std::size_t n = 0;
  for (const auto& c : calls_of(sim, client, op)) n += c.at >= after;
  return n;
}

Config sim_config(const std::string& id) {
  Config c;
  c.bucket = "sim";
  c.role = "role";
  c.instance_id = id;
  c.ttl = 1000ms;
  c.heartbeat_interval = 200ms;
  c.safety_margin = 50ms;
  c.call_timeout = 100ms;
  c.acquire_jitter = 5ms;
  c.retry_initial = 10ms;
  c.retry_max = 100ms;
  c.validate();
  return c.resolved();
}

Sim::Sim(std::uint64_t seed) : server_(std::make_unique<natsmock::MockServer>(clock_)), seed_(seed) {}

Sim::~Sim() {
  for (auto& [id, c] : candidates_) c->watch.reset();
  candidates_.clear();
  server_.reset();
}

Sim::Candidate& Sim::add(Config config) {
  auto c = std::make_unique<Candidate>();
  c->id = config.instance_id;
  c->config = config;
  bucket_ = config.bucket;
  key_ = config.role;
  // LEADER_SIM_LOG=1 shows the cores' logs (with LEADER_LOG_LEVEL=debug: all).
  c->core = std::make_unique<detail::ElectionCore>(
      config, seed_ + candidates_.size() * 7919,
      std::getenv("LEADER_SIM_LOG") ? detail::default_logger() : nullptr);
  c->client = server_->client(c->id);
  detail::BucketSpec spec;
  spec.name = config.bucket;
  spec.ttl = config.ttl;
  spec.storage = config.storage;
  spec.replicas = config.replicas;
  auto opened = c->client->open_bucket(spec, 1s);
  if (!opened.store) throw std::runtime_error("sim: open_bucket failed: " + opened.message);
  c->store = opened.store;
  c->core->set_epoch(opened.epoch);
  auto& ref = *c;
  c->client->subscribe_state([this, &ref](ConnectionState state) {
    schedule(now() + ref.state_latency, [this, &ref, state] {
      if (ref.crashed) return;
      ref.core->on_connection(state, now());
      dispatch(ref);
    });
  });
  candidates_.emplace(c->id, std::move(c));
  return ref;
}

Sim::Candidate& Sim::get(const std::string& id) { return *candidates_.at(id); }

void Sim::set_metrics(const std::string& id, std::shared_ptr<detail::ElectionMetrics> metrics) {
  auto& c = get(id);
  c.metrics = std::move(metrics);
  c.core->set_metrics(c.metrics.get());
}

void Sim::schedule(TimePoint at, std::function<void()> fn) { queue_.push(Event{at, seq_++, std::move(fn)}); }

void Sim::start(const std::string& id) {
  auto& c = get(id);
  c.core->start(now());
  dispatch(c);
}

void Sim::set_health(const std::string& id, std::function<std::optional<bool>()> health) {
  auto& c = get(id);
  c.health = std::move(health);
  c.core->set_health_enabled(true);
}

void Sim::stop(const std::string& id, bool release, Duration timeout) {
  auto& c = get(id);
  c.core->request_stop(release, timeout, now());
  dispatch(c);
}

void Sim::step_down(const std::string& id, Duration cooldown) {
  auto& c = get(id);
  c.core->request_step_down(cooldown, now());
  dispatch(c);
}

void Sim::demote_returns(const std::string& id) {
  auto& c = get(id);
  ASSERT_TRUE(c.demote_outstanding) << id << " has no on_demote running";
  c.demote_outstanding = false;
  c.core->on_demote_returned(now());
  dispatch(c);
}

void Sim::crash(const std::string& id) {
  auto& c = get(id);
  c.crashed = true;
  c.watch.reset();
  ++c.watch_generation;
  ++c.tick_generation;
}

void Sim::dispatch(Candidate& c) {
  if (c.crashed) return;
  auto actions = c.core->take_actions();
  for (auto& a : actions) execute(c, a);
  check();
  const auto next = c.core->next_wakeup();
  if (next != c.tick_at) {
    c.tick_at = next;
    const std::uint64_t generation = ++c.tick_generation;
    if (next) {
      schedule(std::max(*next, now()), [this, &c, generation] {
        if (c.tick_generation != generation) return;
        c.tick_at.reset();
        c.core->on_tick(now());
        dispatch(c);
      });
    }
  }
}

void Sim::execute(Candidate& c, detail::Action& action) {
  using detail::Notify;
  if (auto* call = std::get_if<detail::KvCall>(&action)) {
    detail::KvResult r;
    const std::string& key = call->key.empty() ? key_ : call->key;
    switch (call->kind) {
      case detail::OpKind::get:
        r = c.store->get(key, call->timeout);
        break;
      case detail::OpKind::create:
        r = c.store->create(key, call->value, call->expected, call->timeout);
        break;
      case detail::OpKind::update:
        r = c.store->update(key, call->value, call->expected.value_or(0), call->timeout);
        break;
      case detail::OpKind::erase:
        r = c.store->erase(key, call->expected.value_or(0), call->timeout);
        break;
    }
    schedule(now() + c.result_latency, [this, &c, id = call->id, r] {
      if (c.crashed) return;
      c.core->on_kv_result(id, r, now());
      dispatch(c);
    });
  } else if (auto* w = std::get_if<detail::WatchControl>(&action)) {
    c.watch.reset();
    const std::uint64_t generation = ++c.watch_generation;
    if (!w->start) return;
    auto handler = [this, &c, generation](const detail::WatchEvent& ev) {
      schedule(now() + c.watch_latency, [this, &c, generation, ev] {
        if (c.watch_generation != generation) return;
        c.core->on_watch(ev, now());
        dispatch(c);
      });
    };
    detail::KvResult error;
    c.watch = c.store->watch(key_, handler, &error);
    if (!c.watch) {
      detail::WatchEvent ev;
      ev.kind = detail::WatchEvent::Kind::error;
      ev.error = error.outcome;
      ev.message = error.message;
      handler(ev);
    }
  } else if (auto* n = std::get_if<Notify>(&action)) {
    switch (n->kind) {
      case Notify::Kind::promote:
        c.events.push_back(fmt::format("promote:{}", n->token));
        tokens_.push_back(n->token);
        fencing_tokens_.push_back(FencingToken{n->epoch, n->token});
        ++c.promotions;
        break;
      case Notify::Kind::demote:
        c.events.push_back(fmt::format("demote:{}", leader::to_string(n->reason)));
        c.demote_outstanding = true;
        if (c.auto_return_demote) {
          schedule(now(), [this, &c] {
            if (!c.demote_outstanding || c.crashed) return;
            c.demote_outstanding = false;
            c.core->on_demote_returned(now());
            dispatch(c);
          });
        }
        break;
      case Notify::Kind::leader_change:
        c.events.push_back(fmt::format("leader:{}", !n->leader ? "none"
                                                    : n->leader->instance_id.empty()
                                                        ? "?"
                                                        : n->leader->instance_id));
        break;
      case Notify::Kind::error:
        c.events.push_back("error:" + n->error.message);
        break;
    }
  } else if (std::holds_alternative<detail::RefreshBucket>(action)) {
    detail::BucketSpec spec;
    spec.name = c.config.bucket;
    spec.ttl = c.config.ttl;
    spec.storage = c.config.storage;
    spec.replicas = c.config.replicas;
    auto opened = c.client->open_bucket(spec, 1s);
    schedule(now() + c.result_latency, [this, &c, opened] {
      if (c.crashed) return;
      if (opened.store) c.store = opened.store;
      c.core->on_bucket(opened.store ? std::optional<std::uint64_t>(opened.epoch) : std::nullopt,
                        opened.error, opened.message, now());
      dispatch(c);
    });
  } else if (auto* check = std::get_if<detail::HealthCheck>(&action)) {
    const std::optional<bool> answer = c.health ? c.health() : std::optional<bool>(true);
    if (answer) {
      schedule(now() + c.result_latency, [this, &c, id = check->id, ok = *answer] {
        if (c.crashed) return;
        c.core->on_health(id, ok, now());
        dispatch(c);
      });
    }
  } else if (std::holds_alternative<detail::Finished>(action)) {
    c.events.push_back("finished");
    c.watch.reset();
    ++c.watch_generation;
  }
}

void Sim::check() {
  const int n = leaders();
  if (n > max_leaders_) max_leaders_ = n;
  EXPECT_LE(n, 1) << "two candidates believe they lead at t=" << now().time_since_epoch().count();
}

void Sim::run_for(Duration d) {
  const TimePoint end = now() + d;
  while (!queue_.empty() && queue_.top().at <= end) {
    Event e = queue_.top();
    queue_.pop();
    if (e.at > now()) clock_.set(e.at);
    e.fn();
    check();
  }
  if (end > now()) clock_.set(end);
  check();
}

bool Sim::run_until(const std::function<bool()>& pred, Duration limit) {
  const TimePoint end = now() + limit;
  if (pred()) return true;
  while (!queue_.empty() && queue_.top().at <= end) {
    Event e = queue_.top();
    queue_.pop();
    if (e.at > now()) clock_.set(e.at);
    e.fn();
    check();
    if (pred()) return true;
  }
  if (end > now()) clock_.set(end);
  return pred();
}

bool Sim::leads(const std::string& id) const {
  const auto& c = *candidates_.at(id);
  return c.core->term() != 0 && now() < c.core->lease_deadline();
}

int Sim::leaders() const {
  int n = 0;
  for (const auto& [id, c] : candidates_) n += leads(id) ? 1 : 0;
  return n;
}

std::string Sim::leader() const {
  for (const auto& [id, c] : candidates_) {
    if (leads(id)) return id;
  }
  return {};
}

}  // namespace leader::testing
