// The /metrics endpoint of examples/control-manager against a real
// nats-server: three processes, each scraped over HTTP on loopback; exactly
// one reports leader_election_is_leader 1, before and after the leader is
// stopped with SIGTERM.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/child_process.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using leader::testing::bucket_for_current_test;
using leader::testing::ChildProcess;
using leader::testing::NatsServer;

#ifndef LEADER_CONTROL_MANAGER_BIN
#define LEADER_CONTROL_MANAGER_BIN ""
#endif

/// GET http://127.0.0.1:<port><path> (HTTP/1.0, so the server closes the
/// connection after the body). The body on status 200, else nullopt.
std::optional<std::string> http_get(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      char buf[8192];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, static_cast<std::size_t>(n));
    }
  }
  close(fd);
  const auto body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || response.find(" 200 ") > response.find("\r\n") ||
      body == std::string::npos) {
    return std::nullopt;
  }
  return response.substr(body + 4);
}

/// The value of the first sample of `metric` (e.g. "leader_election_is_leader")
/// in a text exposition, or nullopt.
std::optional<double> sample(const std::string& text, const std::string& metric) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(metric + "{", 0) != 0 && line.rfind(metric + " ", 0) != 0) continue;
    const auto space = line.rfind(' ');
    return std::stod(line.substr(space + 1));
  }
  return std::nullopt;
}

struct Instance {
  std::string id;
  std::unique_ptr<ChildProcess> process;
  int metrics_port = 0;
  bool stopped = false;
};

class MetricsEndpointTest : public ::testing::Test {
 protected:
  /// is_leader of each running instance (-1: not scraped / series missing).
  std::vector<double> scrape_is_leader() {
    std::vector<double> out;
    for (auto& in : instances_) {
      if (in.stopped) {
        out.push_back(-1);
        continue;
      }
      const auto body = http_get(in.metrics_port, "/metrics");
      const auto v = body ? sample(*body, "leader_election_is_leader") : std::nullopt;
      out.push_back(v.value_or(-1));
    }
    return out;
  }

  /// Index of the one running instance whose is_leader is 1 while every
  /// other running instance reports 0; -1 until that holds (within `limit`).
  int wait_for_exactly_one_leader(std::chrono::milliseconds limit, std::string* last) {
    const auto deadline = Clock::now() + limit;
    while (true) {
      const auto values = scrape_is_leader();
      int leader = -1;
      int ones = 0;
      int zeros = 0;
      std::ostringstream seen;
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (instances_[i].stopped) continue;
        seen << instances_[i].id << "=" << values[i] << " ";
        if (values[i] == 1) {
          ++ones;
          leader = static_cast<int>(i);
        } else if (values[i] == 0) {
          ++zeros;
        }
      }
      *last = seen.str();
      int running = 0;
      for (const auto& in : instances_) running += in.stopped ? 0 : 1;
      if (ones == 1 && ones + zeros == running) return leader;
      if (Clock::now() >= deadline) return -1;
      std::this_thread::sleep_for(50ms);
    }
  }

  std::vector<Instance> instances_;  // destroyed first: children are killed by PID
};

TEST_F(MetricsEndpointTest, ExactlyOneInstanceReportsLeadershipBeforeAndAfterAHandover) {
  const std::string binary = LEADER_CONTROL_MANAGER_BIN;
  if (binary.empty()) GTEST_SKIP() << "control-manager example not built (LEADER_BUILD_EXAMPLES=OFF)";
  NatsServer server;
  const std::string bucket = bucket_for_current_test();

  for (int i = 0; i < 3; ++i) {
    Instance in;
    in.id = "cm-" + std::to_string(i);
    in.process = std::make_unique<ChildProcess>(
        std::vector<std::string>{binary, "--nats-url", server.url(), "--bucket", bucket, "--role",
                                 "scheduler", "--id", in.id, "--ttl", "3s", "--metrics-addr", "127.0.0.1:0"});
    ASSERT_TRUE(in.process->running()) << in.process->error();
    instances_.push_back(std::move(in));
  }
  for (auto& in : instances_) {
    const auto line = in.process->wait_for_line(" event=metrics addr=127.0.0.1:", 15s);
    ASSERT_TRUE(line.has_value()) << in.id << " never served metrics; its output:\n" << in.process->output();
    in.metrics_port = std::stoi(line->substr(line->rfind(':') + 1));
    ASSERT_GT(in.metrics_port, 0) << *line;
  }

  std::string seen;
  const int first = wait_for_exactly_one_leader(20s, &seen);
  ASSERT_GE(first, 0) << "not exactly one leader in the scrapes: " << seen;
  const auto body = http_get(instances_[first].metrics_port, "/metrics");
  ASSERT_TRUE(body.has_value());
  EXPECT_NE(body->find("leader_election_is_leader{bucket=\"" + bucket + "\",instance=\"" +
                       instances_[first].id + "\",role=\"scheduler\"} 1"),
            std::string::npos)
      << *body;
  EXPECT_GE(sample(*body, "leader_election_term").value_or(0), 1);
  EXPECT_EQ(sample(*body, "leader_election_connection_status"), 1);

  // SIGTERM: the leader releases the key and exits; one of the other two
  // takes over far below the TTL.
  instances_[first].process->signal(SIGTERM);
  const auto status = instances_[first].process->wait_exit(10s);
  ASSERT_TRUE(status.has_value()) << "the leader did not exit after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
  instances_[first].stopped = true;

  const int second = wait_for_exactly_one_leader(10s, &seen);
  ASSERT_GE(second, 0) << "not exactly one leader after the handover: " << seen;
  EXPECT_NE(second, first);
  const auto after = http_get(instances_[second].metrics_port, "/metrics");
  ASSERT_TRUE(after.has_value());
  // The new leader timed the handover from the delete it saw.
  EXPECT_EQ(sample(*after, "leader_election_failover_seconds_count"), 1) << *after;
  EXPECT_LT(sample(*after, "leader_election_failover_seconds_sum").value_or(99), 1.0) << *after;
}

}  // namespace
