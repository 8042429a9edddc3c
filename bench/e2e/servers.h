#pragma once

// The servers a series runs against: nats-server (one, or a JetStream cluster
// of three, started here on free loopback ports unless given), and reading
// what they and the measured processes report.

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common.h"

namespace leader::testing {
class NatsCluster;
class NatsServer;
}  // namespace leader::testing

namespace leader::bench {

/// nats-servers started by the harness on free loopback ports, each with
/// JetStream and a monitoring port: one server, or a cluster of three
/// (tests/support's NatsCluster). Killed by PID when destroyed.
class NatsServers {
 public:
  explicit NatsServers(int count);
  ~NatsServers();
  NatsServers(const NatsServers&) = delete;
  NatsServers& operator=(const NatsServers&) = delete;

  /// Every client URL, comma-separated.
  std::string urls() const;
  /// The monitoring port of the (first) server.
  int monitor_port() const;
  pid_t pid() const;

 private:
  std::unique_ptr<testing::NatsServer> single_;
  int single_monitor_port_ = 0;
  std::unique_ptr<testing::NatsCluster> cluster_;
};

/// Where a series finds NATS. Flags: --servers 1|3 (3: a cluster of this
/// harness's own), --nats-url URL (one server already running; then
/// --nats-monitor PORT and --nats-pid PID for the scale series' figures).
struct NatsTarget {
  int servers = 1;
  std::string urls;
  int monitor_port = 0;  // 0: unknown
  pid_t pid = -1;        // -1: unknown
  std::unique_ptr<NatsServers> own;
};
NatsTarget nats_target(Flags& flags);

/// Waits until JetStream takes a bucket with `replicas` (a new cluster
/// elects its meta leader first). Throws after `timeout`.
void wait_for_jetstream(const std::string& urls, int replicas, Millis timeout);

/// CPU time used so far, resident memory and threads of a process.
struct ProcSample {
  double cpu_seconds = 0;
  long rss_kib = 0;
  long threads = 0;
};
/// From /proc/<pid>/stat and /proc/<pid>/status; nullopt if it is gone.
std::optional<ProcSample> sample_process(pid_t pid);

/// Sum of `in_msgs` (messages the clients sent to the server) and of
/// `out_msgs` over the connections of /connz whose name starts with
/// `name_prefix`.
struct ConnMessages {
  double in_msgs = 0;
  double out_msgs = 0;
  int connections = 0;
};
/// Throws when the server does not answer.
ConnMessages connection_messages(int monitor_port, const std::string& name_prefix);

}  // namespace leader::bench
