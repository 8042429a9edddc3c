#include "fleet.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>

#include "wait.h"

namespace leader::chaos {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::HistoryEvent;

constexpr auto kPoll = 5ms;

FencingToken token_of(const HistoryEvent& e) {
  return FencingToken::parse(e.get("token")).value_or(FencingToken{});
}

}  // namespace

Fleet::Fleet(FleetOptions options)
    : options_(std::move(options)),
      history_path_(options_.dir + "/history"),
      fence_path_(options_.dir + "/fence-" + options_.role),
      harness_(history_path_, "harness"),
      reader_(history_path_) {}

Fleet::~Fleet() {
  for (auto& m : members_) m->process.reset();  // SIGKILL and reap
}

std::string Fleet::spawn() {
  auto m = std::make_unique<Member>();
  m->id = "c" + std::to_string(next_id_++);
  std::string url = options_.url;
  if (options_.proxy_upstream_port > 0) {
    m->proxy = std::make_unique<testing::TcpProxy>(options_.proxy_upstream_port);
    url = m->proxy->url();
  }
  std::vector<std::string> argv = {options_.candidate_binary,
                                   "--url",
                                   url,
                                   "--bucket",
                                   options_.bucket,
                                   "--role",
                                   options_.role,
                                   "--instance",
                                   m->id,
                                   "--ttl",
                                   std::to_string(options_.ttl.count()),
                                   "--storage",
                                   options_.storage,
                                   "--replicas",
                                   std::to_string(options_.replicas),
                                   "--history",
                                   history_path_,
                                   "--fence",
                                   fence_path_,
                                   "--log",
                                   options_.dir + "/" + m->id + ".log"};
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  // None of the test's sockets (servers, proxies) leak into the candidate.
  m->process = std::make_unique<testing::ChildProcess>(argv, testing::InheritedFds::close);
  if (!m->process->running()) throw std::runtime_error("spawn " + m->id + ": " + m->process->error());
  members_.push_back(std::move(m));
  return members_.back()->id;
}

std::vector<std::string> Fleet::spawn(int count) {
  std::vector<std::string> ids;
  ids.reserve(static_cast<std::size_t>(std::max(count, 0)));
  for (int i = 0; i < count; ++i) ids.push_back(spawn());
  return ids;
}

bool Fleet::wait_started(std::chrono::milliseconds timeout) {
  bool failed = false;  // one exited before its campaign began
  const bool done = eventually(
      [&] {
        refresh();
        for (const auto& m : members_) {
          if (m->stopping) continue;
          const bool campaigning = std::any_of(events_.begin(), events_.end(), [&](const HistoryEvent& e) {
            return e.source == m->id && e.event == "campaigning";
          });
          if (campaigning) continue;
          failed = failed || !m->process->running();
          return failed;
        }
        return true;
      },
      timeout, 20ms);
  return done && !failed;
}

void Fleet::fault(const std::string& kind, const std::string& target) {
  harness_.append("fault", {{"kind", kind}, {"target", target}});
}

void Fleet::heal(const std::string& kind, bool quorum, bool expect, std::chrono::milliseconds bound) {
  testing::HistoryFields fields = {
      {"kind", kind}, {"quorum", quorum ? "1" : "0"}, {"expect", expect ? "1" : "0"}};
  if (bound.count() > 0) fields.emplace_back("bound_ms", std::to_string(bound.count()));
  harness_.append("heal", fields);
}

void Fleet::refresh() {
  for (auto& m : members_) {
    if (!m->process->running() || m->stopping) continue;
    const auto status = m->process->wait_exit(0ms);
    if (!status) continue;
    harness_.append("exit", {{"instance", m->id}, {"status", std::to_string(*status)}});
  }
  for (HistoryEvent& e : reader_.poll()) {
    follow(e);
    events_.push_back(std::move(e));
  }
}

const std::vector<HistoryEvent>& Fleet::events() {
  refresh();
  return events_;
}

void Fleet::follow(const HistoryEvent& e) {
  if (e.source == "harness") {
    if (e.event == "kill" || e.event == "exit") beliefs_[e.get("instance")].open = false;
    return;
  }
  Belief& b = beliefs_[e.source];
  if (e.event == "promote") {
    b = Belief{token_of(e), e.at_ns, e.number("deadline", e.at_ns), true};
  } else if ((e.event == "lease" || e.event == "act") && b.open && token_of(e) == b.token) {
    b.deadline_ns = std::max(b.deadline_ns, e.number("deadline", 0));
  } else if (e.event == "demote" || e.event == "exit") {
    b.open = false;
  }
}

std::optional<std::string> Fleet::leader() {
  refresh();
  const std::int64_t now = testing::monotonic_ns();
  std::optional<std::string> best;
  std::int64_t best_start = 0;
  for (const auto& [id, b] : beliefs_) {
    if (b.open && b.deadline_ns > now && (!best || b.start_ns > best_start)) {
      best = id;
      best_start = b.start_ns;
    }
  }
  return best;
}

std::optional<FencingToken> Fleet::term_of(const std::string& instance) {
  refresh();
  const auto it = beliefs_.find(instance);
  if (it == beliefs_.end() || !it->second.open) return std::nullopt;
  return it->second.token;
}

std::optional<std::int64_t> Fleet::term_start(const std::string& instance) {
  refresh();
  const auto it = beliefs_.find(instance);
  if (it == beliefs_.end() || !it->second.open) return std::nullopt;
  return it->second.start_ns;
}

std::optional<std::string> Fleet::wait_for_leader(std::chrono::milliseconds timeout, std::int64_t since_ns,
                                                  const std::string& not_this) {
  std::optional<std::string> found;
  eventually(
      [&] {
        found = leader();
        return found && *found != not_this && beliefs_[*found].start_ns >= since_ns;
      },
      timeout, kPoll);
  if (found && (*found == not_this || beliefs_[*found].start_ns < since_ns)) found.reset();
  return found;
}

std::optional<HistoryEvent> Fleet::wait_for_event(const std::string& source, const std::string& event,
                                                  std::int64_t since_ns, std::chrono::milliseconds timeout,
                                                  const std::string& key, const std::string& value) {
  std::optional<HistoryEvent> found;
  std::size_t scanned = 0;
  eventually(
      [&] {
        refresh();
        for (; scanned < events_.size(); ++scanned) {
          const HistoryEvent& e = events_[scanned];
          if (e.source == source && e.event == event && e.at_ns >= since_ns &&
              (key.empty() || e.get(key) == value)) {
            found = e;
            return true;
          }
        }
        return false;
      },
      timeout, kPoll);
  return found;
}

Fleet::Member& Fleet::member(const std::string& instance) {
  for (auto& m : members_) {
    if (m->id == instance) return *m;
  }
  throw std::out_of_range("no candidate " + instance);
}

const Fleet::Member* Fleet::find(const std::string& instance) const {
  for (const auto& m : members_) {
    if (m->id == instance) return m.get();
  }
  return nullptr;
}

void Fleet::kill(const std::string& instance) {
  Member& m = member(instance);
  m.stopping = true;
  m.process->kill();
  m.paused = false;
  harness_.append("kill", {{"instance", instance}});
}

void Fleet::pause(const std::string& instance) {
  Member& m = member(instance);
  m.process->signal(SIGSTOP);
  m.paused = true;
  // Returns once it is stopped (or gone), without reaping it: WNOWAIT leaves
  // the child's state to ChildProcess.
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(m.process->pid()), &info, WSTOPPED | WEXITED | WNOWAIT) != 0 &&
         errno == EINTR) {
  }
}

void Fleet::resume(const std::string& instance) {
  Member& m = member(instance);
  m.process->signal(SIGCONT);
  m.paused = false;
  harness_.append("resume", {{"instance", instance}});
}

testing::TcpProxy& Fleet::proxy(const std::string& instance) {
  Member& m = member(instance);
  if (!m.proxy) throw std::logic_error(instance + " has no proxy");
  return *m.proxy;
}

std::vector<std::string> Fleet::running() const {
  std::vector<std::string> ids;
  for (const auto& m : members_) {
    if (m->process->running() && !m->stopping) ids.push_back(m->id);
  }
  return ids;
}

pid_t Fleet::pid_of(const std::string& instance) const {
  const Member* m = find(instance);
  return m == nullptr ? -1 : m->process->pid();
}

void Fleet::finish(std::chrono::milliseconds timeout) {
  refresh();
  harness_.append("finish");
  std::vector<Member*> stopping;
  for (auto& m : members_) {
    if (!m->process->running() || m->stopping) continue;
    if (m->proxy) m->proxy->set_mode(testing::TcpProxy::Mode::pass);
    if (m->paused) resume(m->id);
    m->stopping = true;
    m->process->signal(SIGTERM);
    stopping.push_back(m.get());
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (Member* m : stopping) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (!m->process->wait_exit(std::max(left, 0ms))) {
      m->process->kill();
      harness_.append("kill", {{"instance", m->id}, {"why", "no exit after SIGTERM"}});
    }
  }
  refresh();
}

}  // namespace leader::chaos
