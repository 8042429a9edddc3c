// Uses the installed public API without a NATS server: the headers compile as
// C++17 on their own, and the configuration rules and error types link and
// behave as documented. Returns 0 on success.
#include <chrono>
#include <cstdio>
#include <string>
#include <system_error>

#include "leader/leader.h"

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what);
    ++failures;
  }
}

leader::Config good_config() {
  leader::Config config;
  config.bucket = "leaders";
  config.role = "scheduler";
  config.instance_id = "node-a";
  config.ttl = std::chrono::seconds(10);
  config.heartbeat_interval = std::chrono::seconds(2);
  config.metadata["zone"] = "a";
  return config;
}

}  // namespace

int main() {
  try {
    good_config().validate();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: a good config was rejected: %s\n", e.what());
    ++failures;
  }

  leader::Config bad = good_config();
  bad.role.clear();
  try {
    bad.validate();
    check(false, "an empty role must throw leader::ConfigError");
  } catch (const leader::ConfigError& e) {
    check(e.field() == "role", "ConfigError::field() names \"role\"");
    check(std::string(e.what()).find("role") != std::string::npos, "the message names the field");
  }

  check(leader::parse_duration("500ms") == std::chrono::milliseconds(500), "parse_duration(\"500ms\")");
  try {
    leader::parse_duration("soon", "ttl");
    check(false, "parse_duration(\"soon\") must throw leader::ConfigError");
  } catch (const leader::ConfigError& e) {
    check(e.field() == "ttl", "parse_duration names the field it was given");
  }

  const std::error_code timeout = leader::make_error_code(leader::Errc::timeout);
  check(timeout == leader::Errc::timeout, "Errc converts to std::error_code");
  check(leader::is_transient(timeout), "a timeout is transient");
  check(!timeout.message().empty(), "error codes have messages");

  if (failures != 0) {
    std::fprintf(stderr, "leader_consumer: %d check(s) failed\n", failures);
    return 1;
  }
  std::printf("leader_consumer: OK\n");
  return 0;
}
