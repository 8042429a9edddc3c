#include <gtest/gtest.h>

#include "leader/config.h"
#include "leader/error.h"

namespace leader {
namespace {

using namespace std::chrono_literals;

Config valid() {
  Config c;
  c.role = "scheduler";
  c.instance_id = "node-a";
  return c;
}

TEST(ConfigTest, DefaultsAreValidAndDerivedFromTheTtl) {
  const Config c = valid().resolved();
  EXPECT_NO_THROW(valid().validate());
  EXPECT_EQ(c.ttl, 10s);
  EXPECT_EQ(c.heartbeat_interval, 2s);
  EXPECT_EQ(c.safety_margin, 500ms);
  EXPECT_EQ(c.call_timeout, 1s);
  EXPECT_EQ(c.retry_max, 2s);
}

struct Bad {
  const char* field;
  std::function<void(Config&)> mutate;
};

class ConfigRuleTest : public ::testing::TestWithParam<Bad> {};

TEST_P(ConfigRuleTest, ViolationNamesTheField) {
  Config c = valid();
  GetParam().mutate(c);
  try {
    c.validate();
    FAIL() << "expected ConfigError for " << GetParam().field;
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), GetParam().field) << e.what();
    EXPECT_NE(std::string(e.what()).find(GetParam().field), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(
    ConfigTest, ConfigRuleTest,
    ::testing::Values(
        Bad{"bucket", [](Config& c) { c.bucket = ""; }},
        Bad{"bucket", [](Config& c) { c.bucket = "has.dot"; }},
        Bad{"bucket", [](Config& c) { c.bucket = "has space"; }},
        Bad{"bucket", [](Config& c) { c.bucket = std::string(65, 'b'); }},
        Bad{"role", [](Config& c) { c.role = ""; }}, Bad{"role", [](Config& c) { c.role = "a*"; }},
        Bad{"role", [](Config& c) { c.role = "a>"; }}, Bad{"role", [](Config& c) { c.role = ".a"; }},
        Bad{"role", [](Config& c) { c.role = "a."; }}, Bad{"role", [](Config& c) { c.role = "a..b"; }},
        Bad{"role", [](Config& c) { c.role = "a b"; }},
        Bad{"role", [](Config& c) { c.role = std::string(257, 'r'); }},
        Bad{"instance_id", [](Config& c) { c.instance_id = ""; }},
        Bad{"instance_id", [](Config& c) { c.instance_id = "a\nb"; }},
        Bad{"instance_id", [](Config& c) { c.instance_id = std::string(129, 'i'); }},
        Bad{"ttl", [](Config& c) { c.ttl = 50ms; }}, Bad{"ttl", [](Config& c) { c.ttl = 25h; }},
        Bad{"heartbeat_interval", [](Config& c) { c.heartbeat_interval = -1ms; }},
        Bad{"heartbeat_interval", [](Config& c) { c.heartbeat_interval = 4s; }},
        Bad{"safety_margin", [](Config& c) { c.safety_margin = 4s; }},
        Bad{"safety_margin", [](Config& c) { c.safety_margin = -1ms; }},
        Bad{"call_timeout", [](Config& c) { c.call_timeout = 10s; }},
        Bad{"call_timeout", [](Config& c) { c.call_timeout = -5ms; }},
        Bad{"acquire_jitter", [](Config& c) { c.acquire_jitter = 2s; }},
        Bad{"acquire_jitter", [](Config& c) { c.acquire_jitter = -1ms; }},
        Bad{"retry_initial", [](Config& c) { c.retry_initial = 0ms; }},
        Bad{"retry_max", [](Config& c) { c.retry_max = 20s; }},
        Bad{"retry_max", [](Config& c) { c.retry_max = 5ms; }},
        Bad{"start_timeout", [](Config& c) { c.start_timeout = 0ms; }},
        Bad{"replicas", [](Config& c) { c.replicas = 0; }},
        Bad{"replicas", [](Config& c) { c.replicas = 6; }},
        Bad{"metadata", [](Config& c) { c.metadata["k"] = std::string(5000, 'v'); }}));

TEST(ConfigTest, AcceptsTheKeyAlphabet) {
  Config c = valid();
  c.role = "svc/scheduler=eu-1_a.b";
  c.bucket = "my_bucket-1";
  c.instance_id = "host-1:pid 42 ü";
  EXPECT_NO_THROW(c.validate());
}

TEST(ConfigTest, ShortTtlsDeriveConsistentValues) {
  Config c = valid();
  c.ttl = 1s;
  EXPECT_NO_THROW(c.validate());
  c.ttl = 100ms;
  EXPECT_NO_THROW(c.validate());
}

TEST(ConfigTest, ParsesDurations) {
  EXPECT_EQ(parse_duration("500ms"), 500ms);
  EXPECT_EQ(parse_duration("3s"), 3s);
  EXPECT_EQ(parse_duration("2m"), 120s);
  EXPECT_EQ(parse_duration("1h"), 3600s);
  EXPECT_EQ(parse_duration("0s"), 0ms);
  EXPECT_EQ(parse_duration("0"), 0ms);
}

TEST(ConfigTest, RejectsBadDurationsNamingTheField) {
  for (const char* bad : {"", "s", "3", "00x", "3x", "-1s", "1.5s", "99999999999999999999s",
                          "9223372036854775807h", " 3s", "3s "}) {
    try {
      parse_duration(bad, "ttl");
      FAIL() << "accepted " << bad;
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.field(), "ttl");
    }
  }
}

TEST(ConfigTest, ErrorCodesHaveMessagesAndClassification) {
  EXPECT_TRUE(is_transient(make_error_code(Errc::timeout)));
  EXPECT_TRUE(is_transient(make_error_code(Errc::no_responders)));
  EXPECT_TRUE(is_transient(make_error_code(Errc::disconnected)));
  EXPECT_FALSE(is_transient(make_error_code(Errc::permission_denied)));
  EXPECT_FALSE(is_transient(make_error_code(Errc::bucket_mismatch)));
  EXPECT_FALSE(is_transient(std::make_error_code(std::errc::timed_out)));
  EXPECT_EQ(std::string(error_category().name()), "leader");
  EXPECT_FALSE(make_error_code(Errc::jetstream_unavailable).message().empty());
}

}  // namespace
}  // namespace leader
