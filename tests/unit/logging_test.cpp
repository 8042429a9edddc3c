// What the library logs: through the logger passed in Telemetry (else the
// one named "leader"), every line about a role tagged with role=, instance=
// and term= while a term is held, at the documented levels; and never a
// credential from a NATS URL.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "leader/connection.h"
#include "leader/election.h"
#include "leader/error.h"
#include "log.h"
#include "natsmock/mock_kv.h"
#include "redact.h"
#include "support/capture_sink.h"
#include "support/mock_election.h"
#include "support/nats_server.h"
#include "support/wait.h"

namespace leader {
namespace {

using namespace std::chrono_literals;

using testing::CaptureSink;
using testing::capturing_logger;
using testing::eventually;
using testing::fast_config;

class LoggingTest : public testing::MockServerTest {};

TEST_F(LoggingTest, EveryLineCarriesRoleInstanceAndTermAtTheDocumentedLevel) {
  auto sink_a = std::make_shared<CaptureSink>();
  auto sink_b = std::make_shared<CaptureSink>();
  Telemetry ta;
  ta.logger = capturing_logger("test-a", sink_a);
  Telemetry tb;
  tb.logger = capturing_logger("test-b", sink_b);
  Callbacks cb;
  cb.on_promote = [](const Term&) { throw std::runtime_error("user bug"); };

  Election a(connection("a"), fast_config("a"), cb, ta);
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto token_a = std::to_string(*a.token());
  Election b(connection("b"), fast_config("b"), {}, tb);
  b.start();
  ASSERT_TRUE(eventually([&] { return b.leader_id() == std::optional<std::string>("a"); }));
  a.stop();
  ASSERT_TRUE(b.wait_for_leadership(5s));
  const auto token_b = std::to_string(*b.token());
  b.stop();

  const auto promoted = sink_a->find("promoted");
  EXPECT_EQ(promoted.level, spdlog::level::info) << promoted.text;
  EXPECT_THAT(promoted.text, ::testing::HasSubstr("role=role instance=a term=" + token_a));
  const auto demoted = sink_a->find("demoted");
  EXPECT_EQ(demoted.level, spdlog::level::warn) << demoted.text;
  EXPECT_THAT(demoted.text, ::testing::HasSubstr("role=role instance=a term=" + token_a));
  EXPECT_THAT(demoted.text, ::testing::HasSubstr("stopped"));
  const auto threw = sink_a->find("callback on_promote threw");
  EXPECT_EQ(threw.level, spdlog::level::err) << threw.text;
  EXPECT_THAT(threw.text, ::testing::HasSubstr("role=role instance=a term=" + token_a));
  EXPECT_THAT(threw.text, ::testing::HasSubstr("user bug"));
  EXPECT_EQ(sink_a->find("campaign started").level, spdlog::level::info);
  const auto lines_a = sink_a->lines();
  ASSERT_FALSE(lines_a.empty());
  EXPECT_EQ(lines_a.back().text, "role=role instance=a stopped");
  EXPECT_EQ(lines_a.back().level, spdlog::level::info);

  const auto promoted_b = sink_b->find("promoted");
  EXPECT_EQ(promoted_b.level, spdlog::level::info);
  EXPECT_THAT(promoted_b.text, ::testing::HasSubstr("role=role instance=b term=" + token_b));

  // Every line of each election is tagged with its own role and instance,
  // and each went to its own logger only.
  ASSERT_FALSE(sink_b->lines().empty());
  for (const auto& l : sink_a->lines()) EXPECT_THAT(l.text, ::testing::StartsWith("role=role instance=a"));
  for (const auto& l : sink_b->lines()) EXPECT_THAT(l.text, ::testing::StartsWith("role=role instance=b"));
}

TEST_F(LoggingTest, RetriesAreLoggedAtDebug) {
  auto sink = std::make_shared<CaptureSink>();
  Telemetry t;
  t.logger = capturing_logger("test-retry", sink);
  auto client = server_.client("a");
  Election a(std::make_shared<Connection>(client, 2), fast_config("a"), {}, t);
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  natsmock::Fault fault;
  fault.op = "update";
  fault.outcome = detail::KvOutcome::timeout;
  client->inject(fault);
  ASSERT_TRUE(eventually([&] { return !sink->find("update -> timeout").text.empty(); }));
  const auto retry = sink->find("update -> timeout");
  EXPECT_EQ(retry.level, spdlog::level::debug);
  EXPECT_THAT(retry.text, ::testing::HasSubstr("role=role instance=a term="));
  EXPECT_TRUE(a.is_leader());
}

TEST_F(LoggingTest, WithoutALoggerTheLibraryLoggerNamedLeaderIsUsed) {
  auto logger = detail::default_logger();
  ASSERT_TRUE(logger);
  EXPECT_EQ(logger->name(), "leader");
  EXPECT_EQ(spdlog::get("leader"), logger);

  // An application logger registered under that name is picked up.
  auto sink = std::make_shared<CaptureSink>();
  spdlog::drop("leader");
  auto mine = capturing_logger("leader", sink);
  spdlog::register_logger(mine);
  {
    Election a(connection("a"), fast_config("a"));
    a.start();
    ASSERT_TRUE(a.wait_for_leadership(5s));
  }
  spdlog::drop("leader");
  EXPECT_THAT(sink->find("promoted").text, ::testing::HasSubstr("role=role instance=a term="));
}

TEST(RedactUrlTest, HidesUserinfoOfEveryUrl) {
  using detail::redact_url;
  EXPECT_EQ(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
  EXPECT_EQ(redact_url("nats://alice:s3cret@10.0.0.1:4222"), "nats://***@10.0.0.1:4222");
  EXPECT_EQ(redact_url("nats://T0KEN@host"), "nats://***@host");
  EXPECT_EQ(redact_url("tls://alice:s3cret@host:4443/"), "tls://***@host:4443/");
  EXPECT_EQ(redact_url("alice:s3cret@host:4222"), "***@host:4222");
  EXPECT_EQ(redact_url("nats://a:b@h1:4222, nats://h2:4222,nats://tok@h3"),
            "nats://***@h1:4222, nats://h2:4222,nats://***@h3");
  EXPECT_EQ(redact_url(" user:pw@h1, h2"), " ***@h1, h2");
  // Unescaped '@' or '/' in a password: still all hidden.
  EXPECT_EQ(redact_url("nats://alice:p@ss@host:4222"), "nats://***@host:4222");
  EXPECT_EQ(redact_url("nats://alice:pa/ss@host:4222"), "nats://***@host:4222");
  EXPECT_EQ(redact_url(""), "");
  EXPECT_EQ(redact_url(","), ",");
}

TEST(RedactUrlTest, ConnectErrorsNeverShowCredentials) {
  // Nothing listens on a free port: the connect fails at once, and its
  // message names the URL.
  const int port = testing::free_port();
  for (const std::string secret : {"alice:s3cret-pw", "s3cret-t0ken"}) {
    ConnectionOptions options;
    options.url = "nats://" + secret + "@127.0.0.1:" + std::to_string(port);
    options.connect_timeout = 500ms;
    try {
      Connection::connect(options);
      FAIL() << "connected to a closed port";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.find("s3cret"), std::string::npos) << what;
      EXPECT_NE(what.find("nats://***@127.0.0.1:" + std::to_string(port)), std::string::npos) << what;
    }
  }
}

}  // namespace
}  // namespace leader
