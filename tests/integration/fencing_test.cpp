// Fencing in the control-manager example (examples/control-manager): every
// reconcile iteration writes its result to a state key with compare-and-swap
// and a "highest token seen" check, so a write from a stale leader is
// rejected. The end-to-end tests spawn the example binary
// (LEADER_CONTROL_MANAGER_BIN) against a nats-server of their own
// (leader::testing::NatsServer) and read the state key with nats.c. Every
// child is SIGKILLed and reaped by its PID when the test ends, also when it
// fails (SIGKILL ends a SIGSTOPped child too). Time bounds derive from each
// test's config and are wide on purpose.

#include <nats/nats.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../../examples/control-manager/fenced_store.h"
#include "leader/leader.h"
#include "support/child_process.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"
#include "support/wait.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using leader::FencingToken;
using leader::testing::ChildProcess;
using leader::testing::eventually;
using leader::testing::InheritedFds;
using leader::testing::NatsServer;

#ifndef LEADER_CONTROL_MANAGER_BIN
#define LEADER_CONTROL_MANAGER_BIN ""
#endif

/// The value of `key=` in an event line ("" when absent).
std::string field(const std::string& line, const std::string& key) {
  const std::string needle = " " + key + "=";
  const auto at = line.find(needle);
  if (at == std::string::npos) return "";
  const auto begin = at + needle.size();
  const auto end = line.find(' ', begin);
  return line.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

/// The CLOCK_REALTIME stamp (ns) that starts an event line; 0 if none.
long long line_time_ns(const std::string& line) {
  try {
    return std::stoll(line.substr(0, line.find(' ')));
  } catch (...) {
    return 0;
  }
}

long long realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

/// The state letter of /proc/<pid>/stat ('T' when stopped); '?' if unknown.
char process_state(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return '?';
  const auto paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return '?';
  return line[paren + 2];
}

/// The complete lines of `output` containing `needle`, in order.
std::vector<std::string> lines_with(const std::string& output, const std::string& needle) {
  std::vector<std::string> lines;
  std::size_t pos = 0;
  while (pos < output.size()) {
    const auto eol = output.find('\n', pos);
    if (eol == std::string::npos) break;
    std::string line = output.substr(pos, eol - pos);
    if (line.find(needle) != std::string::npos) lines.push_back(line);
    pos = eol + 1;
  }
  return lines;
}

/// A nats.c connection of the test, to read (and seed) the state key.
class StateClient {
 public:
  StateClient(const std::string& url, const std::string& bucket) {
    natsStatus s = natsConnection_ConnectTo(&nc_, url.c_str());
    if (s == NATS_OK) s = natsConnection_JetStream(&js_, nc_, nullptr);
    if (s == NATS_OK) {
      s = js_KeyValue(&kv_, js_, bucket.c_str());
      if (s != NATS_OK) {
        kvConfig cfg;
        kvConfig_Init(&cfg);
        cfg.Bucket = bucket.c_str();
        kv_ = nullptr;
        s = js_CreateKeyValue(&kv_, js_, &cfg);
      }
    }
    if (s != NATS_OK) {
      natsStatus last = NATS_OK;
      const char* detail = nats_GetLastError(&last);
      error_ = std::string(natsStatus_GetText(s)) + ": " + (detail != nullptr ? detail : "");
    }
  }
  ~StateClient() {
    if (kv_ != nullptr) kvStore_Destroy(kv_);
    if (js_ != nullptr) jsCtx_Destroy(js_);
    if (nc_ != nullptr) natsConnection_Destroy(nc_);
  }
  StateClient(const StateClient&) = delete;
  StateClient& operator=(const StateClient&) = delete;

  bool ok() const { return kv_ != nullptr; }
  const std::string& error() const { return error_; }

  /// The value of `key` parsed as JSON; nullopt when absent or unreadable.
  std::optional<nlohmann::json> get(const std::string& key) {
    kvEntry* e = nullptr;
    if (kvStore_Get(&e, kv_, key.c_str()) != NATS_OK || e == nullptr) return std::nullopt;
    const std::string value = kvEntry_ValueString(e) != nullptr ? kvEntry_ValueString(e) : "";
    kvEntry_Destroy(e);
    auto json = nlohmann::json::parse(value, nullptr, false);
    if (json.is_discarded()) return std::nullopt;
    return json;
  }

  bool put(const std::string& key, const nlohmann::json& value) {
    const std::string text = value.dump();
    std::uint64_t rev = 0;
    return kvStore_Put(&rev, kv_, key.c_str(), text.data(), static_cast<int>(text.size())) == NATS_OK;
  }

 private:
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
  kvStore* kv_ = nullptr;
  std::string error_;
};

std::optional<FencingToken> token_of(const std::optional<nlohmann::json>& state) {
  if (!state || !state->contains("token") || !(*state)["token"].is_string()) return std::nullopt;
  return FencingToken::parse((*state)["token"].get<std::string>());
}

// ---------------------------------------------------------------------------
// The comparison rule, without a server.

TEST(FencingRule, HigherEpochWinsOverHigherRevision) {
  // The election bucket was re-created: its revisions restarted at 1, its
  // stream creation time (the epoch) moved forward.
  const FencingToken old_epoch{1763762400123, 9000};
  const FencingToken new_epoch{1763762999000, 1};
  EXPECT_LT(old_epoch, new_epoch);
  EXPECT_GT(new_epoch, old_epoch);
  // A write of the new epoch is accepted over the old epoch's highest token;
  // a stale leader of the old epoch is rejected whatever its revision.
  EXPECT_TRUE(control_manager::write_allowed(new_epoch, old_epoch));
  EXPECT_FALSE(control_manager::write_allowed(old_epoch, new_epoch));
  EXPECT_FALSE(control_manager::write_allowed(FencingToken{1763762400123, 1000000}, new_epoch));

  // Within an epoch the revision decides; the same term may write again;
  // an empty key accepts any token.
  EXPECT_TRUE(control_manager::write_allowed(FencingToken{5, 8}, FencingToken{5, 7}));
  EXPECT_FALSE(control_manager::write_allowed(FencingToken{5, 7}, FencingToken{5, 8}));
  EXPECT_TRUE(control_manager::write_allowed(FencingToken{5, 7}, FencingToken{5, 7}));
  EXPECT_TRUE(control_manager::write_allowed(FencingToken{5, 7}, std::nullopt));

  // The state key stores the text form; it round-trips and keeps the order.
  const auto parsed_old = FencingToken::parse(old_epoch.to_string());
  const auto parsed_new = FencingToken::parse(new_epoch.to_string());
  ASSERT_TRUE(parsed_old.has_value());
  ASSERT_TRUE(parsed_new.has_value());
  EXPECT_EQ(*parsed_old, old_epoch);
  EXPECT_EQ(*parsed_new, new_epoch);
  EXPECT_EQ(new_epoch.to_string(), "1763762999000.1");
  // Text order is not token order ("9.5" > "10.1" as strings): a resource
  // must compare parsed tokens, never the text.
  const auto nine = FencingToken::parse("9.5");
  const auto ten = FencingToken::parse("10.1");
  ASSERT_TRUE(nine.has_value() && ten.has_value());
  EXPECT_GT(std::string("9.5"), std::string("10.1"));
  EXPECT_LT(*nine, *ten);
  EXPECT_FALSE(control_manager::write_allowed(*nine, *ten));
}

// ---------------------------------------------------------------------------
// End to end, with the example binary.

class FencingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    binary_ = LEADER_CONTROL_MANAGER_BIN;
    if (binary_.empty()) GTEST_SKIP() << "control-manager example not built (LEADER_BUILD_EXAMPLES=OFF)";
    // Short enough to take a "-state" suffix.
    bucket_ = leader::testing::bucket_for_current_test(56);
    state_bucket_ = bucket_ + "-state";
    server_ = std::make_unique<NatsServer>();
  }

  /// Spawns a control-manager for role "scheduler" with `extra` flags.
  std::unique_ptr<ChildProcess> spawn(const std::string& id, std::chrono::milliseconds ttl,
                                      const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {binary_,
                                     "--nats-url",
                                     server_->url(),
                                     "--bucket",
                                     bucket_,
                                     "--role",
                                     kRole,
                                     "--id",
                                     id,
                                     "--ttl",
                                     std::to_string(ttl.count()) + "ms",
                                     "--work-interval",
                                     std::to_string(kWorkInterval.count()) + "ms"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    // It inherits none of this process's NATS sockets.
    return std::make_unique<ChildProcess>(argv, InheritedFds::close);
  }

  static constexpr const char* kRole = "scheduler";
  static constexpr std::chrono::milliseconds kWorkInterval{200};
  std::string binary_;
  std::string bucket_;
  std::string state_bucket_;
  std::unique_ptr<NatsServer> server_;
};

// A leader passes its lost() check, is paused (SIGSTOP) past its lease
// while another instance takes over and writes with a higher token, and is
// resumed: its pending write must be rejected, and the state key must still
// hold the new leader's token.
TEST_F(FencingTest, StaleLeaderWriteIsRejectedAfterPause) {
  const auto ttl = 2000ms;
  // Long enough that the test surely SIGSTOPs A inside it.
  const auto write_delay = 1500ms;

  auto a = spawn("cm-a", ttl, {"--write-delay", std::to_string(write_delay.count()) + "ms"});
  ASSERT_TRUE(a->running()) << a->error();
  const auto a_started = a->wait_for_line(" event=started ", 15s);
  ASSERT_TRUE(a_started.has_value()) << "A never started; its output:\n" << a->output();
  const auto heartbeat = std::chrono::milliseconds(std::stoll(field(*a_started, "heartbeat_ms")));
  ASSERT_TRUE(a->wait_for_line(" event=promoted ", ttl + 15s).has_value()) << "A never led:\n" << a->output();

  auto b = spawn("cm-b", ttl);
  ASSERT_TRUE(b->running()) << b->error();
  ASSERT_TRUE(b->wait_for_line(" event=leader leader=cm-a ", 15s).has_value())
      << "B never saw A lead; its output:\n"
      << b->output();

  StateClient state(server_->url(), state_bucket_);
  ASSERT_TRUE(state.ok()) << state.error();

  // A writes normally first: the key holds A's token.
  const auto per_write = kWorkInterval + write_delay;
  const auto a_write = a->wait_for_line(" event=write ", per_write + 10s);
  ASSERT_TRUE(a_write.has_value()) << "A never wrote; its output:\n" << a->output();
  const auto a_token = FencingToken::parse(field(*a_write, "token"));
  ASSERT_TRUE(a_token.has_value()) << *a_write;
  EXPECT_GE(token_of(state.get(kRole)).value_or(FencingToken{}), *a_token);

  // The next iteration passed lost() and sleeps before its write: pause A.
  const auto pending = a->wait_for_line(" event=write_pending ", per_write + 10s);
  ASSERT_TRUE(pending.has_value()) << a->output();
  a->signal(SIGSTOP);
  const long long stopped_after_ms = (realtime_ns() - line_time_ns(*pending)) / 1000000;
  ASSERT_TRUE(eventually([&] { return process_state(a->pid()) == 'T'; }, 5s)) << "A did not stop";
  ASSERT_LT(stopped_after_ms, write_delay.count() / 2)
      << "A was stopped too late to be sure its write was still pending (machine too slow)";
  EXPECT_EQ(field(*pending, "token"), a_token->to_string());

  // A's lease runs out (A is frozen: no renewals); B takes over and writes.
  const auto b_promoted = b->wait_for_line(" event=promoted ", ttl + heartbeat + 10s);
  ASSERT_TRUE(b_promoted.has_value()) << "B never took over; its output:\n" << b->output();
  const auto b_write = b->wait_for_line(" event=write ", kWorkInterval + 10s);
  ASSERT_TRUE(b_write.has_value()) << "B never wrote; its output:\n" << b->output();
  const auto b_token = FencingToken::parse(field(*b_write, "token"));
  ASSERT_TRUE(b_token.has_value()) << *b_write;
  EXPECT_GT(*b_token, *a_token) << "the new term's token must be higher";
  EXPECT_GT(std::stoull(field(*b_write, "n")), std::stoull(field(*a_write, "n")));
  EXPECT_EQ(token_of(state.get(kRole)), b_token);

  // Resume A: its pending write goes ahead without a new lost() check and
  // must be rejected by the token check.
  a->signal(SIGCONT);
  const auto fenced = a->wait_for_line(" event=fenced ", write_delay + 10s);
  ASSERT_TRUE(fenced.has_value()) << "A's stale write was not fenced; its output:\n" << a->output();
  std::printf("[ fenced   ] %s\n", fenced->c_str());
  EXPECT_EQ(field(*fenced, "token"), a_token->to_string());
  const auto highest = FencingToken::parse(field(*fenced, "highest"));
  ASSERT_TRUE(highest.has_value()) << *fenced;
  EXPECT_EQ(*highest, *b_token);

  // A demotes (its lease expired) and writes nothing more; B keeps writing.
  ASSERT_TRUE(a->wait_for_line(" event=demoted ", ttl + 10s).has_value()) << a->output();
  ASSERT_TRUE(b->wait_for_line(" event=write ", per_write + 10s).has_value()) << b->output();
  std::this_thread::sleep_for(per_write + kWorkInterval);
  const std::string a_output = a->output();
  const auto after_pending = a_output.find(*pending);
  ASSERT_NE(after_pending, std::string::npos);
  EXPECT_TRUE(lines_with(a_output.substr(after_pending), " event=write ").empty())
      << "A wrote after it was paused:\n"
      << a_output;
  const auto final_state = state.get(kRole);
  ASSERT_TRUE(final_state.has_value());
  EXPECT_EQ(token_of(final_state), b_token) << final_state->dump();
  EXPECT_EQ((*final_state)["holder"], "cm-b") << final_state->dump();

  std::printf("[ lines    ] A:\n%s[ lines    ] B:\n%s", a_output.c_str(), b->output().c_str());
}

// The example compares tokens epoch first, end to end: a state key holding
// a token of a later epoch with a lower revision rejects the leader's
// writes; one holding a token of an earlier epoch with a far higher
// revision accepts them.
TEST_F(FencingTest, ControlManagerComparesEpochFirst) {
  const auto ttl = 2000ms;
  {
    // One term before the example's, so its revision is above 1.
    leader::ConnectionOptions connection_options;
    connection_options.url = server_->url();
    connection_options.name = "warm-up";
    auto connection = leader::Connection::connect(connection_options);
    leader::Config config;
    config.bucket = bucket_;
    config.role = kRole;
    config.instance_id = "warm-up";
    config.ttl = ttl;
    leader::Election warm_up(connection, config);
    warm_up.start();
    ASSERT_TRUE(warm_up.wait_for_leadership(ttl + 10s));
    warm_up.stop();
  }

  // The state bucket exists already (made by someone else, other settings):
  // the example uses it as it is.
  StateClient state(server_->url(), state_bucket_);
  ASSERT_TRUE(state.ok()) << state.error();
  const FencingToken later_epoch{32503680000000, 1};  // year 3000, revision 1
  ASSERT_TRUE(state.put(kRole, {{"token", later_epoch.to_string()}, {"holder", "future"}, {"n", 41}}));

  auto c = spawn("cm-c", ttl);
  ASSERT_TRUE(c->running()) << c->error();
  ASSERT_TRUE(c->wait_for_line(" event=promoted ", ttl + 15s).has_value()) << c->output();
  const auto fenced = c->wait_for_line(" event=fenced ", kWorkInterval + 10s);
  ASSERT_TRUE(fenced.has_value()) << "a later epoch's token did not fence the writes:\n" << c->output();
  std::printf("[ fenced   ] %s\n", fenced->c_str());
  const auto c_token = FencingToken::parse(field(*fenced, "token"));
  ASSERT_TRUE(c_token.has_value()) << *fenced;
  EXPECT_LT(c_token->epoch, later_epoch.epoch);
  EXPECT_GT(c_token->revision, later_epoch.revision) << "the winner should have the lower revision";
  EXPECT_EQ(FencingToken::parse(field(*fenced, "highest")), later_epoch);
  const auto kept = state.get(kRole);
  ASSERT_TRUE(kept.has_value());
  EXPECT_EQ((*kept)["holder"], "future");
  EXPECT_EQ((*kept)["n"], 41);
  EXPECT_TRUE(lines_with(c->output(), " event=write ").empty()) << c->output();

  // An earlier epoch with a far higher revision: the next term writes.
  const FencingToken earlier_epoch{1, 1000000000000};
  ASSERT_TRUE(state.put(kRole, {{"token", earlier_epoch.to_string()}, {"holder", "past"}, {"n", 41}}));
  c->signal(SIGTERM);
  const auto status = c->wait_exit(10s);
  ASSERT_TRUE(status.has_value()) << "C did not exit after SIGTERM";
  auto d = spawn("cm-d", ttl);
  ASSERT_TRUE(d->running()) << d->error();
  ASSERT_TRUE(d->wait_for_line(" event=promoted ", ttl + 15s).has_value()) << d->output();
  const auto write = d->wait_for_line(" event=write ", kWorkInterval + 10s);
  ASSERT_TRUE(write.has_value()) << "an earlier epoch's token blocked the writes:\n" << d->output();
  std::printf("[ write    ] %s\n", write->c_str());
  const auto d_token = FencingToken::parse(field(*write, "token"));
  ASSERT_TRUE(d_token.has_value()) << *write;
  EXPECT_GT(d_token->epoch, earlier_epoch.epoch);
  EXPECT_LT(d_token->revision, earlier_epoch.revision);
  EXPECT_EQ(field(*write, "n"), "42");
  const auto written = state.get(kRole);
  ASSERT_TRUE(written.has_value());
  EXPECT_EQ(token_of(written), d_token) << written->dump();
  EXPECT_EQ((*written)["holder"], "cm-d");
}

}  // namespace
