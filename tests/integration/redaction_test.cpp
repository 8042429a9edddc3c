// Credentials in a NATS URL never reach a log line, an error message or
// status(): a real nats-server with user/password authorization, an
// election logging everything (trace) through a capturing logger, and a
// server restart so that the messages naming the server's URL are produced.

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "leader/leader.h"
#include "support/capture_sink.h"
#include "support/nats_server.h"
#include "support/wait.h"

namespace {

using namespace std::chrono_literals;
using leader::testing::CaptureSink;
using leader::testing::eventually;
using leader::testing::NatsServer;

constexpr const char* kPassword = "s3cret-pw";
constexpr auto kWaitPoll = 5ms;  // how often eventually() checks its condition

TEST(RedactionTest, CredentialsInTheUrlNeverReachLogsOrErrors) {
  NatsServer::Options options;
  options.extra_config = std::string("authorization {\n  user: alice\n  password: \"") + kPassword + "\"\n}";
  NatsServer server(options);
  const std::string port = std::to_string(server.port());
  const std::string url = "nats://alice:" + std::string(kPassword) + "@127.0.0.1:" + port;

  // A wrong password: the error names the URL, without the password.
  leader::ConnectionOptions bad;
  bad.url = "nats://alice:wr0ng-pw@127.0.0.1:" + port;
  bad.connect_timeout = 2s;
  try {
    leader::Connection::connect(bad);
    ADD_FAILURE() << "connected with a wrong password";
  } catch (const leader::Error& e) {
    EXPECT_EQ(std::string(e.what()).find("wr0ng-pw"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("nats://***@127.0.0.1:" + port), std::string::npos) << e.what();
  }

  leader::ConnectionOptions good;
  good.url = url;
  good.reconnect_wait = 50ms;
  auto connection = leader::Connection::connect(good);
  auto sink = std::make_shared<CaptureSink>();
  leader::Telemetry telemetry;
  telemetry.logger = leader::testing::capturing_logger("redaction", sink);
  leader::Config config;
  config.bucket = "redaction";
  config.role = "scheduler";
  config.instance_id = "a";
  config.ttl = 2s;
  leader::Election election(connection, config, {}, telemetry);
  election.start();
  ASSERT_TRUE(election.wait_for_leadership(5s));

  // A restart: calls fail while the server is gone ("not connected to
  // <url>"), and the reconnect fails the watch ("the connection to <url>
  // was lost and re-established").
  server.stop();
  ASSERT_TRUE(eventually([&] { return election.status().connection != leader::ConnectionState::connected; },
                         5s, kWaitPoll));
  server.restart();
  ASSERT_TRUE(
      eventually([&] { return !sink->find("was lost and re-established").text.empty(); }, 15s, kWaitPoll))
      << "the watch never failed over the reconnect";
  election.stop();

  int naming_the_server = 0;
  for (const auto& line : sink->lines()) {
    EXPECT_EQ(line.text.find(kPassword), std::string::npos) << line.text;
    EXPECT_EQ(line.text.find("alice:"), std::string::npos) << line.text;
    if (line.text.find("nats://***@127.0.0.1:" + port) != std::string::npos) ++naming_the_server;
  }
  EXPECT_GT(naming_the_server, 0) << "no line named the server's URL: nothing was checked";
  EXPECT_EQ(election.status().last_error.message.find(kPassword), std::string::npos);
}

}  // namespace
