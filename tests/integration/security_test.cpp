// Credentials and TLS against real nats-servers (each started by the test
// on a free loopback port and killed by its PID): user/password, token,
// NKey, a creds file on an operator-mode server, TLS with a client
// certificate, and users whose permissions are full, read-only on the
// bucket, or nothing. Keys, certificates and JWTs are made at test time
// (support/auth_material.h).
//
// Every test also asserts that no password, token, seed or private-key
// bytes reach a log line (everything the library logs goes to a capturing
// sink), an error message, status() or leaderctl's output.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include "leader/connection_flags.h"
#include "leader/leader.h"
#include "support/auth_material.h"
#include "support/capture_sink.h"
#include "support/child_process.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"
#include "support/wait.h"

#ifndef LEADERCTL_BIN
#define LEADERCTL_BIN ""
#endif

namespace {

using namespace std::chrono_literals;
using leader::Errc;
using leader::testing::CaptureSink;
using leader::testing::ChildProcess;
using leader::testing::eventually;
using leader::testing::InheritedFds;
using leader::testing::NatsServer;
using leader::testing::NKey;
using leader::testing::OperatorMaterial;
using leader::testing::Secrets;
using leader::testing::TempDir;
using leader::testing::TlsMaterial;
using Clock = std::chrono::steady_clock;

// Secrets of the tests: long and unlike anything else in a message.
constexpr const char* kPassword = "pw-a8Kq2vX9-secret";
constexpr const char* kWrongPassword = "pw-Zr71bWq4-wrong";
constexpr const char* kToken = "tok-Hm3c9Lp0Qx5-secret";
constexpr const char* kWrongToken = "tok-Ee8s2Nd6Uv1-wrong";
constexpr const char* kReaderPassword = "pw-Rd4e7Ys1-reader";
constexpr const char* kNobodyPassword = "pw-Nb0d3Gq8-nobody";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string ms(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

/// The fixture: a temporary directory for key material, every secret of the
/// test, and a capturing logger (per election, and as the library's
/// default logger "leader") whose lines are checked in TearDown.
class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    secrets_.add(kPassword);
    secrets_.add(kWrongPassword);
    secrets_.add(kToken);
    secrets_.add(kWrongToken);
    secrets_.add(kReaderPassword);
    secrets_.add(kNobodyPassword);
    bucket_ = leader::testing::bucket_for_current_test(48);
    spdlog::drop("leader");
    spdlog::register_logger(leader::testing::capturing_logger("leader", sink_));
  }

  void TearDown() override {
    spdlog::drop("leader");
    std::size_t lines = 0;
    for (const auto& line : sink_->lines()) {
      ++lines;
      expect_clean("log line", line.text);
    }
    RecordProperty("log_lines", static_cast<int>(lines));
    EXPECT_GT(checked_, 0) << "nothing was checked for secrets";
  }

  /// Fails the test if `text` holds a secret.
  void expect_clean(const std::string& where, const std::string& text) {
    ++checked_;
    if (auto found = secrets_.find_in(text)) {
      ADD_FAILURE() << where << " holds a secret (\"" << *found << "\"): " << text;
    }
  }

  void expect_clean(const leader::Status& s) {
    expect_clean("status().last_error", s.last_error.message);
    if (s.leader) {
      expect_clean("status().leader", s.leader->instance_id);
    }
  }

  leader::Telemetry telemetry(std::shared_ptr<prometheus::Registry> registry = nullptr) {
    leader::Telemetry t;
    t.logger = leader::testing::capturing_logger("security", sink_);
    t.registry = std::move(registry);
    return t;
  }

  leader::Config config(const std::string& id) const {
    leader::Config c;
    c.bucket = bucket_;
    c.role = "scheduler";
    c.instance_id = id;
    c.ttl = 3s;  // heartbeat 600 ms, call_timeout 300 ms, breaker_open 3 s
    c.start_timeout = 3s;
    return c;
  }

  static leader::ConnectionOptions options_for(const NatsServer& server) {
    leader::ConnectionOptions o;
    o.url = server.url();
    o.reconnect_wait = 50ms;
    return o;
  }

  /// Connects with `o`, campaigns and expects to lead; checks status().
  void expect_leads(const leader::ConnectionOptions& o, const std::string& id = "node-a") {
    std::shared_ptr<leader::Connection> connection;
    try {
      connection = leader::Connection::connect(o);
    } catch (const std::exception& e) {
      expect_clean("connect error", e.what());
      FAIL() << "connect failed: " << e.what();
    }
    leader::Election election(connection, config(id), {}, telemetry());
    election.start();
    EXPECT_TRUE(election.wait_for_leadership(5s)) << election.status().last_error.message;
    expect_clean(election.status());
    election.stop();
  }

  /// Expects connect() to throw leader::Error with `code`, and returns its
  /// message (checked for secrets, and for naming the server's URL).
  std::string expect_refused(const leader::ConnectionOptions& o, Errc code, const NatsServer& server) {
    try {
      leader::Connection::connect(o);
    } catch (const leader::Error& e) {
      std::string what = e.what();
      expect_clean("connect error", what);
      EXPECT_EQ(e.code(), leader::make_error_code(code)) << what;
      EXPECT_NE(what.find("127.0.0.1:" + std::to_string(server.port())), std::string::npos) << what;
      return what;
    }
    ADD_FAILURE() << "connect() did not fail";
    return {};
  }

  TempDir dir_;
  Secrets secrets_;
  std::string bucket_;
  std::shared_ptr<CaptureSink> sink_ = std::make_shared<CaptureSink>();
  int checked_ = 0;
};

TEST_F(SecurityTest, UserAndPasswordAuthenticate) {
  NatsServer::Options so;
  so.extra_config = std::string("authorization {\n  users = [\n    {user: alice, password: \"") + kPassword +
                    "\"}\n  ]\n}\n";
  NatsServer server(so);

  leader::ConnectionOptions o = options_for(server);
  o.user = "alice";
  o.password = kPassword;
  expect_leads(o);

  o.password = kWrongPassword;
  const std::string wrong = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(wrong.find("Authorization Violation"), std::string::npos) << wrong;
  EXPECT_NE(wrong.find("user / password"), std::string::npos) << wrong;

  o.user.clear();
  o.password.clear();
  const std::string none = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(none.find("none given"), std::string::npos) << none;
}

TEST_F(SecurityTest, TokenAuthenticates) {
  NatsServer::Options so;
  so.extra_config = std::string("authorization {\n  token: \"") + kToken + "\"\n}\n";
  NatsServer server(so);

  leader::ConnectionOptions o = options_for(server);
  o.token = kToken;
  expect_leads(o);

  o.token = kWrongToken;
  const std::string wrong = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(wrong.find("check token"), std::string::npos) << wrong;
}

TEST_F(SecurityTest, NKeyAuthenticatesWithTheSeedFile) {
  const NKey user = NKey::generate(NKey::Type::user);
  const NKey stranger = NKey::generate(NKey::Type::user);
  secrets_.add(user.secrets());
  secrets_.add(stranger.secrets());
  NatsServer::Options so;
  so.extra_config = "authorization {\n  users = [\n    {nkey: " + user.public_key + "}\n  ]\n}\n";
  NatsServer server(so);

  // The seed alone, with the public key given.
  leader::ConnectionOptions o = options_for(server);
  o.nkey = user.public_key;
  o.nkey_seed_file = dir_.write("user.nk", user.seed + "\n");
  expect_leads(o, "seed-only");

  // The seed file holds the public key too (as `nk -gen user -pubout`
  // writes it): nkey may be left out.
  o.nkey.clear();
  o.nkey_seed_file = dir_.write("user-with-pub.nk", user.seed + "\n" + user.public_key + "\n");
  expect_leads(o, "seed-and-public-key");

  // Without a public key anywhere: a ConfigError naming nkey.
  o.nkey_seed_file = dir_.write("seed-only.nk", user.seed + "\n");
  try {
    leader::Connection::connect(o);
    ADD_FAILURE() << "connected without a public key";
  } catch (const leader::ConfigError& e) {
    EXPECT_EQ(e.field(), "nkey") << e.what();
    expect_clean("ConfigError", e.what());
  }

  // A key the server does not know.
  o.nkey = stranger.public_key;
  o.nkey_seed_file = dir_.write("stranger.nk", stranger.seed + "\n");
  const std::string refused = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(refused.find("nkey"), std::string::npos) << refused;
}

TEST_F(SecurityTest, CredsFileAuthenticatesOnAnOperatorModeServer) {
  const OperatorMaterial m = OperatorMaterial::generate(dir_);
  secrets_.add(m.secrets);
  ASSERT_TRUE(secrets_.find_in(read_file(m.creds_file))) << "the creds file's seed goes unnoticed";
  NatsServer::Options so;
  so.extra_config = m.server_config;
  NatsServer server(so);

  leader::ConnectionOptions o = options_for(server);
  o.creds_file = m.creds_file;
  expect_leads(o);

  o.creds_file = m.foreign_creds_file;
  const std::string refused = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(refused.find("creds_file"), std::string::npos) << refused;
}

class TlsTest : public SecurityTest {
 protected:
  void SetUp() override {
    SecurityTest::SetUp();
    tls_ = TlsMaterial::generate(dir_);
    secrets_.add(tls_.secrets);
    // The detector itself: it finds a key file's contents, not a
    // certificate's (public) ones.
    ASSERT_TRUE(secrets_.find_in(read_file(tls_.client_key_file))) << "private-key bytes go unnoticed";
    ASSERT_FALSE(secrets_.find_in(read_file(tls_.client_cert_file))) << "a certificate reads as secret";
  }

  /// Options trusting our CA with our client certificate.
  leader::ConnectionOptions tls_options(const NatsServer& server) const {
    leader::ConnectionOptions o = options_for(server);
    o.tls_ca_file = tls_.ca_file;
    o.tls_cert_file = tls_.client_cert_file;
    o.tls_key_file = tls_.client_key_file;
    return o;
  }

  NatsServer::Options server_options(bool verify_clients) const {
    NatsServer::Options so;
    so.extra_config = tls_.server_config(verify_clients);
    return so;
  }

  TlsMaterial tls_;
};

TEST_F(TlsTest, ClientCertificateAndServerNameConnect) {
  NatsServer server(server_options(/*verify_clients=*/true));
  leader::ConnectionOptions o = tls_options(server);
  expect_leads(o, "by-address");

  // The certificate names localhost too: checked instead of 127.0.0.1.
  o.tls_server_name = "localhost";
  expect_leads(o, "by-name");

  o.tls_server_name = "wrong.example";
  const std::string refused = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(refused.find("hostname mismatch"), std::string::npos) << refused;
  EXPECT_NE(refused.find("tls_server_name"), std::string::npos) << refused;
}

TEST_F(TlsTest, AServerCertificateOfAnotherCaIsAClearError) {
  NatsServer server(server_options(/*verify_clients=*/false));
  leader::ConnectionOptions o = options_for(server);
  o.tls_ca_file = tls_.other_ca_file;
  const std::string refused = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(refused.find("unable to get local issuer certificate"), std::string::npos) << refused;
  EXPECT_NE(refused.find("tls_ca_file"), std::string::npos) << refused;

  // The right CA, and no client certificate: this server does not ask for one.
  o.tls_ca_file = tls_.ca_file;
  expect_leads(o, "nats-url");

  // TLS by the URL's scheme alone (the CA from SSL_CERT_FILE would do too;
  // the field keeps the test away from the environment).
  o.url = "tls://127.0.0.1:" + std::to_string(server.port());
  expect_leads(o, "tls-url");
}

TEST_F(TlsTest, AServerThatVerifiesClientsRefusesNoOrAForeignCertificate) {
  NatsServer server(server_options(/*verify_clients=*/true));
  leader::ConnectionOptions o = options_for(server);
  o.tls_ca_file = tls_.ca_file;
  const std::string none = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(none.find("requires a client certificate"), std::string::npos) << none;

  o.tls_cert_file = tls_.other_client_cert_file;
  o.tls_key_file = tls_.other_client_key_file;
  const std::string foreign = expect_refused(o, Errc::permission_denied, server);
  EXPECT_NE(foreign.find("refused the client certificate"), std::string::npos) << foreign;
}

/// A server with three users: admin (everything), reader (read-only on the
/// test's bucket: stream info, leader-routed reads and watches, no writes)
/// and nobody (no permission at all).
class PermissionsTest : public SecurityTest {
 protected:
  void SetUp() override {
    SecurityTest::SetUp();
    // What an observer of bucket B needs (stream KV_B): stream info,
    // leader-routed reads, an ordered consumer (create, info, delete, flow
    // control) and replies on _INBOX. Nothing publishes to $KV.B.>.
    const std::string stream = "KV_" + bucket_;
    std::string reader_publish;
    for (const std::string& subject : std::vector<std::string>{
             "$JS.API.INFO", "$JS.API.STREAM.INFO." + stream, "$JS.API.STREAM.MSG.GET." + stream,
             "$JS.API.CONSUMER.CREATE." + stream, "$JS.API.CONSUMER.CREATE." + stream + ".>",
             "$JS.API.CONSUMER.INFO." + stream + ".>", "$JS.API.CONSUMER.DELETE." + stream + ".>",
             "$JS.FC." + stream + ".>"}) {
      reader_publish += (reader_publish.empty() ? "\"" : ", \"") + subject + "\"";
    }
    NatsServer::Options so;
    so.extra_config =
        std::string("authorization {\n  users = [\n") + "    {user: admin, password: \"" + kPassword +
        "\"}\n" + "    {user: reader, password: \"" + kReaderPassword +
        "\", permissions: {publish: {allow: [" + reader_publish +
        "]}, subscribe: {allow: [\"_INBOX.>\"]}}}\n" + "    {user: nobody, password: \"" + kNobodyPassword +
        "\", permissions: {publish: {deny: [\">\"]}, subscribe: {deny: [\">\"]}}}\n" + "  ]\n}\n";
    server_ = std::make_unique<NatsServer>(so);
  }

  leader::ConnectionOptions user(const std::string& name, const char* password) const {
    leader::ConnectionOptions o = options_for(*server_);
    o.user = name;
    o.password = password;
    return o;
  }

  std::unique_ptr<NatsServer> server_;
};

TEST_F(PermissionsTest, AReadOnlyUserObservesButItsCampaignFailsWithoutAStorm) {
  // The admin creates the bucket and leads.
  auto admin = leader::Connection::connect(user("admin", kPassword));
  leader::Election holder(admin, config("holder"), {}, telemetry());
  holder.start();
  ASSERT_TRUE(holder.wait_for_leadership(5s));

  auto reader = leader::Connection::connect(user("reader", kReaderPassword));
  leader::Observer observer(reader, config("observer"), {}, telemetry());
  observer.start();
  EXPECT_TRUE(eventually(
      [&] {
        auto who = observer.leader();
        return who && who->instance_id == "holder";
      },
      5s, 5ms))
      << "the read-only observer never saw the leader";

  // The reader campaigns for a role nobody holds, so that it keeps trying
  // to create the key: every create is refused.
  auto registry = std::make_shared<prometheus::Registry>();
  std::mutex mu;
  std::optional<Clock::duration> first_denial;
  std::vector<leader::ErrorInfo> errors;
  leader::Callbacks cb;
  Clock::time_point started;  // set before start(), read by callbacks after it
  cb.on_error = [&](const leader::ErrorInfo& e) {
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(e);
    if (e.code == leader::make_error_code(Errc::permission_denied) && !first_denial) {
      first_denial = Clock::now() - started;
    }
  };
  cb.on_promote = [](const leader::Term&) { ADD_FAILURE() << "a read-only user was promoted"; };
  leader::Config cfg = config("reader");
  cfg.role = "vacant";
  leader::Election campaign(reader, cfg, cb, telemetry(registry));
  started = Clock::now();
  campaign.start();
  const auto window_start = Clock::now();

  const auto resolved = campaign.config();
  const auto bound = resolved.call_timeout + 2s;
  ASSERT_TRUE(eventually(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return first_denial.has_value();
      },
      bound, 5ms))
      << "no permission_denied error within " << ms(bound);
  const auto status = campaign.status();
  EXPECT_EQ(status.last_error.code, leader::make_error_code(Errc::permission_denied))
      << status.last_error.message;
  EXPECT_NE(
      status.last_error.message.find("Permissions Violation for Publish to \"$KV." + bucket_ + ".vacant\""),
      std::string::npos)
      << status.last_error.message;
  EXPECT_FALSE(campaign.is_leader());

  // No storm: over 6 s (two breaker_open periods) it tries a few times.
  std::this_thread::sleep_until(window_start + 6s);
  double attempts = 0;
  for (const auto& family : registry->Collect()) {
    if (family.name != "leader_election_acquire_attempts_total") continue;
    for (const auto& m : family.metric) attempts += m.counter.value;
  }
  RecordProperty(
      "first_permission_error_ms",
      static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(*first_denial).count()));
  RecordProperty("acquire_attempts_in_6s", static_cast<int>(attempts));
  std::printf(
      "[ figures  ] call_timeout %lld ms, first permission error after %s, %g acquire attempts in 6 s\n",
      static_cast<long long>(resolved.call_timeout.count()), ms(*first_denial).c_str(), attempts);
  EXPECT_GE(attempts, 1);
  EXPECT_LE(attempts, 5) << "the campaign storms the server";
  EXPECT_TRUE(holder.is_leader());

  const auto stop_began = Clock::now();
  campaign.stop();
  EXPECT_LT(Clock::now() - stop_began, resolved.call_timeout + 2s) << "stop() hung";
  expect_clean(campaign.status());
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& e : errors) expect_clean("on_error", e.message);
  }
  observer.stop();
  holder.stop();
}

TEST_F(PermissionsTest, ANoAccessUsersStartFailsPromptlyWithAClearError) {
  auto nobody = leader::Connection::connect(user("nobody", kNobodyPassword));
  leader::Config cfg = config("nobody");
  cfg.start_timeout = 2s;
  leader::Election election(nobody, cfg, {}, telemetry());
  const auto began = Clock::now();
  try {
    election.start();
    ADD_FAILURE() << "start() succeeded without any permission";
  } catch (const leader::Error& e) {
    const auto took = Clock::now() - began;
    const std::string what = e.what();
    std::printf("[ figures  ] start() of a no-access user failed after %s (start_timeout 2000 ms): %s\n",
                ms(took).c_str(), what.c_str());
    RecordProperty("start_failure_ms",
                   static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
    EXPECT_EQ(e.code(), leader::make_error_code(Errc::permission_denied)) << what;
    EXPECT_NE(what.find("Permissions Violation"), std::string::npos) << what;
    EXPECT_NE(what.find("127.0.0.1:" + std::to_string(server_->port())), std::string::npos) << what;
    EXPECT_LT(took, cfg.start_timeout + 1500ms) << what;
    expect_clean("start() error", what);
  }
  expect_clean(election.status());
}

/// Runs leaderctl with `args` under /usr/bin/env (for `env` assignments),
/// stderr merged into the output it returns.
struct CtlResult {
  int code = -1;
  std::string out;
};

CtlResult run_leaderctl(const std::vector<std::string>& env, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", "/usr/bin/env"};
  argv.insert(argv.end(), env.begin(), env.end());
  argv.emplace_back(LEADERCTL_BIN);
  argv.insert(argv.end(), args.begin(), args.end());
  ChildProcess child(argv, InheritedFds::close);
  CtlResult r;
  if (!child.running()) {
    r.out = child.error();
    return r;
  }
  std::optional<int> status;
  const auto end = Clock::now() + 20s;
  while (!(status = child.wait_exit(10ms)) && Clock::now() < end) child.output(1ms);
  r.out = child.output(50ms);
  if (status && WIFEXITED(*status)) r.code = WEXITSTATUS(*status);
  return r;
}

TEST_F(TlsTest, LeaderctlConnectsWithTheTlsAndCredentialFlags) {
  if (std::string(LEADERCTL_BIN).empty()) GTEST_SKIP() << "leaderctl not built (LEADER_BUILD_TOOLS=OFF)";
  NatsServer::Options so = server_options(/*verify_clients=*/true);
  so.extra_config += std::string("authorization {\n  users = [\n    {user: alice, password: \"") + kPassword +
                     "\"}\n  ]\n}\n";
  NatsServer server(so);
  leader::ConnectionOptions o = tls_options(server);
  o.user = "alice";
  o.password = kPassword;
  auto connection = leader::Connection::connect(o);
  leader::Election election(connection, config("node-a"), {}, telemetry());
  election.start();
  ASSERT_TRUE(election.wait_for_leadership(5s));

  const std::vector<std::string> common = {"--nats-url",
                                           server.url(),
                                           "--bucket",
                                           bucket_,
                                           "--user",
                                           "alice",
                                           "--tls-cert",
                                           tls_.client_cert_file,
                                           "--tls-key",
                                           tls_.client_key_file,
                                           "--tls-server-name=localhost"};
  // The password from the environment, the CA from a flag.
  std::vector<std::string> args = common;
  args.insert(args.end(), {"--tls-ca", tls_.ca_file, "list", "--json"});
  const CtlResult ok = run_leaderctl({std::string("NATS_PASSWORD=") + kPassword}, args);
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(ok.out.find("\"holder\":\"node-a\""), std::string::npos) << ok.out;
  expect_clean("leaderctl output", ok.out);

  // The CA from the environment (NATS_TLS_CA) but the wrong one; the
  // password as a flag: exit 3, a clear error, no password.
  args = common;
  args.insert(args.end(), {"--password", kPassword, "list"});
  const CtlResult wrong_ca = run_leaderctl({"NATS_TLS_CA=" + tls_.other_ca_file}, args);
  EXPECT_EQ(wrong_ca.code, 3) << wrong_ca.out;
  EXPECT_NE(wrong_ca.out.find("unable to get local issuer certificate"), std::string::npos) << wrong_ca.out;
  EXPECT_NE(wrong_ca.out.find("tls_ca_file"), std::string::npos) << wrong_ca.out;
  expect_clean("leaderctl output", wrong_ca.out);

  // A wrong password: refused, and neither password is printed.
  args = common;
  args.insert(args.end(), {"--tls-ca", tls_.ca_file, "--password", kWrongPassword, "list", "--json"});
  const CtlResult refused = run_leaderctl({}, args);
  EXPECT_EQ(refused.code, 3) << refused.out;
  EXPECT_NE(refused.out.find("Authorization Violation"), std::string::npos) << refused.out;
  expect_clean("leaderctl output", refused.out);
  election.stop();
}

/// Sets environment variables for the scope of one test (the tests of a
/// binary run one at a time).
class ScopedEnv {
 public:
  void set(const char* name, const std::string& value) {
    const char* old = std::getenv(name);
    saved_.emplace_back(name, old != nullptr ? std::optional<std::string>(old) : std::nullopt);
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        ::setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        ::unsetenv(it->first.c_str());
      }
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

TEST(ConnectionFlagsTest, FlagsComeOutOfArgvAndOverrideTheEnvironment) {
  ScopedEnv env;
  env.set("NATS_URL", "nats://from-env:4222");
  env.set("NATS_USER", "env-user");
  env.set("NATS_PASSWORD", kPassword);
  env.set("NATS_TOKEN", "");  // empty: unset
  env.set("NATS_TLS_CA", "/env/ca.pem");
  std::vector<std::string> args = {"tool", "list",    "--user",           "flag-user", "--bucket",
                                   "b",    "--tls",   "--tls-key",        "/k.pem",    "--tls-cert=/c.pem",
                                   "--",   "--token", "after-double-dash"};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int argc = static_cast<int>(args.size());
  const leader::ConnectionOptions o = leader::consume_connection_flags(argc, argv.data());
  EXPECT_EQ(o.url, "nats://from-env:4222");
  EXPECT_EQ(o.user, "flag-user");
  EXPECT_EQ(o.password, kPassword);
  EXPECT_EQ(o.token, "");
  EXPECT_TRUE(o.tls);
  EXPECT_EQ(o.tls_ca_file, "/env/ca.pem");
  EXPECT_EQ(o.tls_cert_file, "/c.pem");
  EXPECT_EQ(o.tls_key_file, "/k.pem");
  std::vector<std::string> rest(argv.begin(), argv.begin() + argc);
  EXPECT_EQ(rest, (std::vector<std::string>{"tool", "list", "--bucket", "b", "--", "--token",
                                            "after-double-dash"}));
  EXPECT_EQ(argv[static_cast<std::size_t>(argc)], nullptr);

  std::vector<std::string> bad = {"tool", "--nkey-seed"};
  std::vector<char*> bad_argv = {bad[0].data(), bad[1].data(), nullptr};
  int bad_argc = 2;
  try {
    leader::consume_connection_flags(bad_argc, bad_argv.data());
    ADD_FAILURE() << "a flag without a value was accepted";
  } catch (const leader::ConfigError& e) {
    EXPECT_EQ(e.field(), "--nkey-seed");
  }
  EXPECT_NE(std::string(leader::connection_flags_help()).find("--tls-server-name"), std::string::npos);
}

TEST_F(SecurityTest, BadOptionsNameTheFieldButNoSecret) {
  TempDir dir;
  const NKey user = NKey::generate(NKey::Type::user);
  secrets_.add(user.secrets());
  const std::string seed_file = dir.write("user.nk", user.seed + "\n" + user.public_key + "\n");
  const std::string not_a_seed = dir.write("garbage.nk", std::string(kToken) + "\n");
  struct Case {
    const char* why;
    std::function<void(leader::ConnectionOptions&)> change;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"password without user", [](auto& o) { o.password = kPassword; }, "password"},
      {"token and user",
       [](auto& o) {
         o.user = "alice";
         o.password = kPassword;
         o.token = kToken;
       },
       "token"},
      {"nkey not a user key",
       [&](auto& o) {
         o.nkey = std::string(kToken);
         o.nkey_seed_file = seed_file;
       },
       "nkey"},
      {"nkey without a seed file", [&](auto& o) { o.nkey = user.public_key; }, "nkey_seed_file"},
      {"seed file missing", [](auto& o) { o.nkey_seed_file = "/nonexistent/user.nk"; }, "nkey_seed_file"},
      {"seed file without a seed", [&](auto& o) { o.nkey_seed_file = not_a_seed; }, "nkey_seed_file"},
      {"creds and token",
       [](auto& o) {
         o.token = kToken;
         o.creds_file = "/nonexistent/user.creds";
       },
       "creds_file"},
      {"creds file missing", [](auto& o) { o.creds_file = "/nonexistent/user.creds"; }, "creds_file"},
      {"cert without key", [](auto& o) { o.tls_cert_file = "/c.pem"; }, "tls_key_file"},
      {"key without cert", [](auto& o) { o.tls_key_file = "/k.pem"; }, "tls_cert_file"},
      {"ca file missing", [](auto& o) { o.tls_ca_file = "/nonexistent/ca.pem"; }, "tls_ca_file"},
  };
  for (const auto& c : cases) {
    leader::ConnectionOptions o;
    c.change(o);
    try {
      o.validate();
      ADD_FAILURE() << c.why << ": accepted";
    } catch (const leader::ConfigError& e) {
      EXPECT_EQ(e.field(), c.field) << c.why << ": " << e.what();
      expect_clean(c.why, e.what());
    }
    // connect() and apply_connection_security() validate the same way.
    EXPECT_THROW(leader::Connection::connect(o), leader::ConfigError) << c.why;
  }
  leader::ConnectionOptions fine;
  fine.nkey_seed_file = seed_file;
  EXPECT_NO_THROW(fine.validate());
  EXPECT_THROW(leader::apply_connection_security(nullptr, fine), leader::ConfigError);
}

}  // namespace
