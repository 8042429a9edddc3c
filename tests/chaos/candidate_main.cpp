// leader_chaos_candidate: one candidate of a chaos run, in a process of its
// own, using only the library's public API. It records everything it
// believes and does in the shared history (tests/support/history.h): its
// promotions and demotions, every move of its lease deadline, and every
// leader-only act, a write to the fence file (fence.h) made after checking
// Term::lost(). After a SIGCONT it also makes a zombie write with the token
// of its last term without checking first, as work in flight would, and
// records validate_token() of that term. SIGTERM stops the election
// (releasing the key) and exits 0.

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "fence.h"
#include "history.h"
#include "leader/leader.h"

namespace {

using namespace std::chrono_literals;
using leader::testing::HistoryWriter;
using leader::testing::monotonic_ns;

constexpr const char* kUsage =
    "usage: leader_chaos_candidate --url URL --instance ID --history FILE --fence FILE [flags]\n"
    "  --url URL             NATS server URL(s), comma-separated\n"
    "  --bucket NAME         KV bucket (default: chaos)\n"
    "  --role NAME           role (default: role)\n"
    "  --instance ID         instance id, unique per process; also the connection name\n"
    "  --ttl MS              lease in ms (default: 1000)\n"
    "  --storage file|memory bucket storage (default: file)\n"
    "  --replicas N          bucket replicas (default: 1)\n"
    "  --history FILE        the shared history to append to\n"
    "  --fence FILE          the fence file of the role\n"
    "  --act-interval MS     time between leader-only acts (default: 20)\n"
    "  --ping-interval MS    client ping interval (default: ttl / 4, at most 1000)\n"
    "  --io-threads N        KV threads of the connection (default: 2)\n"
    "  --log FILE            append stderr (the library's log) to FILE\n";

struct Flags {
  std::string url;
  std::string bucket = "chaos";
  std::string role = "role";
  std::string instance;
  std::chrono::milliseconds ttl{1000};
  leader::Storage storage = leader::Storage::file;
  int replicas = 1;
  std::string history;
  std::string fence;
  std::chrono::milliseconds act_interval{20};
  std::chrono::milliseconds ping_interval{0};
  int io_threads = 2;
  std::string log;
};

std::optional<Flags> parse_flags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string name = argv[i];
    if (i + 1 >= argc) return std::nullopt;
    const std::string value = argv[++i];
    try {
      if (name == "--url") {
        f.url = value;
      } else if (name == "--bucket") {
        f.bucket = value;
      } else if (name == "--role") {
        f.role = value;
      } else if (name == "--instance") {
        f.instance = value;
      } else if (name == "--ttl") {
        f.ttl = std::chrono::milliseconds(std::stoll(value));
      } else if (name == "--storage" && (value == "file" || value == "memory")) {
        f.storage = value == "file" ? leader::Storage::file : leader::Storage::memory;
      } else if (name == "--replicas") {
        f.replicas = std::stoi(value);
      } else if (name == "--history") {
        f.history = value;
      } else if (name == "--fence") {
        f.fence = value;
      } else if (name == "--act-interval") {
        f.act_interval = std::chrono::milliseconds(std::stoll(value));
      } else if (name == "--ping-interval") {
        f.ping_interval = std::chrono::milliseconds(std::stoll(value));
      } else if (name == "--io-threads") {
        f.io_threads = std::stoi(value);
      } else if (name == "--log") {
        f.log = value;
      } else {
        return std::nullopt;
      }
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  if (f.url.empty() || f.instance.empty() || f.history.empty() || f.fence.empty()) return std::nullopt;
  if (f.ping_interval.count() <= 0) f.ping_interval = std::min<std::chrono::milliseconds>(1000ms, f.ttl / 4);
  return f;
}

std::string ns_text(std::chrono::steady_clock::time_point t) {
  return std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

class Candidate {
 public:
  Candidate(const Flags& flags, HistoryWriter& history, leader::chaos::FenceFile& fence)
      : flags_(flags), history_(history), fence_(fence) {}

  ~Candidate() { stop(); }
  Candidate(const Candidate&) = delete;
  Candidate& operator=(const Candidate&) = delete;

  /// Connects and starts campaigning; throws leader::Error.
  void start() {
    leader::ConnectionOptions o;
    o.url = flags_.url;
    o.name = flags_.instance;
    o.ping_interval = flags_.ping_interval;
    o.io_threads = flags_.io_threads;
    connection_ = leader::Connection::connect(o);

    leader::Config c;
    c.bucket = flags_.bucket;
    c.role = flags_.role;
    c.instance_id = flags_.instance;
    c.ttl = flags_.ttl;
    c.storage = flags_.storage;
    c.replicas = flags_.replicas;
    leader::Callbacks cb;
    cb.on_promote = [this](const leader::Term& term) { on_promote(term); };
    cb.on_demote = [this](leader::DemoteReason reason) { on_demote(reason); };
    cb.on_leader_change = [this](const std::optional<leader::LeaderInfo>& who) {
      history_.append("leader",
                      {{"role", flags_.role},
                       {"who", who ? (who->instance_id.empty() ? "unknown" : who->instance_id) : "none"},
                       {"term", std::to_string(who ? who->term : 0)}});
    };
    cb.on_error = [this](const leader::ErrorInfo& e) {
      history_.append("error",
                      {{"role", flags_.role}, {"code", std::to_string(e.code.value())}, {"msg", e.message}});
    };
    election_ = std::make_unique<leader::Election>(connection_, c, cb);
    worker_ = std::thread([this] { work(); });
    history_.append("start", {{"role", flags_.role}, {"pid", std::to_string(::getpid())}});
    election_->start();
  }

  /// Ends the election (on_demote runs, the key is released) and the worker.
  void stop() {
    if (election_) election_->stop();
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  /// After SIGCONT: the zombie write and the validation of the last term.
  void resumed() {
    history_.append("resume", {{"role", flags_.role}});
    std::optional<leader::Term> term;
    {
      std::lock_guard<std::mutex> lock(mu_);
      term = last_term_;
    }
    if (!term) return;
    const leader::FencingToken token = term->fencing_token();
    const auto out = fence_.write(token);
    history_.append_at(out.at_ns, "zombie",
                       {{"role", flags_.role},
                        {"token", token.to_string()},
                        {"accepted", out.accepted ? "1" : "0"},
                        {"highest", out.highest.to_string()}});
    const std::int64_t asked = monotonic_ns();
    const bool valid = election_->validate_token(token);
    history_.append_at(asked, "validate",
                       {{"role", flags_.role}, {"token", token.to_string()}, {"valid", valid ? "1" : "0"}});
  }

 private:
  void on_promote(const leader::Term& term) {
    // Recorded before the worker may act in this term: every act of the
    // term is stamped after its promotion.
    const auto deadline = term.deadline();
    leader::testing::HistoryFields fields = {{"role", flags_.role},
                                             {"token", term.fencing_token().to_string()}};
    if (!term.lost()) fields.emplace_back("deadline", ns_text(deadline));
    history_.append("promote", fields);
    {
      std::lock_guard<std::mutex> lock(mu_);
      term_ = term;
      last_term_ = term;
    }
    cv_.notify_all();
  }

  void on_demote(leader::DemoteReason reason) {
    std::optional<leader::Term> ended;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ended.swap(term_);
    }
    history_.append("demote", {{"role", flags_.role},
                               {"token", ended ? ended->fencing_token().to_string() : ""},
                               {"reason", leader::to_string(reason)}});
  }

  /// While leading: records each move of the lease deadline (checked every
  /// 2 ms, well under a heartbeat) and acts every act_interval.
  void work() {
    std::optional<std::chrono::steady_clock::time_point> recorded;
    auto next_act = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, 2ms);
      if (stopping_ || !term_) {
        recorded.reset();
        continue;
      }
      const leader::Term term = *term_;
      lock.unlock();
      const auto deadline = term.deadline();
      if (!term.lost() && deadline != recorded) {
        recorded = deadline;
        history_.append("lease", {{"role", flags_.role},
                                  {"token", term.fencing_token().to_string()},
                                  {"deadline", ns_text(deadline)}});
      }
      if (std::chrono::steady_clock::now() >= next_act) {
        act(term);
        next_act = std::chrono::steady_clock::now() + flags_.act_interval;
      }
      lock.lock();
    }
  }

  void act(const leader::Term& term) {
    std::chrono::steady_clock::time_point deadline;
    const leader::FencingToken token = term.fencing_token();
    const auto out = fence_.write(token, [&] {
      if (term.lost()) return false;
      deadline = term.deadline();
      return true;
    });
    if (!out.attempted) return;
    history_.append_at(out.at_ns, "act",
                       {{"role", flags_.role},
                        {"token", token.to_string()},
                        {"deadline", ns_text(deadline)},
                        {"accepted", out.accepted ? "1" : "0"},
                        {"highest", out.highest.to_string()}});
  }

  Flags flags_;
  HistoryWriter& history_;
  leader::chaos::FenceFile& fence_;
  std::shared_ptr<leader::Connection> connection_;
  std::unique_ptr<leader::Election> election_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<leader::Term> term_;       // the current term; under mu_
  std::optional<leader::Term> last_term_;  // the last term it led; under mu_
  bool stopping_ = false;                  // under mu_
  std::thread worker_;
};

}  // namespace

int main(int argc, char** argv) {
  const auto flags = parse_flags(argc, argv);
  if (!flags) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  if (!flags->log.empty() && std::freopen(flags->log.c_str(), "a", stderr) == nullptr) return 2;
  // Every thread created from here on inherits the mask: the signals are
  // taken only by sigwait() below. A blocked SIGCONT still continues the
  // process; sigwait() then tells us it happened.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGCONT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  try {
    HistoryWriter history(flags->history, flags->instance);
    leader::chaos::FenceFile fence(flags->fence);
    Candidate candidate(*flags, history, fence);
    try {
      candidate.start();
      // start() has returned: the bucket is open and the campaign runs.
      // The harness injects no fault before every candidate got here.
      history.append("campaigning", {{"role", flags->role}});
    } catch (const std::exception& e) {
      history.append("error", {{"role", flags->role}, {"code", "start"}, {"msg", e.what()}});
      return 3;
    }
    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (sig == SIGCONT) {
        candidate.resumed();
        continue;
      }
      break;
    }
    candidate.stop();
    history.append("exit", {{"role", flags->role}, {"code", "0"}});
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "leader_chaos_candidate %s: %s\n", flags->instance.c_str(), e.what());
    return 4;
  }
}
