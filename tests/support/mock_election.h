#pragma once

// The public Election over natsmock on the real steady clock (no server):
// a config with short timings and a fixture that owns the mock server.

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "clock.h"
#include "leader/connection.h"
#include "leader/election.h"
#include "natsmock/mock_kv.h"

namespace leader::testing {

/// A config for role `role` with short timings: ttl 600 ms, heartbeat
/// 100 ms, safety margin 50 ms, call timeout 80 ms (bucket "unit").
inline Config fast_config(const std::string& id, const std::string& role = "role") {
  using namespace std::chrono_literals;
  Config c;
  c.bucket = "unit";
  c.role = role;
  c.instance_id = id;
  c.ttl = 600ms;
  c.heartbeat_interval = 100ms;
  c.safety_margin = 50ms;
  c.call_timeout = 80ms;
  return c;
}

/// A fixture with a natsmock server on the real clock.
class MockServerTest : public ::testing::Test {
 protected:
  /// A connection (two I/O threads) over a new client named `name`.
  std::shared_ptr<Connection> connection(const std::string& name) {
    return std::make_shared<Connection>(server_.client(name), 2);
  }
  /// How many `op` calls client `client` made so far.
  std::size_t count(const std::string& client, const std::string& op) {
    std::size_t n = 0;
    for (const auto& c : server_.calls()) n += c.client == client && c.op == op;
    return n;
  }
  natsmock::MockServer server_{detail::RealClock::instance()};
};

}  // namespace leader::testing
