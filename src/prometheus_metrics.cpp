#include "prometheus_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <functional>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string_view>
#include <utility>

namespace leader::detail {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;

std::atomic<std::size_t> g_alive{0};

double seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

// The families of one registry. They are owned by the registry; an election
// holds the registry, so they outlive every election that uses them.
struct Families {
  explicit Families(prometheus::Registry& r)
      : is_leader(prometheus::BuildGauge()
                      .Name("leader_election_is_leader")
                      .Help("1 while this instance leads the role (before its lease deadline), else 0")
                      .Register(r)),
        term(prometheus::BuildGauge()
                 .Name("leader_election_term")
                 .Help("Fencing token of this instance's current term; 0 when not leading")
                 .Register(r)),
        connection_status(prometheus::BuildGauge()
                              .Name("leader_election_connection_status")
                              .Help("1 while the election's NATS connection is connected, else 0 "
                                    "(disconnected, reconnecting, closed)")
                              .Register(r)),
        lease_remaining(prometheus::BuildGauge()
                            .Name("leader_election_lease_remaining_seconds")
                            .Help("Time left on this instance's lease as of the election's last event; "
                                  "0 when not leading")
                            .Register(r)),
        transitions(prometheus::BuildCounter()
                        .Name("leader_election_transitions_total")
                        .Help("Role transitions of this instance, by the state entered (to=leader|follower)")
                        .Register(r)),
        acquire_attempts(prometheus::BuildCounter()
                             .Name("leader_election_acquire_attempts_total")
                             .Help("Acquire attempts (creates of the key), by result: won, held (someone "
                                   "else holds the key), unknown (no answer: it may still land), error")
                             .Register(r)),
        heartbeat_failures(
            prometheus::BuildCounter()
                .Name("leader_election_heartbeat_failures_total")
                .Help("Failed lease renewals, by reason (timeout, conflict, disconnected, ...)")
                .Register(r)),
        token_validations(prometheus::BuildCounter()
                              .Name("leader_election_token_validations_total")
                              .Help("Fencing-token validations, by result: valid, invalid, error")
                              .Register(r)),
        health_check_failures(prometheus::BuildCounter()
                                  .Name("leader_election_health_check_failures_total")
                                  .Help("Health checks that failed or timed out")
                                  .Register(r)),
        callback_errors(prometheus::BuildCounter()
                            .Name("leader_election_callback_errors_total")
                            .Help("User callbacks that threw, by callback")
                            .Register(r)),
        revision_regressions(prometheus::BuildCounter()
                                 .Name("leader_election_revision_regressions_total")
                                 .Help("Times the key's revisions went backwards (bucket re-created or "
                                       "writes lost on the server); fencing tokens restart lower")
                                 .Register(r)),
        heartbeat_duration(prometheus::BuildHistogram()
                               .Name("leader_election_heartbeat_duration_seconds")
                               .Help("Round trip of successful lease renewals")
                               .Register(r)),
        leader_duration(prometheus::BuildHistogram()
                            .Name("leader_election_leader_duration_seconds")
                            .Help("How long each term of this instance lasted, observed when it ended")
                            .Register(r)),
        failover(prometheus::BuildHistogram()
                     .Name("leader_election_failover_seconds")
                     .Help("On promotion: time since the previous holder was known gone (its delete "
                           "seen, or its lease's expected expiry)")
                     .Register(r)),
        callback_duration(prometheus::BuildHistogram()
                              .Name("leader_election_callback_duration_seconds")
                              .Help("Run time of user callbacks, by callback")
                              .Register(r)) {}

  Family<Gauge>& is_leader;
  Family<Gauge>& term;
  Family<Gauge>& connection_status;
  Family<Gauge>& lease_remaining;
  Family<Counter>& transitions;
  Family<Counter>& acquire_attempts;
  Family<Counter>& heartbeat_failures;
  Family<Counter>& token_validations;
  Family<Counter>& health_check_failures;
  Family<Counter>& callback_errors;
  Family<Counter>& revision_regressions;
  Family<Histogram>& heartbeat_duration;
  Family<Histogram>& leader_duration;
  Family<Histogram>& failover;
  Family<Histogram>& callback_duration;
};

// One set of families per registry, registered on first use. A registry
// that died drops out; a new one at the same address has another control
// block, so it is never mistaken for the old one.
std::shared_ptr<const Families> families_of(const std::shared_ptr<prometheus::Registry>& registry) {
  static std::mutex mu;
  static std::map<std::weak_ptr<prometheus::Registry>, std::shared_ptr<const Families>, std::owner_less<>>
      cache;
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = cache.begin(); it != cache.end();) {
    it = it->first.expired() ? cache.erase(it) : std::next(it);
  }
  auto it = cache.find(registry);
  if (it != cache.end()) return it->second;
  auto families = std::make_shared<const Families>(*registry);
  cache.emplace(registry, families);
  return families;
}

Labels with(Labels labels, const std::string& name, std::string_view value) {
  labels.emplace(name, std::string(value));
  return labels;
}

// The series of one family that differ in one label: the expected values
// are resolved up front (so they show as 0 before anything happened, and
// need no lock); any other value is added on first use.
template <typename T>
class ByLabel {
 public:
  using Add = std::function<T&(const Labels&)>;
  ByLabel(Add add, Labels base, std::string name, std::initializer_list<std::string_view> expected)
      : add_(std::move(add)), base_(std::move(base)), name_(std::move(name)) {
    for (std::string_view v : expected) expected_.emplace_back(std::string(v), &add_(with(base_, name_, v)));
  }

  T& operator()(std::string_view value) {
    for (const auto& [v, metric] : expected_) {
      if (v == value) return *metric;
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto it = others_.find(value);
    if (it != others_.end()) return *it->second;
    T& metric = add_(with(base_, name_, value));
    others_.emplace(std::string(value), &metric);
    return metric;
  }

 private:
  const Add add_;
  const Labels base_;
  const std::string name_;
  std::vector<std::pair<std::string, T*>> expected_;
  std::mutex mu_;
  std::map<std::string, T*, std::less<>> others_;
};

class PrometheusMetrics final : public ElectionMetrics {
 public:
  PrometheusMetrics(std::shared_ptr<prometheus::Registry> registry, std::shared_ptr<const Families> f,
                    const Labels& labels)
      : registry_(std::move(registry)),
        families_(std::move(f)),
        is_leader_(families_->is_leader.Add(labels)),
        term_(families_->term.Add(labels)),
        connection_(families_->connection_status.Add(labels)),
        lease_remaining_(families_->lease_remaining.Add(labels)),
        to_leader_(families_->transitions.Add(with(labels, "to", "leader"))),
        to_follower_(families_->transitions.Add(with(labels, "to", "follower"))),
        health_check_failures_(families_->health_check_failures.Add(labels)),
        revision_regressions_(families_->revision_regressions.Add(labels)),
        heartbeat_(families_->heartbeat_duration.Add(labels, heartbeat_buckets())),
        leader_duration_(families_->leader_duration.Add(labels, leader_duration_buckets())),
        failover_(families_->failover.Add(labels, failover_buckets())),
        acquire_attempts_([f = families_](const Labels& l) -> Counter& { return f->acquire_attempts.Add(l); },
                          labels, "result", {"won", "held", "unknown", "error"}),
        heartbeat_failures_(
            [f = families_](const Labels& l) -> Counter& { return f->heartbeat_failures.Add(l); }, labels,
            "reason", {}),
        token_validations_(
            [f = families_](const Labels& l) -> Counter& { return f->token_validations.Add(l); }, labels,
            "result", {"valid", "invalid", "error"}),
        callback_errors_([f = families_](const Labels& l) -> Counter& { return f->callback_errors.Add(l); },
                         labels, "callback", {"on_promote", "on_demote", "on_leader_change", "on_error"}),
        callback_duration_(
            [f = families_](const Labels& l) -> Histogram& {
              return f->callback_duration.Add(l, callback_buckets());
            },
            labels, "callback", {}) {
    // The election assumes a connected connection until it hears otherwise.
    connection_.Set(1);
    ++g_alive;
  }

  ~PrometheusMetrics() override {
    // Normally the last term was demoted already. If not (a stop that timed
    // out), the series must not keep claiming leadership.
    if (leading_.exchange(false)) {
      is_leader_.Set(0);
      term_.Set(0);
      lease_remaining_.Set(0);
    }
    --g_alive;
  }

  void acquire_attempt(std::string_view result) override { acquire_attempts_(result).Increment(); }

  void promoted(std::uint64_t term, std::optional<Duration> failover) override {
    leading_ = true;
    is_leader_.Set(1);
    term_.Set(static_cast<double>(term));
    to_leader_.Increment();
    if (failover) failover_.Observe(seconds(*failover));
  }

  void demoted(DemoteReason, Duration held) override {
    leading_ = false;
    is_leader_.Set(0);
    term_.Set(0);
    lease_remaining_.Set(0);
    to_follower_.Increment();
    leader_duration_.Observe(seconds(held));
  }

  void heartbeat(Duration round_trip) override { heartbeat_.Observe(seconds(round_trip)); }

  void heartbeat_failure(std::string_view reason) override { heartbeat_failures_(reason).Increment(); }

  void revision_regression() override { revision_regressions_.Increment(); }

  void connection(ConnectionState state) override {
    connection_.Set(state == ConnectionState::connected ? 1 : 0);
  }

  void lease_remaining(Duration remaining) override { lease_remaining_.Set(seconds(remaining)); }

  void callback(std::string_view name, Duration took, bool threw) override {
    callback_duration_(name).Observe(seconds(took));
    if (threw) callback_errors_(name).Increment();
  }

  void token_validation(std::string_view result) override { token_validations_(result).Increment(); }

  void health_check_failure() override { health_check_failures_.Increment(); }

 private:
  const std::shared_ptr<prometheus::Registry> registry_;
  const std::shared_ptr<const Families> families_;
  std::atomic<bool> leading_{false};
  Gauge& is_leader_;
  Gauge& term_;
  Gauge& connection_;
  Gauge& lease_remaining_;
  Counter& to_leader_;
  Counter& to_follower_;
  Counter& health_check_failures_;
  Counter& revision_regressions_;
  Histogram& heartbeat_;
  Histogram& leader_duration_;
  Histogram& failover_;
  ByLabel<Counter> acquire_attempts_;
  ByLabel<Counter> heartbeat_failures_;
  ByLabel<Counter> token_validations_;
  ByLabel<Counter> callback_errors_;
  ByLabel<Histogram> callback_duration_;
};

}  // namespace

const std::vector<double>& heartbeat_buckets() {
  static const std::vector<double> b{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,    0.25,  0.5,    1,     2.5,  5};
  return b;
}

const std::vector<double>& failover_buckets() {
  static const std::vector<double> b{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                     1,     2.5,    5,     10,   15,    20,   30,  60};
  return b;
}

const std::vector<double>& leader_duration_buckets() {
  static const std::vector<double> b{0.1, 1, 10, 60, 300, 1800, 3600, 21600, 86400, 604800};
  return b;
}

const std::vector<double>& callback_buckets() {
  static const std::vector<double> b{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60};
  return b;
}

std::shared_ptr<ElectionMetrics> make_prometheus_metrics(std::shared_ptr<prometheus::Registry> registry,
                                                         const std::string& bucket, const std::string& role,
                                                         const std::string& instance) {
  if (!registry) return nullptr;
  auto families = families_of(registry);
  const Labels labels{{"bucket", bucket}, {"role", role}, {"instance", instance}};
  return std::make_shared<PrometheusMetrics>(std::move(registry), std::move(families), labels);
}

std::size_t prometheus_metrics_alive() noexcept { return g_alive.load(); }

}  // namespace leader::detail
